"""A deploy version is never a way in (issue 16, item 2): what the admin API and the CLI
refuse, what the health check does with a node's own word, where a rollback's version
comes from, and what an action refuses to fill in. Real parts throughout: a gateway on
loopback, the CLI as a process, the runner on the fakes of its ports, real commands."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.clock import FakeClock
from gateway.cluster import Cluster
from gateway.config import GatewayConfig
from gateway.events import EventBus, News
from gateway.node import Node, NodeState
from monitor.deploy.actions import ActionFailed, ActionTarget, run_action
from monitor.deploy.record import DeployRecord, Status
from monitor.deploy.runner import DeployRunner
from monitor.health import HealthChecker
from monitor.health.probe import http_probe, verify
from tests.conftest import auth, hagw, wait_for, write_cli_config
from tests.fakes import Budget, MemoryStore, Recorder, Spawner, cluster_of, config

HOSTILE = ["v2; touch X", "$(touch X)", "`touch X`", "../../x", "--help", "v2\n", " v2",
           "v2 && touch X", "é"]

RECORDER = """\
import json, sys
log, fail, *args = sys.argv[1:]
with open(log, "a") as out:
    out.write(json.dumps(args) + "\\n")
sys.exit(1 if "@".join(args[:2]) == fail else 0)
"""


class Action:
    """A real deploy command that appends its argv to a log and fails on ``node@version``."""

    def __init__(self, tmp_path: Path, fail: str = "-") -> None:
        self.script = tmp_path / "action.py"
        self.script.write_text(RECORDER)
        self.log = tmp_path / "action.log"
        self.fail = fail

    def command(self, *placeholders: str) -> list[str]:
        return [sys.executable, str(self.script), str(self.log), self.fail, *placeholders]

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


# -- the admin API and the CLI ----------------------------------------------------------------


@pytest.fixture
async def deploying(backends: Any, gateway: Any, tmp_path: Path) -> Any:
    action = Action(tmp_path)
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], deploy={
        "command": action.command("{node}", "{version}"), "verify_version": False,
        "bake_time": "0ms"})
    return gw, action


@pytest.mark.parametrize("version", [*HOSTILE, "a" * 129, "x" * 5000])
async def test_the_admin_api_refuses_an_invalid_version_with_a_400(
        deploying: Any, http: aiohttp.ClientSession, version: str) -> None:
    gw, action = deploying
    async with http.post(f"{gw.admin_url}/deploys", json={"version": version},
                         headers=auth()) as resp:
        assert resp.status == 400, await resp.text()
        answer = await resp.json()
    assert answer["error"] == "bad_request"
    assert answer["message"].startswith("version: invalid version ")
    assert "ASCII letters, digits" in answer["message"] and "no '..'" in answer["message"]
    assert len(answer["message"]) < 400  # a truncated repr, never the whole input
    assert gw.deploys.history() == [] and gw.deploys.current is None  # nothing recorded
    assert action.calls == []  # nothing run
    assert all(n.state is NodeState.HEALTHY for n in gw.cluster)


async def test_the_admin_api_still_accepts_a_valid_version(
        deploying: Any, http: aiohttp.ClientSession) -> None:
    gw, action = deploying
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "2026.12.01+build.7"},
                         headers=auth()) as resp:
        assert resp.status == 202, await resp.text()
    record = gw.deploys.history()[0]
    await wait_for(lambda: not record.active, timeout=10)
    assert record.status is Status.SUCCEEDED, record.reason
    assert action.calls == [["node-1", "2026.12.01+build.7"], ["node-2", "2026.12.01+build.7"]]


async def test_the_cli_refuses_an_invalid_version_before_calling_the_api(
        deploying: Any, tmp_path: Path) -> None:
    gw, action = deploying
    path = tmp_path / "cli.yaml"
    write_cli_config(path, [str(n.config.url) for n in gw.cluster], gw.admin_address[1])
    result = await asyncio.to_thread(hagw, "deploy", "v2; touch X", "--no-follow", config=path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "hagw: deploy: invalid version 'v2; touch X'" in result.stderr
    assert "ASCII letters, digits" in result.stderr
    assert gw.deploys.history() == [] and action.calls == []
    assert not (tmp_path / "X").exists()


# -- versions reported by health checks ---------------------------------------------------------


def health_app(version: Any, ready_version: Any = None) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": version})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "version": ready_version})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app


def probed(cfg: GatewayConfig) -> Node:
    """The first node of ``cfg``, with its health check as the gateway would run it."""
    node = cluster_of(cfg)[0].get("node-1")
    assert node is not None
    return node


@pytest.mark.parametrize("version", ["v2; touch X", "$(id)", "../../x", "-v", "v2 ", ["v2"], {"v": 2}])
async def test_a_probe_treats_an_invalid_reported_version_as_unknown_and_says_so(
        serve: Any, http: aiohttp.ClientSession, version: Any) -> None:
    node = probed(config([await serve(health_app(version))]))
    result = await http_probe(http, node.config.url, node.check)
    assert result.ok  # a bad version is not a failed probe...
    assert result.version is None  # ...but it is not believed
    assert result.invalid_version is not None
    assert "reported an invalid version" in result.detail
    assert "treated as unknown" in result.detail


async def test_a_probe_keeps_a_valid_reported_version(serve: Any,
                                                      http: aiohttp.ClientSession) -> None:
    node = probed(config([await serve(health_app("v7"))]))
    result = await http_probe(http, node.config.url, node.check)
    assert result.ok and result.version == "v7" and result.detail == "probe ok"
    assert result.invalid_version is None


async def test_verify_refuses_an_invalid_version_from_the_ready_check(
        serve: Any, http: aiohttp.ClientSession) -> None:
    node = probed(config([await serve(health_app("v2", ready_version="v2; touch X"))],
                         health={"verify": {"path": "/ready"}}))
    problem = await verify(http, node.config.url, node.check, "v2", "v2")
    assert problem is not None and "reports an invalid version 'v2; touch X'" in problem
    assert await verify(http, node.config.url, node.check, None, None) is None


async def test_the_health_checker_never_takes_an_invalid_version_and_tells_the_operator(
        serve: Any) -> None:
    cfg = config([await serve(health_app("v2; touch X"))],
                 health={"interval": "50ms", "unhealthy_interval": "50ms", "jitter": 0})
    cluster, bus = cluster_of(cfg)
    seen = Recorder(bus)
    spawn = Spawner()
    registry = CollectorRegistry()
    checker = HealthChecker(cluster, cfg, clock=FakeClock(), spawn=spawn, events=bus,
                            registry=registry)
    node = cluster.get("node-1")
    assert node is not None

    def probes() -> float:
        return registry.get_sample_value("hagw_health_checks_total",
                                         {"node": "node-1", "result": "success"}) or 0.0

    try:
        await checker.start()
        await wait_for(lambda: probes() >= 3)
        assert node.version is None and node.state is NodeState.HEALTHY
        news = [e for e in seen.of(News) if e.kind == "node.invalid_version"]
        assert len(news) == 1  # said once, not at every probe
        assert "node-1 reported an invalid version 'v2; touch X'" in news[0].message
    finally:
        await checker.stop()
        await spawn.close()


# -- where a rollback's version comes from --------------------------------------------------------


class Runner:
    """A deploy runner on the fakes of its ports. Another one on the same store and clock
    is what a gateway restart would build."""

    def __init__(self, cfg: GatewayConfig, cluster: Cluster, bus: EventBus,
                 store: MemoryStore | None = None, clock: FakeClock | None = None) -> None:
        self.store = store or MemoryStore()
        self.clock = clock or FakeClock()
        self.spawn = Spawner()
        self.runner = DeployRunner(cfg.deploy, cluster=cluster, budget=Budget(),
                                   store=self.store, events=bus, spawn=self.spawn,
                                   clock=self.clock, registry=CollectorRegistry())

    async def deploy(self, version: str) -> DeployRecord:
        self.clock.advance(60)  # each deploy starts after the last
        record = await self.runner.begin(version)
        await wait_for(lambda: not record.active, timeout=20)
        return record

    async def close(self) -> None:
        await self.runner.stop()
        await self.spawn.close()


def fleet(action: Action, *placeholders: str) -> tuple[GatewayConfig, Cluster, EventBus]:
    cfg = config(["http://127.0.0.1:1", "http://127.0.0.1:2"], health={"enabled": False},
                 deploy={"command": action.command(*placeholders), "verify_version": False,
                         "bake_time": "0ms"})
    cluster, bus = cluster_of(cfg)
    return cfg, cluster, bus


async def test_a_rollback_returns_nodes_to_the_recorded_version_not_the_reported_one(
        tmp_path: Path) -> None:
    first = Action(tmp_path)
    cfg, cluster, bus = fleet(first, "{node}", "{version}")
    # What the nodes say about themselves: one is lying, one is stale.
    cluster.get("node-1").probe_passed("probe ok", "v1; touch X")
    cluster.get("node-2").probe_passed("probe ok", "v1")
    runner = Runner(cfg, cluster, bus)
    try:
        await runner.runner.start()
        done = await runner.deploy("v2")
        assert done.status is Status.SUCCEEDED, done.reason
    finally:
        await runner.close()

    # A restarted gateway, whose deploy command also takes {previous_version}: the history
    # comes from the store.
    (tmp_path / "second").mkdir()
    second = Action(tmp_path / "second", fail="node-2@v3")
    cfg2, _, _ = fleet(second, "{node}", "{version}", "{previous_version}")
    again = Runner(cfg2, cluster, bus, runner.store, runner.clock)
    try:
        await again.runner.start()
        record = await again.deploy("v3")
    finally:
        await again.close()
    assert record.status is Status.ROLLED_BACK, record.reason
    assert {n: run.previous_version for n, run in record.nodes.items()} == {
        "node-1": "v2", "node-2": "v2"}
    assert second.calls == [
        ["node-1", "v3", "v2"], ["node-2", "v3", "v2"],  # forward: v3, coming from v2
        ["node-2", "v2", "v3"], ["node-1", "v2", "v3"],  # rollback to v2, newest first
    ]


async def test_a_rollback_with_no_trustworthy_version_fails_clearly_without_running(
        tmp_path: Path) -> None:
    action = Action(tmp_path, fail="node-2@v2")
    cfg, cluster, bus = fleet(action, "{node}", "{version}")
    cluster.get("node-1").probe_passed("probe ok", "v1; touch X")  # a compromised node
    cluster.get("node-2").probe_passed("probe ok", "v1")
    runner = Runner(cfg, cluster, bus)
    try:
        await runner.runner.start()
        record = await runner.deploy("v2")
    finally:
        await runner.close()
    assert record.nodes["node-1"].previous_version is None
    assert record.nodes["node-2"].previous_version == "v1"
    assert record.status is Status.FAILED
    assert "rollback failed: action on node-1 failed: no version to roll node-1 back to" \
        in record.reason
    # node-1's rollback never ran an action; nothing it reported reached one.
    assert action.calls == [["node-1", "v2"], ["node-2", "v2"], ["node-2", "v1"]]


async def test_a_node_left_in_an_unknown_state_falls_back_to_its_valid_report(
        tmp_path: Path) -> None:
    action = Action(tmp_path, fail="node-1@v3")
    cfg = config(["http://127.0.0.1:1", "http://127.0.0.1:2"], health={"enabled": False},
                 deploy={"command": action.command("{node}", "{version}"),
                         "verify_version": False, "bake_time": "0ms", "on_failure": "halt"})
    cluster, bus = cluster_of(cfg)
    runner = Runner(cfg, cluster, bus)
    try:
        await runner.runner.start()
        assert (await runner.deploy("v2")).status is Status.SUCCEEDED
        halted = await runner.deploy("v3")  # node-1's action fails: where is node-1 now?
        assert halted.status is Status.FAILED
        cluster.get("node-1").probe_passed("probe ok", "v2.1")
        cluster.get("node-1").undrain("test: back", "deploy")
        runner.clock.advance(60)
        await runner.runner.begin("v4")
        record = runner.runner.current
        assert record is not None
        # node-1: the halted deploy does not know, so its own (valid) word; node-2: v2,
        # recorded by the first deploy (the halted one never touched it).
        assert {n: r.previous_version for n, r in record.record.nodes.items()} == {
            "node-1": "v2.1", "node-2": "v2"}
        await wait_for(lambda: not record.record.active, timeout=20)
    finally:
        await runner.close()


async def test_a_compromised_node_cannot_inject_through_a_failed_deploy(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """End to end: the node's health answer carries the payload; the deploy fails and rolls
    back; the payload reaches no action."""
    action = Action(tmp_path, fail="node-2@v2")
    nodes = await backends(2)
    nodes[0].info.version = "v1; touch X"
    gw = await gateway([b.url for b in nodes], deploy={
        "command": action.command("{node}", "{version}"), "verify_version": False,
        "bake_time": "0ms", "node_timeout": "5s"})
    assert gw.cluster.get("node-1").version is None
    async with http.post(f"{gw.admin_url}/deploys", json={"version": "v2"},
                         headers=auth()) as resp:
        assert resp.status == 202
        deploy_id = (await resp.json())["id"]
    record = gw.deploys.get(deploy_id)
    await wait_for(lambda: not record.active, timeout=30)
    assert record.status is Status.FAILED
    assert "no version to roll node-1 back to" in record.reason
    assert all("touch" not in word for call in action.calls for word in call)
    assert ["node-2", "v1"] in action.calls  # node-2, which reported honestly, went back


# -- what an action fills in ---------------------------------------------------------------------


def target(version: str = "v2", previous: str | None = "v1",
           node: str = "node-1") -> ActionTarget:
    return ActionTarget("d-1", node, "http://127.0.0.1:1", version, previous)


@pytest.mark.parametrize("version", HOSTILE)
def test_fill_refuses_an_invalid_version(version: str) -> None:
    with pytest.raises(ActionFailed) as caught:
        target(version).fill("--release={version}")
    assert not caught.value.transient
    assert "{version} for node-1: invalid version" in caught.value.detail
    with pytest.raises(ActionFailed) as caught:
        target(previous=version).fill("{previous_version}")
    assert "{previous_version} for node-1: invalid version" in caught.value.detail


def test_fill_refuses_an_unknown_previous_version_only_where_it_is_used() -> None:
    unknown = target(previous=None)
    assert unknown.fill("{node}@{version}") == "node-1@v2"
    with pytest.raises(ActionFailed, match="{previous_version} is unknown for node-1"):
        unknown.fill("{previous_version}")


def test_fill_fills_in_one_pass() -> None:
    # A value is never scanned for placeholders again.
    assert target(node="{version}").fill("{node} {version}") == "{version} v2"


async def test_an_action_with_an_invalid_version_runs_nothing_and_is_not_retried(
        tmp_path: Path) -> None:
    action = Action(tmp_path)
    cfg = config(["http://127.0.0.1:1"], deploy={
        "command": action.command("{node}", "{version}"), "action_attempts": 3})
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ActionFailed) as caught:
            await run_action(session, cfg.deploy, target("$(touch X)"))
    assert caught.value.output.count("[attempt failed:") == 1
    assert action.calls == []


async def test_a_webhook_is_not_called_with_an_invalid_version(serve: Any) -> None:
    bodies: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/deploy", hook)
    cfg = config(["http://127.0.0.1:1"], deploy={"webhook": {"url": f"{await serve(app)}/deploy"}})
    async with aiohttp.ClientSession() as session:
        for bad in (target("v2; touch X"), target(previous="../../x")):
            with pytest.raises(ActionFailed, match="invalid version"):
                await run_action(session, cfg.deploy, bad)
        assert bodies == []
        await run_action(session, cfg.deploy, target(previous=None))
    assert bodies == [{"deploy": "d-1", "node": "node-1", "url": "http://127.0.0.1:1",
                       "version": "v2", "previous_version": None}]
