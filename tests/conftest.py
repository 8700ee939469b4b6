"""Shared fixtures: real demo backends and real gateways on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.app.demo.backend import INFO, Faults, NodeInfo, build_backend
from gateway.app.runtime import Gateway
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig, parse_config
from monitor.peers.connection import PeerLink
from tests.fakes import Spawner
from tests.redis_server import RedisServer, peers_config

TOKEN = "test-token"


def missing(message: str) -> NoReturn:
    """Something a test needs is not here: skip locally, fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The path of a system tool; skip (or fail under CI=true) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        missing(f"{name} is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (AOF, appendfsync always), killed after the test."""
    server = RedisServer(require_tool("redis-server"), tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def spawner() -> AsyncIterator[Spawner]:
    """The Spawn port; its tasks are cancelled after the test."""
    spawn = Spawner()
    yield spawn
    await spawn.close()


@pytest.fixture
async def peer_link(redis_server: RedisServer) -> AsyncIterator[Callable[..., PeerLink]]:
    """``link = peer_link("gw-a", lease_ttl="1s")``: a PeerLink to ``redis_server`` as the
    instance named so, closed after the test."""
    made: list[PeerLink] = []

    def make(name: str = "gw-a", clock: Clock = SYSTEM_CLOCK, **keys: object) -> PeerLink:
        link = PeerLink(peers_config(redis_server.url, name, **keys), clock=clock)
        made.append(link)
        return link

    yield make
    for link in made:
        await link.close()


@dataclass
class Backend:
    """A demo backend node running in the test's event loop."""

    name: str
    port: int
    runner: web.AppRunner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def info(self) -> NodeInfo:
        return self.runner.app[INFO]  # type: ignore[index]

    def fault(self, **changes: Any) -> None:
        current = self.info.faults
        self.info.faults = Faults(**{**current.__dict__, **changes})

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_app(app: web.Application) -> web.AppRunner:
    """Serve ``app`` on 127.0.0.1 at an ephemeral port (``runner.addresses[0][1]``)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """``url = await serve(app)``: an aiohttp app on loopback, cleaned up after the test."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runners.append(runner := await start_app(app))
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    started: list[Backend] = []

    async def start(count: int = 3, version: str = "v1", prefix: str = "node") -> list[Backend]:
        out = []
        for _i in range(count):
            name = f"{prefix}-{len(started) + 1}"
            runner = await start_app(build_backend(name, version))
            backend = Backend(name, runner.addresses[0][1], runner)
            started.append(backend)
            out.append(backend)
        return out

    yield start
    for backend in started:
        await backend.stop()


@dataclass
class NodeProcess:
    """A demo backend node in its own process, for SIGKILL/SIGSTOP tests."""

    name: str
    port: int
    proc: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop_signal(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


def spawn_node(name: str, version: str = "v1", port: int = 0) -> NodeProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "node", "--name", name, "--port", str(port),
         "--version", version], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r":(\d+)\s*$", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"demo node did not start: {line!r}")
    return NodeProcess(name, int(match.group(1)), proc)


@pytest.fixture
def node_processes() -> Iterator[Callable[..., list[NodeProcess]]]:
    started: list[NodeProcess] = []

    def start(count: int = 3, version: str = "v1") -> list[NodeProcess]:
        out = [spawn_node(f"node-{len(started) + i + 1}", version) for i in range(count)]
        started.extend(out)
        return out

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.cont()
            node.proc.kill()
        node.proc.wait()
        if node.proc.stdout is not None:
            node.proc.stdout.close()


def config_dict(urls: list[str], state_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A test config: loopback, ephemeral ports, fast probes, no shutdown grace."""
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "token": TOKEN},
        "nodes": [{"name": f"node-{i + 1}", "url": url} for i, url in enumerate(urls)],
        "health": {"interval": "100ms", "unhealthy_interval": "100ms", "timeout": "500ms",
                   "healthy_threshold": 2, "unhealthy_threshold": 2, "jitter": 0},
        "shutdown": {"grace": "0ms", "drain_timeout": "5s"},
        "state_dir": str(state_dir),
        "slow_start": {"window": "0ms"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def make_config(urls: list[str], state_dir: Path, **overrides: Any) -> GatewayConfig:
    return parse_config(yaml.safe_dump(config_dict(urls, state_dir, **overrides)), "<test>")


def write_cli_config(path: Path, urls: list[str], admin_port: int) -> dict[str, Any]:
    """A config file for the ``hagw`` CLI, pointing at the admin listener on ``admin_port``."""
    data = config_dict(urls, path.parent)
    data["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    path.write_text(yaml.safe_dump(data))
    return data


def hagw(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as an operator would (blocking: call it through asyncio.to_thread)."""
    return subprocess.run([sys.executable, "-m", "gateway", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start real gateways: ``gw = await gateway(urls, balancer="least_request")``."""
    running: list[Gateway] = []

    async def start(urls: list[str], *, config_path: str | None = None,
                    **overrides: Any) -> Gateway:
        config = make_config(urls, tmp_path / f"state{len(running)}", **overrides)
        gw = Gateway(config, config_path=config_path)
        await gw.start()
        running.append(gw)
        return gw

    yield start
    for gw in running:
        await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0,
                   what: str | Callable[[], str] = "condition") -> None:
    """Wait for a state change the test caused (bounded; never a timing assertion). On a
    timeout the failure says what was awaited (``what``, or what it returns then)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        said = what() if callable(what) else what
        raise AssertionError(f"not within {timeout:g}s: {said}") from None


def sample(gw: Gateway, name: str, **labels: str) -> float:
    """What ``/metrics`` shows for one series of a gateway (0 while it was never touched)."""
    return gw.registry.get_sample_value(name, labels) or 0.0


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def no_env(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
