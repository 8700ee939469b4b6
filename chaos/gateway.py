"""The gateway under test: its operator-tuned config, its process (start, SIGKILL,
restart on the same state directory) and a small client for its admin API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.procfs import tree_rss_kb
from chaos.fleet import Node
from chaos.processes import Child, ProcessGroup, StartError, free_port

TOKEN = "chaos-token"
#: The repository root: the gateway runs from here so its deploy action can run
#: ``python -m chaos.deploy_hook`` (chaos is not an installed package).
REPO = Path(__file__).resolve().parent.parent

#: Per-try deadline for hung nodes. Above the slowest healthy answer we inject
#: (+300 ms), so a slow node is not mistaken for a hung one.
PER_TRY_TIMEOUT = "1s"


def operator_config(nodes: list[Node], *, traffic_port: int, admin_port: int,
                    state_dir: Path, deploy_command: list[str]) -> dict[str, Any]:
    """The config an operator would run for this fleet: fast health checks, per-try
    timeouts with retries on every safe failure, outlier detection, a queue for
    writes during maintenance, and the demo redeploy action."""
    return {
        "listen": f"127.0.0.1:{traffic_port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}", "token": TOKEN},
        # A supervisor and two worker processes (whatever the machine's cores): a worker
        # or the supervisor can die without taking the listening socket with it.
        "workers": 2,
        "nodes": [{"name": n.name, "url": n.url} for n in nodes],
        # Power of two choices: a slow or hung node collects in-flight requests and
        # stops being picked long before a health check notices.
        "balancer": "least_request",
        "timeouts": {"connect": "500ms", "request": "10s", "idle_upstream": "20s",
                     "stream_idle": "10s"},
        "retries": {"attempts": 3, "per_try_timeout": PER_TRY_TIMEOUT,
                    "on": ["connect-failure", "reset", "timeout", "502", "503"],
                    "budget": {"percent": "20%", "min_concurrency": 5}},
        "outlier_detection": {"enabled": True, "consecutive_failures": 5,
                              "base_ejection_time": "5s", "max_ejection_time": "60s",
                              "max_ejection_percent": "50%"},
        "health": {"interval": "500ms", "unhealthy_interval": "200ms", "timeout": "500ms",
                   "healthy_threshold": 2, "unhealthy_threshold": 2, "jitter": "10%",
                   "verify": {"path": "/ready", "expect_status": 200}},
        # Recovery is judged over a short window so a scenario's recovery phase sees it.
        "warning": {"recover_after": "3s", "window": "10s"},
        "slow_start": {"window": "2s", "min_weight": "10%"},
        "min_healthy": "50%",
        "deploy": {"command": deploy_command, "bake_time": "1s", "drain_timeout": "10s",
                   "node_timeout": "20s", "command_timeout": "30s",
                   "min_error_budget": "0%"},
        "maintenance": {"queue_routes": [{"method": "POST", "path": "/orders"}],
                        "verify_timeout": "20s", "live_wait": "2s",
                        "retry_base": "200ms", "retry_max": "2s", "max_attempts": 10,
                        # the load generator is one client
                        "queue_rate_limit": {"enabled": False}, "max_client_queued_bytes": 0},
        "shutdown": {"grace": "0ms", "drain_timeout": "5s"},
        "state_dir": str(state_dir),
        "log_level": "warning",
    }


def defaults_config(nodes: list[Node], *, traffic_port: int, admin_port: int,
                    state_dir: Path, deploy_command: list[str]) -> dict[str, Any]:
    """The documented defaults, with only what the comparison on defaults sets: health
    checks every 500 ms with a 1 s timeout and thresholds of 2, a 1 s connect and a 3 s
    request timeout (the settings nginx and haproxy get in chaos/peers)."""
    return {
        "listen": f"127.0.0.1:{traffic_port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}", "token": TOKEN},
        "nodes": [{"name": n.name, "url": n.url} for n in nodes],
        "health": {"interval": "500ms", "timeout": "1s", "healthy_threshold": 2,
                   "unhealthy_threshold": 2},
        "timeouts": {"connect": "1s", "request": "3s"},
        "state_dir": str(state_dir),
        "log_level": "warning",
    }


ConfigBuilder = Callable[..., dict[str, Any]]


def describe(config: dict[str, Any]) -> list[str]:
    """The tuned keys, one line each, for the scenario output."""
    keys = ("balancer", "timeouts", "retries", "outlier_detection", "health", "warning",
            "slow_start", "min_healthy", "maintenance")
    lines = [f"{key}: {_flow(config[key])}" for key in keys]
    deploy = dict(config["deploy"])
    deploy["command"] = "chaos.deploy_hook (saves the drained node's write log) -> " \
                        "hagw demo-redeploy {node} {url} {version}"
    lines.append(f"deploy: {_flow(deploy)}")
    return lines


def _flow(value: Any) -> str:
    """One line of YAML (a bare scalar, or a flow mapping)."""
    if not isinstance(value, dict | list):
        return str(value)
    return str(yaml.safe_dump(value, default_flow_style=True, width=1000)).strip()


class Admin:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self._auth = {"Authorization": f"Bearer {TOKEN}"}

    async def get(self, path: str) -> Any:
        async with self.http.get(f"{self.url}{path}",
                                 timeout=aiohttp.ClientTimeout(total=10)) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}{path}", json=body or {}, headers=self._auth,
                                  timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.json(content_type=None)


class GatewayProcess:
    def __init__(self, procs: ProcessGroup, workdir: Path, http: aiohttp.ClientSession,
                 nodes: list[Node], deploy_command: list[str],
                 config: ConfigBuilder = operator_config) -> None:
        self.procs = procs
        self.build_config = config
        self.workdir = workdir
        self.nodes = nodes
        self.deploy_command = deploy_command
        self.config_path = workdir / "gateway.yaml"
        self.traffic_port = self.admin_port = 0
        self.config: dict[str, Any] = {}
        self.child: Child | None = None
        self.http = http
        self.admin = Admin(http, "")
        self.starts = 0

    def _configure(self) -> None:
        """Pick ports and write the config (the nodes' ports are final by now)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.traffic_port, self.admin_port = free_port(), free_port()
        self.config = self.build_config(self.nodes, traffic_port=self.traffic_port,
                                        admin_port=self.admin_port,
                                        state_dir=self.workdir / "state",
                                        deploy_command=self.deploy_command)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.admin.url = self.admin_url

    @property
    def traffic_url(self) -> str:
        return f"http://127.0.0.1:{self.traffic_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    async def start(self, timeout: float = 30.0) -> None:
        """Start the gateway (a restart keeps its ports and state directory)."""
        first = self.starts == 0
        self.starts += 1
        for attempt in range(3 if first else 1):
            if first:
                self._configure()
            self.child = self.procs.start(
                "gateway", [sys.executable, "-m", "gateway", "run", "-c",
                            str(self.config_path)],
                self.workdir / "logs" / "gateway.log", cwd=REPO)
            try:
                await self.wait_ready(timeout)
                return
            except StartError as exc:
                # Another process took a port between picking and binding: pick again.
                if not first or "address already in use" not in str(exc) or attempt == 2:
                    raise

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.child is not None
            if not self.child.alive():
                raise StartError(f"the gateway exited with {self.child.popen.returncode}:\n"
                                 f"{self.child.log_tail()}")
            try:
                async with self.http.get(f"{self.admin_url}/readyz",
                                         timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise StartError(f"the gateway was not ready within {timeout:g}s:\n"
                                 f"{self.child.log_tail()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> float:
        """SIGKILL: no shutdown steps, no flush; what is on disk is all that survives."""
        assert self.child is not None
        at = time.monotonic()
        await asyncio.to_thread(self.procs.kill_and_wait, self.child.pid)
        self.procs.reap()
        return at

    async def kill_host(self) -> float:
        """SIGKILL the whole process group (the supervisor and its workers at once), as
        when the host's power goes; returns when it was sent."""
        assert self.child is not None
        at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signal.SIGKILL)
        await asyncio.to_thread(self.procs.kill_and_wait, self.child.pid)
        self.procs.reap()
        return at

    def rss_kb(self) -> int:
        return tree_rss_kb(self.pid)  # the supervisor and its workers
