"""Rolling deploys end to end: real node processes replaced under mixed load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app.demo.redeploy import alive
from gateway.app.runtime import Gateway
from gateway.node import NodeState
from tests.conftest import auth, make_config, spawn_node, wait_for


def redeploy_command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "demo-redeploy", "--run-dir", str(run_dir), *extra,
            "{node}", "{url}", "{version}"]


class Fleet:
    """Node processes with pidfiles, as the demo redeploy action expects them."""

    def __init__(self, run_dir: Path, count: int) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [spawn_node(f"node-{i + 1}") for i in range(count)]
        for node in self.nodes:
            (run_dir / f"{node.name}.pid").write_text(str(node.proc.pid))

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.run_dir.glob("*.pid")}

    def close(self) -> None:
        for pid in self.pids().values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            node.proc.wait()
            if node.proc.stdout is not None:
                node.proc.stdout.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path / "run", 4)
    yield fleet
    fleet.close()


class MixedLoad:
    """GETs and POSTs through the gateway, several hundred a second, every outcome counted."""

    def __init__(self, http: aiohttp.ClientSession, base: str, clients: int = 8) -> None:
        self.http = http
        self.base = base
        self.failures: list[str] = []
        self.versions: list[str] = []
        self.count = 0
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(clients)]

    async def _client(self, i: int) -> None:
        n = 0
        while not self._stop.is_set() and self.count < 200_000:
            n += 1
            post = (n + i) % 3 == 0
            try:
                if post:
                    async with self.http.post(f"{self.base}/orders", json={"c": i, "n": n}) as r:
                        body = await r.json(content_type=None)
                        ok = r.status == 201
                else:
                    async with self.http.get(f"{self.base}/item/{n}") as r:
                        body = await r.json(content_type=None)
                        ok = r.status == 200
                        if ok:
                            self.versions.append(body["version"])
                if not ok:
                    self.failures.append(f"{'POST' if post else 'GET'} {r.status} {body}")
            except (aiohttp.ClientError, ValueError) as exc:
                self.failures.append(f"{'POST' if post else 'GET'} {exc!r}")
            self.count += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def wait_deploy(http: aiohttp.ClientSession, gw: Gateway, deploy_id: str,
                      timeout: float = 60) -> dict[str, Any]:
    record: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal record
        # With the token: the steps' output is shown only to a caller that has one.
        async with http.get(f"{gw.admin_url}/deploys/{deploy_id}", headers=auth()) as resp:
            record = await resp.json()
        return record["status"] not in ("running", "rolling_back")

    async with asyncio.timeout(timeout):
        while not await done():
            await asyncio.sleep(0.1)
    return record


async def test_rolling_deploy_under_mixed_load_has_zero_failures(
        fleet: Fleet, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway(fleet.urls, deploy={
        "command": redeploy_command(fleet.run_dir), "bake_time": "500ms",
        "node_timeout": "20s", "drain_timeout": "5s"}, min_healthy="75%")
    old_pids = fleet.pids()
    load = MixedLoad(http, gw.traffic_url)
    await wait_for(lambda: load.count > 200)
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v2"},
                         headers=auth()) as resp:
        assert resp.status == 202
        deploy_id = (await resp.json())["id"]
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v3"},
                         headers=auth()) as resp:
        assert resp.status == 409  # one deploy at a time
    record = await wait_deploy(http, gw, deploy_id)
    settled = len(load.versions)
    await wait_for(lambda: len(load.versions) > settled + 200)
    await load.stop()
    assert record["status"] == "succeeded", record["reason"]
    assert load.failures == []
    assert load.count > 1000
    assert set(load.versions[settled:]) == {"v2"}  # traffic ends 100% on v2
    new_pids = fleet.pids()
    for name, pid in old_pids.items():
        assert new_pids[name] != pid  # the old process was really replaced...
        assert not alive(pid)  # ...and is gone (it exited on SIGTERM)
    for run in record["nodes"].values():
        assert run["done"] and run["previous_version"] == "v1"
        kinds = [s["kind"] for s in run["steps"]]
        assert kinds == ["gate", "drain", "action", "verify", "bake"]
        assert "started node" in run["steps"][2]["output"]
    assert gw.registry.get_sample_value(
        "hagw_deploys_total", {"result": "succeeded"}) == 1.0
    assert [n.version for n in gw.cluster] == ["v2"] * 4


async def test_a_failing_new_version_rolls_back_with_zero_failures(
        fleet: Fleet, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway(fleet.urls, deploy={
        "command": redeploy_command(fleet.run_dir, "--fail-health-on", "node-2@v2"),
        "bake_time": "300ms", "node_timeout": "3s", "drain_timeout": "5s"})
    load = MixedLoad(http, gw.traffic_url)
    await wait_for(lambda: load.count > 200)
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v2"},
                         headers=auth()) as resp:
        deploy_id = (await resp.json())["id"]
    record = await wait_deploy(http, gw, deploy_id)
    settled = len(load.versions)
    await wait_for(lambda: len(load.versions) > settled + 200)
    await load.stop()
    assert record["status"] == "rolled_back"
    assert "verify on node-2 failed" in record["reason"]
    assert load.failures == []
    assert record["nodes"]["node-1"]["rolled_back"] and record["nodes"]["node-2"]["rolled_back"]
    assert not record["nodes"]["node-3"]["moved"]
    assert set(load.versions[settled:]) == {"v1"}
    assert all(n.state is NodeState.HEALTHY for n in gw.cluster)
    events = [e.message for e in gw.events.since(kind="deploy", limit=0)]
    assert any("rollback verify node-1 -> v1: ok" in m for m in events)


async def test_start_is_refused_when_capacity_or_budget_is_short(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(4)
    gw = await gateway([b.url for b in nodes], min_healthy=3,
                              slo={"target": "99%"},
                              deploy={"command": ["true"], "verify_version": False,
                                      "bake_time": "0ms", "min_error_budget": "50%"})
    await gw.drains.drain(gw.cluster.get("node-4"), "disk swap")
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v2"},
                         headers=auth()) as resp:
        assert resp.status == 422
        assert "capacity" in (await resp.json())["message"]
    await gw.drains.undrain(gw.cluster.get("node-4"), "back")
    for _ in range(20):
        gw.slo.record(500)
    for _ in range(80):
        gw.slo.record(200)
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v2"},
                         headers=auth()) as resp:
        assert resp.status == 422
        assert "error budget" in (await resp.json())["message"]
    async with http.post(f"{gw.admin_url}/deploys", headers=auth(),
                         json={"version": "v2", "force": True, "reason": "hotfix"}) as resp:
        assert resp.status == 202
        body = await resp.json()
    record = await wait_deploy(http, gw, body["id"])
    assert record["forced"] and record["force_reason"] == "hotfix"
    assert record["status"] == "succeeded"


async def test_abort_in_the_middle_rolls_back(backends: Any, gateway: Any,
                                              http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], deploy={
        "command": ["true"], "verify_version": False, "bake_time": "30s"})
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v2"},
                         headers=auth()) as resp:
        deploy_id = (await resp.json())["id"]
    steps = gw.deploys.current.record.nodes["node-1"].steps
    await wait_for(lambda: bool(steps) and steps[-1].kind == "bake")
    async with http.post(f"{gw.admin_url}/deploys/{deploy_id}/abort", headers=auth(),
                         json={"reason": "wrong build"}) as resp:
        assert resp.status == 200
    record = await wait_deploy(http, gw, deploy_id)
    assert record["status"] == "aborted" and "wrong build" in record["reason"]
    assert record["nodes"]["node-1"]["rolled_back"]
    bake = record["nodes"]["node-1"]["steps"][4]
    assert bake["kind"] == "bake" and bake["detail"] == "stopped by abort"
    assert all(n.state is NodeState.HEALTHY for n in gw.cluster)


async def test_a_restart_mid_deploy_is_reported_and_can_be_resumed(
        backends: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    nodes = await backends(2)
    marker = tmp_path / "go"
    command = [sys.executable, "-c", "import pathlib,sys,time\n"
               f"p=pathlib.Path({str(marker)!r})\n"
               "while not p.exists(): time.sleep(0.05)"]
    config = make_config([b.url for b in nodes], tmp_path / "state",
                         deploy={"command": command, "verify_version": False,
                                 "bake_time": "0ms"})
    first = Gateway(config)
    await first.start()
    record = await first.deploys.begin("v2")
    steps = record.nodes["node-1"].steps
    await wait_for(lambda: bool(steps) and steps[-1].kind == "action")
    await first.stop()  # the gateway goes away mid-action

    second = Gateway(config)
    async with second:
        async with http.get(f"{second.admin_url}/deploys/{record.id}") as resp:
            seen = await resp.json()
        assert seen["status"] == "interrupted"
        assert second.cluster.get("node-1").state is NodeState.DRAINING  # held, not half-live
        assert any(e.kind == "deploy.interrupted" for e in second.events.since())
        async with http.post(f"{second.admin_url}/deploys", json={"version": "v3"},
                             headers=auth()) as resp:
            assert resp.status == 409
        marker.touch()
        async with http.post(f"{second.admin_url}/deploys/{record.id}/resume",
                             headers=auth()) as resp:
            assert resp.status == 200
        final = await wait_deploy(http, second, record.id)
        assert final["status"] == "succeeded"
        assert [s["kind"] for s in final["nodes"]["node-1"]["steps"]][-4:] == [
            "gate", "drain", "action", "verify"]


async def test_webhook_action_with_retries(backends: Any, gateway: Any, serve: Any,
                                           http: aiohttp.ClientSession) -> None:
    from aiohttp import web
    calls: Counter[str] = Counter()

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        calls[body["node"]] += 1
        if calls[body["node"]] == 1:
            return web.Response(status=503, text="busy, try again")
        return web.json_response({"deployed": body["version"]})

    app = web.Application()
    app.router.add_post("/deploy", hook)
    url = await serve(app)
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], deploy={
        "webhook": {"url": f"{url}/deploy"}, "verify_version": False, "bake_time": "0ms"})
    record = await gw.deploys.begin("v2")
    final = await wait_deploy(http, gw, record.id)
    assert final["status"] == "succeeded"
    assert calls == {"node-1": 2, "node-2": 2}
    assert "attempt failed: webhook answered HTTP 503" in \
        final["nodes"]["node-1"]["steps"][2]["output"]
