"""A real redis-server: loopback, an ephemeral port, its own directory, AOF with
``appendfsync always``. It can be SIGKILLed and started again on the same port and
directory, where it replays its AOF. The fleet scenarios of ``make chaos`` share their
state through one; so do the tests of ``monitor.peers``."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import free_port

#: Starting (and replaying the AOF) must finish within this.
START_TIMEOUT = 15.0


def answers(port: int) -> bool:
    """PING answered with PONG, or NOAUTH from a server with a password (not LOADING while
    it replays its AOF, not refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def answering(proc: subprocess.Popen[bytes], port: int, timeout: float = START_TIMEOUT) -> bool:
    """Whether ``proc`` answers on ``port`` within ``timeout`` (False once it exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if answers(port):
            return True
        time.sleep(0.02)
    return False


@dataclass
class RedisServer:
    binary: str
    dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (again, on the same port and dir); returns once it answers PING."""
        assert not self.running
        for _attempt in range(5):
            first = self.port == 0
            if first:
                self.port = free_port()
            self.dir.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
                 "--save", "", "--protected-mode", "no", "--daemonize", "no",
                 "--logfile", str(self.dir / "redis.log"), *self.extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if answering(self.proc, self.port):
                return
            self.kill()
            if not first:
                break  # the same port again would fail the same way
            self.port = 0  # the free port was taken meanwhile: pick another
        log = self.dir / "redis.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; the AOF holds what was answered."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()
