"""A gateway process killed with SIGKILL while queueing and while replaying loses no
accepted write."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bench.processes import free_port
from tests.conftest import TOKEN, NodeProcess, auth, config_dict


class GatewayProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c",
                                          str(self.config)], stdout=out, stderr=out)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def crash_setup(tmp_path: Path, node_processes: Callable[..., list[NodeProcess]],
                ) -> Iterator[tuple[NodeProcess, GatewayProcess, str, str]]:
    [node] = node_processes(1)
    traffic, admin = free_port(), free_port()
    data = config_dict([node.url], tmp_path / "state")
    data.update({"listen": f"127.0.0.1:{traffic}",
                 "admin": {"listen": f"127.0.0.1:{admin}", "token": TOKEN},
                 "log_level": "warning",
                 "maintenance": {"queue_routes": [{"method": "POST", "path": "/orders"}],
                                 "verify_timeout": "10s",
                                 # one loopback client queues thousands of writes
                                 "queue_rate_limit": {"enabled": False},
                                 "max_client_queued_bytes": 0}})
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data))
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    yield node, gateway, f"http://127.0.0.1:{traffic}", f"http://127.0.0.1:{admin}"
    gateway.stop()


async def ready(http: aiohttp.ClientSession, admin: str) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                async with http.get(f"{admin}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def summary(http: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    async with http.get(f"{admin}/maintenance") as resp:
        return dict(await resp.json())


async def writes(http: aiohttp.ClientSession, node: NodeProcess) -> list[dict[str, Any]]:
    async with http.get(f"{node.url}/_writes") as resp:
        return list(await resp.json())


async def flood(http: aiohttp.ClientSession, traffic: str, prefix: str, accepted: list[str],
                stop: asyncio.Event, limit: int) -> None:
    """POST until told to stop; remember exactly which writes were accepted (202)."""
    n = 0
    while not stop.is_set() and n < limit:
        body = f"{prefix}-{n}"
        n += 1
        try:
            async with http.post(f"{traffic}/orders", data=body) as resp:
                if resp.status == 202:
                    await resp.read()
                    accepted.append(body)
        except (aiohttp.ClientError, ConnectionError):
            await asyncio.sleep(0.01)


async def wait_drained(http: aiohttp.ClientSession, admin: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            data = await summary(http, admin)
            if data["mode"] == "normal" and data["queue"]["depth"] == 0:
                return
            await asyncio.sleep(0.1)


async def test_sigkill_while_queueing_and_while_replaying_loses_nothing(
        crash_setup: tuple[NodeProcess, GatewayProcess, str, str]) -> None:
    node, gateway, traffic, admin = crash_setup
    async with aiohttp.ClientSession() as http:
        gateway.start()
        await ready(http, admin)
        async with http.post(f"{admin}/maintenance", headers=auth(),
                             json={"duration": "1h", "reason": "crash test"}) as resp:
            window = (await resp.json())["id"]

        # 1. Killed in the middle of queueing.
        accepted: list[str] = []
        stop = asyncio.Event()
        clients = [asyncio.create_task(flood(http, traffic, f"a{c}", accepted, stop, 10_000))
                   for c in range(8)]
        async with asyncio.timeout(20):
            while len(accepted) < 400:
                await asyncio.sleep(0.01)
        gateway.kill()
        stop.set()
        await asyncio.gather(*clients)
        first_batch = list(accepted)

        gateway.start()
        await ready(http, admin)
        data = await summary(http, admin)
        assert data["mode"] == "active"  # the window survived the crash
        # Every 202 was on disk. A few more may be: committed, then killed before the 202 went
        # out, so their clients saw an error (at-least-once, as with any durable queue).
        assert data["queue"]["depth"] >= len(first_batch)
        async with http.post(f"{admin}/maintenance/{window}/end", headers=auth()) as resp:
            assert resp.status == 200
        await wait_drained(http, admin)
        delivered = [w["body"] for w in await writes(http, node)]
        assert set(first_batch) <= set(delivered)
        assert len(delivered) == len(set(delivered)) == data["queue"]["depth"]

        # 2. Killed in the middle of the replay.
        async with http.post(f"{admin}/maintenance", headers=auth(),
                             json={"duration": "1h", "reason": "again"}) as resp:
            window = (await resp.json())["id"]
        accepted.clear()
        stop = asyncio.Event()
        await flood(http, traffic, "b", accepted, stop, 300)
        assert len(accepted) == 300
        async with http.post(f"{node.url}/_fault", json={"latency_ms": 10}) as resp:
            assert resp.status == 200
        async with http.post(f"{admin}/maintenance/{window}/end", headers=auth()) as resp:
            assert resp.status == 200
        async with asyncio.timeout(30):
            while len(await writes(http, node)) < len(delivered) + 80:
                await asyncio.sleep(0.02)
        gateway.kill()

        gateway.start()
        await ready(http, admin)
        await wait_drained(http, admin)
        log = await writes(http, node)
        bodies = [w["body"] for w in log]
        assert sorted(bodies) == sorted(delivered + accepted)  # all there, none twice
        replayed = [b for b in bodies if b.startswith("b-")]
        assert replayed == sorted(replayed, key=lambda b: int(b.split("-")[1]))  # FIFO
        async with http.get(f"{node.url}/_stats") as resp:
            stats = await resp.json()
        # Anything re-sent after the crash carried the same key, so the node dropped it.
        assert stats["writes"] == len(delivered) + 300
        events = json.dumps(await (await http.get(f"{admin}/events?limit=1000")).json())
        assert "queue.replay_finished" in events
