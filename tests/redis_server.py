"""The tests' redis-server (``chaos.redis``), a Sentinel beside it, and a validated
``peers`` section."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.processes import free_port
from chaos.redis import RedisServer, answering
from gateway.config.build import Builder
from gateway.config.schema import PeersConfig

__all__ = ["RedisServer", "SentinelProcess", "peers_config"]


def peers_config(url: str, name: str = "gw-a", **keys: object) -> PeersConfig:
    """A validated ``peers`` section, as the config loader would build it."""
    built: PeersConfig = Builder("<test>").build(PeersConfig, {"redis": url, "name": name,
                                                               **keys})
    return built


@dataclass
class SentinelProcess:
    """A redis-server in sentinel mode watching one master as ``service``."""

    binary: str
    dir: Path
    master_port: int
    service: str = "mymaster"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.dir / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\n"
                        f"dir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n")
        self.proc = subprocess.Popen([self.binary, str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if answering(self.proc, self.port):
            return
        self.kill()
        raise RuntimeError(f"redis sentinel did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
