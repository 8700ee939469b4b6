"""``hagw demo``: start demo nodes as child processes, then the gateway in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from gateway.app.demo.redeploy import node_command
from gateway.app.runtime import Gateway
from gateway.config import GatewayConfig, parse_config

DEMO_CONFIG = "demo.yaml"


def demo_config_text() -> str:
    return resources.files("gateway.app.demo").joinpath(DEMO_CONFIG).read_text(encoding="utf-8")


def load_demo_config(path: str | None = None) -> tuple[GatewayConfig, str]:
    """The embedded demo config (or ``path``), and the file to reload it from."""
    if path is not None:
        return parse_config(Path(path).read_text(encoding="utf-8"), path), path
    source = resources.files("gateway.app.demo").joinpath(DEMO_CONFIG)
    with resources.as_file(source) as file:
        return parse_config(demo_config_text(), "<embedded demo.yaml>"), str(file)


#: Where demo nodes keep their pidfiles; the demo's deploy action (hagw demo-redeploy) uses it.
RUN_DIR = Path("var/demo/run")


@contextlib.contextmanager
def node_processes(config: GatewayConfig,
                   version: str = "v1") -> Iterator[list[subprocess.Popen[bytes]]]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(node_command(n.name, n.url.host, n.url.port, version, RUN_DIR),
                              stdout=subprocess.DEVNULL)
             for n in config.nodes]
    try:
        yield procs
    finally:
        # Deploys replace nodes with processes that are not our children: use the pidfiles.
        for pid_path in RUN_DIR.glob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(pid_path.read_text()), signal.SIGTERM)
            pid_path.unlink(missing_ok=True)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


async def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def run_demo(config_path: str | None = None) -> None:
    config, source = load_demo_config(config_path)
    with node_processes(config):
        for node in config.nodes:
            await wait_for_port(node.url.host, node.url.port)
        gateway = Gateway(config, config_path=source)
        await gateway.start()
        token_note = ("" if os.environ.get("HAGW_ADMIN_TOKEN")
                      else " (admin token: demo-token)")
        print(f"""
hagw demo is up: {len(config.nodes)} demo nodes behind the gateway.

  traffic   {gateway.traffic_url}/
  admin     {gateway.admin_url}/nodes{token_note}
  metrics   {gateway.admin_url}/metrics
  status    {gateway.admin_url}/status
  events    {gateway.admin_url}/events

Try:  curl -s {gateway.traffic_url}/          (repeat: the node rotates)
      hagw nodes -c configs/demo.yaml
      hagw drain node-2 -c configs/demo.yaml
      hagw deploy v2 -c configs/demo.yaml     (a rolling deploy of the demo nodes)
Ctrl-C stops everything.
""", flush=True)
        gateway.install_signal_handlers()
        await gateway.wait()
