"""``hagw demo``: start demo nodes as child processes, then the gateway in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from gateway.app.demo.redeploy import alive, node_command
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


class DemoBusy(OSError):
    """Another demo holds the run directory, or the ports the demo needs are taken."""


@contextlib.contextmanager
def demo_lock(run_dir: Path) -> Iterator[None]:
    """One demo per run directory: its pidfiles are the demo's, and a second demo would
    stop the first one's nodes through them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / "demo.lock", "a+")  # noqa: SIM115 - held for the demo's life
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise DemoBusy(f"another hagw demo (pid {holder}) is running from {run_dir}; "
                           "stop it first (Ctrl-C in its terminal)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield
    finally:
        lock.close()


def check_ports_free(config: GatewayConfig) -> None:
    """Before starting anything: every port the demo listens on must be free."""
    wanted = [(n.name, n.url.host, n.url.port) for n in config.nodes]
    wanted += [("the gateway", config.listen.host, config.listen.port),
               ("the admin API", config.admin.listen.host, config.admin.listen.port)]
    for what, host, port in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise DemoBusy(f"{host}:{port} (for {what}) is already in use: is another "
                               "demo or gateway running?") from None


@contextlib.contextmanager
def node_processes(config: GatewayConfig, version: str = "v1",
                   run_dir: Path = RUN_DIR) -> Iterator[list[subprocess.Popen[bytes]]]:
    run_dir.mkdir(parents=True, exist_ok=True)
    # In their own process group: a Ctrl-C reaches the demo, which stops them in order.
    procs = [subprocess.Popen(node_command(n.name, n.url.host, n.url.port, version, run_dir),
                              stdout=subprocess.DEVNULL, start_new_session=True)
             for n in config.nodes]
    try:
        yield procs
    finally:
        # Deploys replace nodes with processes that are not our children: use the pidfiles
        # (each written by a node once it listens), and our own children too.
        pids = {proc.pid for proc in procs}
        for pid_path in run_dir.glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pids.add(int(pid_path.read_text()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids - {proc.pid for proc in procs}:
            if not stopped(pid, 5.0):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for pid_path in run_dir.glob("*.pid"):
            pid_path.unlink(missing_ok=True)


def stopped(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


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
    with demo_lock(RUN_DIR):
        check_ports_free(config)
        await _run(config, source)


async def _run(config: GatewayConfig, source: str) -> None:
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
