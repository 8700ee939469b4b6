"""Several gateways, one fleet (issue 15), wired: real gateways in this process, each with
its own state_dir and ephemeral loopback ports, and a real redis-server (AOF on).

What it shows: the link and the leader in metrics, ``GET /peers`` and ``hagw status``;
operator drains that reach every instance within a second and survive a reload and a
restart; Redis down: traffic still served, changes of the shared state refused with the
reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.app.fleet_budget import FleetBudget
from gateway.app.runtime import Gateway
from gateway.config import parse_config
from gateway.node import NodeState
from monitor.peers.connection import PeerLink
from monitor.peers.records import SharedStore
from tests.conftest import Backend, auth, config_dict, hagw, make_config, sample, wait_for
from tests.fakes import Spawner
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

#: Short enough that a takeover is quick, long enough for a loaded CI machine.
LEASE = {"lease_ttl": "2s", "timeout": "500ms"}


class Fleet:
    """Starts and stops in-process gateways that share ``redis``."""

    def __init__(self, tmp_path: Path, redis: RedisServer) -> None:
        self.tmp_path = tmp_path
        self.redis = redis
        self.running: list[Gateway] = []

    def config(self, name: str, urls: list[str], **overrides: Any) -> dict[str, Any]:
        peers = {"redis": self.redis.url, "name": name, **LEASE,
                 **overrides.pop("peers", {})}
        return config_dict(urls, self.tmp_path / name, peers=peers, **overrides)

    async def start(self, name: str, urls: list[str], **overrides: Any) -> Gateway:
        data = self.config(name, urls, **overrides)
        path = self.tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        gw = Gateway(parse_config(path.read_text(), str(path)), config_path=str(path))
        await gw.start()
        self.running.append(gw)
        return gw

    async def stop(self, gw: Gateway) -> None:
        await gw.stop()
        self.running.remove(gw)

    async def pair(self, urls: list[str], **overrides: Any
                   ) -> tuple[Gateway, Gateway, Gateway, Gateway]:
        """gw-a and gw-b, once one leads and both see every node healthy: (a, b, the
        leader, the follower)."""
        a = await self.start("gw-a", urls, **overrides)
        b = await self.start("gw-b", urls, **overrides)
        leader = await leader_of([a, b])
        for gw in (a, b):
            await wait_for(lambda gw=gw: all(n.state is NodeState.HEALTHY
                                             for n in gw.cluster), 10.0, "every node healthy")
        return a, b, leader, b if leader is a else a

    async def close(self) -> None:
        for gw in list(self.running):
            await self.stop(gw)


@pytest.fixture
async def fleet(tmp_path: Path, redis_server: RedisServer, backends: Callable[..., Any]
                ) -> AsyncIterator[Fleet]:
    """Gateways stopped before the backends they probe (hence ``backends`` here)."""
    made = Fleet(tmp_path, redis_server)
    yield made
    await made.close()


async def leader_of(gateways: list[Gateway], timeout: float = 10.0) -> Gateway:
    """The one gateway that leads, once every gateway agrees on it."""
    def agreed() -> bool:
        leading = [g for g in gateways if g.fleet is not None and g.fleet.election.leading]
        if len(leading) != 1:
            return False
        name = leading[0].fleet.name if leading[0].fleet else None
        return all(g.fleet is not None and g.fleet.election.leader == name for g in gateways)

    await wait_for(agreed, timeout, "one leader that every gateway names")
    return next(g for g in gateways if g.fleet is not None and g.fleet.election.leading)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers=auth()) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def scrape(http: aiohttp.ClientSession, gw: Gateway) -> str:
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        return await resp.text()


# -- 1. the link and the leader ------------------------------------------------------------

async def test_link_and_leader_in_metrics_peers_and_status(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    nodes: list[Backend] = await backends(2)
    urls = [b.url for b in nodes]
    a = await fleet.start("gw-a", urls)
    b = await fleet.start("gw-b", urls)
    leader = await leader_of([a, b])
    follower = b if leader is a else a
    assert leader.fleet is not None and follower.fleet is not None
    epoch = leader.fleet.election.epoch
    assert epoch is not None and epoch >= 1

    for gw in (a, b):
        assert sample(gw, "hagw_peers_connected") == 1
        assert sample(gw, "hagw_peers_leader", leader=leader.fleet.name) == 1
        assert sample(gw, "hagw_peers_epoch") == epoch
        text = await scrape(http, gw)
        assert "hagw_peers_connected 1.0" in text
        assert f'hagw_peers_leader{{leader="{leader.fleet.name}"}} 1.0' in text
    assert sample(leader, "hagw_peers_leading") == 1
    assert sample(follower, "hagw_peers_leading") == 0

    peers = await get_json(http, f"{follower.admin_url}/peers")
    assert peers["enabled"] is True and peers["connected"] is True
    assert peers["name"] == follower.fleet.name
    assert peers["leader"] == leader.fleet.name and peers["epoch"] == epoch
    assert peers["leading"] is False
    status = await get_json(http, f"{follower.admin_url}/status.json")
    assert status["peers"]["leader"] == leader.fleet.name

    # hagw status, as an operator runs it against the follower.
    cli = tmp_path / "cli.yaml"
    data = config_dict(urls, tmp_path / "cli")
    assert follower.admin_address is not None
    data["admin"]["listen"] = f"127.0.0.1:{follower.admin_address[1]}"
    cli.write_text(yaml.safe_dump(data))
    done = await asyncio.to_thread(hagw, "status", config=cli)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("peers"))
    assert f"{follower.fleet.name}: follower" in line
    assert f"leader {leader.fleet.name} (epoch {epoch})" in line
    assert "connected" in line and "NOT" not in line

    # The leader stops: it releases the lease, and the other takes it with a new epoch.
    await fleet.stop(leader)
    await wait_for(lambda: follower.fleet is not None and follower.fleet.election.leading,
                   5.0, "the follower to take the lease")
    assert (follower.fleet.election.epoch or 0) > epoch
    assert sample(follower, "hagw_peers_leader", leader=follower.fleet.name) == 1


async def test_without_peers_the_gateway_stands_alone(
        gateway: Callable[..., Any], backends: Callable[..., Any],
        http: aiohttp.ClientSession) -> None:
    nodes: list[Backend] = await backends(1)
    gw = await gateway([nodes[0].url])
    assert gw.fleet is None
    peers = await get_json(http, f"{gw.admin_url}/peers")
    assert peers["enabled"] is False
    assert "hagw_peers_" not in await scrape(http, gw)
    status = await get_json(http, f"{gw.admin_url}/status.json")
    assert status["peers"] is None


async def test_the_redis_password_never_shows(tmp_path: Path) -> None:
    config = make_config(["http://127.0.0.1:1"], tmp_path, peers={
        "redis": "redis://hagw:s3cret-pw@127.0.0.1:1/0", "name": "gw-a"})
    gw = Gateway(config)
    assert gw.fleet is not None
    status = gw.fleet.status()
    assert "s3cret-pw" not in repr(status) and "s3cret-pw" not in repr(gw.fleet)
    assert status["redis"].startswith("redis://hagw:")
    await gw.fleet.link.close()


# -- 2. drains, shared -----------------------------------------------------------------------

async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None
               ) -> tuple[int, Any]:
    async with http.post(url, json=body or {}, headers=auth()) as resp:
        return resp.status, await resp.json()


async def seen_within(gw: Gateway, name: str, state: NodeState, limit: float) -> float:
    """How long until ``gw`` sees node ``name`` in ``state`` (fails past ``limit``)."""
    began = time.monotonic()
    node = gw.cluster.get(name)
    assert node is not None
    await wait_for(lambda: node.state is state, limit, f"{name} {state} on {gw!r}")
    return time.monotonic() - began


async def test_a_drain_reaches_every_instance_within_a_second(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    nodes: list[Backend] = await backends(3)
    urls = [b.url for b in nodes]
    a = await fleet.start("gw-a", urls)
    b = await fleet.start("gw-b", urls)
    c = await fleet.start("gw-c", urls)
    for gw in (a, b, c):
        await wait_for(lambda gw=gw: all(n.state is NodeState.HEALTHY for n in gw.cluster),
                       10.0, "every node healthy")

    status, body = await post(http, f"{a.admin_url}/nodes/node-2/drain", {"reason": "disk"})
    assert status == 200, body
    assert body["state"] == "DRAINING"
    for gw in (b, c):
        await seen_within(gw, "node-2", NodeState.DRAINING, 1.0)
        node = gw.cluster.get("node-2")
        assert node is not None and node.holds["operator"] == "disk (by gw-a)"
    # Traffic through B no longer reaches node-2.
    for _ in range(6):
        async with http.get(f"{b.traffic_url}/") as resp:
            assert resp.status == 200
            assert (await resp.json())["node"] != "node-2"

    status, body = await post(http, f"{c.admin_url}/nodes/node-2/undrain")
    assert status == 200, body
    for gw in (a, b):
        await seen_within(gw, "node-2", NodeState.HEALTHY, 1.0)


async def test_shared_drains_survive_a_reload_and_a_restart(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    nodes: list[Backend] = await backends(2)
    urls = [b.url for b in nodes]
    a = await fleet.start("gw-a", urls)
    b = await fleet.start("gw-b", urls)
    status, body = await post(http, f"{a.admin_url}/nodes/node-1/drain", {"reason": "kernel"})
    assert status == 200, body
    await seen_within(b, "node-1", NodeState.DRAINING, 1.0)

    async with http.post(f"{b.admin_url}/reload", headers=auth()) as resp:
        assert resp.status == 200, await resp.text()
    node = b.cluster.get("node-1")
    assert node is not None and node.state is NodeState.DRAINING

    # B restarts while A undrains: B comes back with Redis's state, not its own old one.
    await fleet.stop(b)
    status, body = await post(http, f"{a.admin_url}/nodes/node-1/undrain")
    assert status == 200, body
    status, body = await post(http, f"{a.admin_url}/nodes/node-2/drain", {"reason": "fan"})
    assert status == 200, body
    b = await fleet.start("gw-b", urls)
    one, two = b.cluster.get("node-1"), b.cluster.get("node-2")
    assert one is not None and two is not None
    assert "operator" not in one.holds
    assert two.holds.get("operator") == "fan (by gw-a)"


# -- 5. Redis down -----------------------------------------------------------------------------

async def test_redis_down_serves_on_the_last_known_state_and_refuses_changes(
        fleet: Fleet, redis_server: RedisServer, backends: Callable[..., Any],
        http: aiohttp.ClientSession) -> None:
    nodes: list[Backend] = await backends(3)
    urls = [b.url for b in nodes]
    a = await fleet.start("gw-a", urls)
    b = await fleet.start("gw-b", urls)
    status, body = await post(http, f"{a.admin_url}/nodes/node-3/drain", {"reason": "psu"})
    assert status == 200, body
    await seen_within(b, "node-3", NodeState.DRAINING, 1.0)
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in b.cluster
                               if n.name != "node-3"), 10.0, "the others healthy")

    # Requests keep flowing through B while Redis dies: none fails, none reaches node-3.
    failures: list[str] = []
    answered: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            async with http.get(f"{b.traffic_url}/") as resp:
                if resp.status != 200:
                    failures.append(f"{resp.status} {await resp.text()}")
                else:
                    answered.append((await resp.json())["node"])

    task = asyncio.create_task(load())
    await asyncio.sleep(0.3)
    redis_server.kill()
    for gw in (a, b):
        await wait_for(lambda gw=gw: sample(gw, "hagw_peers_connected") == 0, 5.0,
                       "the link to notice Redis is gone")
    await asyncio.sleep(0.5)
    stop.set()
    await task
    assert failures == []
    assert answered and "node-3" not in answered

    peers = await get_json(http, f"{b.admin_url}/peers")
    assert peers["connected"] is False and peers["reason"]
    # Changes of the shared state are refused with the reason; nothing changes.
    status, body = await post(http, f"{b.admin_url}/nodes/node-1/drain")
    assert status == 503 and body["error"] == "not_replicated", body
    assert "not reachable" in body["message"] or "refused" in body["message"]
    one = b.cluster.get("node-1")
    assert one is not None and one.state is NodeState.HEALTHY
    for gw in (a, b):
        status, body = await post(http, f"{gw.admin_url}/deploys", {"version": "v2"})
        assert status == 503 and body["error"] == "not_replicated", body
        assert "Redis" in body["message"] or "reachable" in body["message"]
        status, body = await post(http, f"{gw.admin_url}/maintenance",
                                  {"duration": "10m", "reason": "db"})
        assert status == 503 and body["error"] == "not_replicated", body
    node3 = b.cluster.get("node-3")
    assert node3 is not None and node3.state is NodeState.DRAINING

    # Redis is back (its AOF kept the drain): changes are taken again.
    redis_server.start()
    for gw in (a, b):
        await wait_for(lambda gw=gw: sample(gw, "hagw_peers_connected") == 1, 10.0,
                       "the link to reconnect")
    status, body = await post(http, f"{b.admin_url}/nodes/node-3/undrain")
    assert status == 200, body
    await seen_within(a, "node-3", NodeState.HEALTHY, 1.0)


# -- 3. the fleet's capacity floor, decided by the leader ------------------------------------

async def test_two_instances_each_seeing_a_warning_drain_exactly_one(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    """3 nodes, min_healthy 2: the floor allows one drain. A sees node-1 WARNING, B sees
    node-2 WARNING (each its own detector's verdict): exactly one is drained, on both."""
    nodes: list[Backend] = await backends(3)
    urls = [b.url for b in nodes]
    keys: dict[str, Any] = {"min_healthy": 2, "warning": {"recover_after": "10m"}}
    a = await fleet.start("gw-a", urls, **keys)
    b = await fleet.start("gw-b", urls, **keys)
    await leader_of([a, b])
    for gw in (a, b):
        await wait_for(lambda gw=gw: all(n.state is NodeState.HEALTHY for n in gw.cluster),
                       10.0, "every node healthy")

    def warn(gw: Gateway, name: str) -> None:
        node = gw.cluster.get(name)
        assert node is not None
        node.observe_warning("probe latency 900ms above 250ms", clear=False)

    warn(a, "node-1")
    warn(b, "node-2")

    def drained(gw: Gateway) -> set[str]:
        return {n.name for n in gw.cluster if "fleet" in n.holds}

    await wait_for(lambda: len(drained(a)) == 1 and drained(a) == drained(b), 5.0,
                   "one drain, the same on both")
    # And it stays that way: nothing else is drained once every report is in.
    await asyncio.sleep(0.5)
    assert len(drained(a)) == 1 and drained(a) == drained(b)
    out = next(iter(drained(a)))
    assert out in ("node-1", "node-2")
    for gw in (a, b):
        serving = [n.name for n in gw.cluster if n.serving]
        assert len(serving) == 2 and out not in serving
        node = gw.cluster.get(out)
        assert node is not None and node.state is NodeState.DRAINING
    kept = "node-2" if out == "node-1" else "node-1"
    seen_by = a if kept == "node-1" else b
    kept_node = seen_by.cluster.get(kept)
    assert kept_node is not None and kept_node.state is NodeState.WARNING  # reduced weight

    # The drained node recovers where it was seen: the leader readmits it fleet-wide, and
    # the other WARNING node now fits under the floor.
    seer = a if out == "node-1" else b
    node = seer.cluster.get(out)
    assert node is not None
    node.warning = None
    node.restart_checks("warning signs clear")
    await wait_for(lambda: drained(a) == {kept} and drained(b) == {kept}, 10.0,
                   "the drain to move to the other node")


def test_fleet_drains_keeps_the_floor(tmp_path: Path) -> None:
    from gateway.app.floor import fleet_drains
    config = make_config([f"http://127.0.0.1:{p}" for p in (1, 2, 3, 4)], tmp_path,
                         health={"enabled": False}, min_healthy=2)
    gw = Gateway(config)
    nodes = list(gw.cluster)
    warned = {"node-3": "x", "node-1": "y", "node-4": "z"}
    assert fleet_drains(nodes, warned, set(), 2) == {"node-1": "y", "node-3": "x"}
    # Already drained nodes stay drained first: no flapping between leaders.
    assert fleet_drains(nodes, warned, {"node-4"}, 2) == {"node-4": "z", "node-1": "y"}
    assert fleet_drains(nodes, warned, set(), 4) == {}
    # A node out for another reason costs its capacity already.
    nodes[1].drain("operator", "operator")
    assert fleet_drains(nodes, warned, set(), 2) == {"node-1": "y"}


async def test_incidents_are_opened_by_the_leader_alone(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    """Every node fails its probes on both instances: one incident opens fleet-wide, by
    the leader, and the follower's status page shows the same one."""
    nodes: list[Backend] = await backends(2)
    urls = [b.url for b in nodes]
    _, _, leader, follower = await fleet.pair(urls)
    for node in nodes:
        node.fault(health="fail")
    await wait_for(lambda: leader.incidents.tracker.current is not None, 10.0,
                   "the leader to open an incident")
    current = leader.incidents.tracker.current
    assert current is not None
    await wait_for(lambda: follower.incidents.tracker.current is not None, 2.0,
                   "the follower's copy")
    copy = follower.incidents.tracker.current
    assert copy is not None and copy.id == current.id
    assert list(follower.incidents.tracker.incidents) == [current.id]
    assert sample(leader, "hagw_incidents_total") == 1
    assert sample(follower, "hagw_incidents_total") == 0  # the follower opened none
    status = await get_json(http, f"{follower.admin_url}/status.json")
    assert [i["id"] for i in status["incidents"]["open"]] == [current.id]
    # An operator's update goes to the leader; a follower says where.
    status_code, body = await post(http, f"{follower.admin_url}/incidents/{current.id}/ack")
    assert status_code == 409 and body["error"] == "not_leader", body
    status_code, body = await post(http, f"{leader.admin_url}/incidents/{current.id}/ack")
    assert status_code == 200, body


async def test_a_gone_instances_warning_report_holds_nothing(
        fleet: Fleet, backends: Callable[..., Any], peer_link: Callable[..., PeerLink],
        spawner: Spawner) -> None:
    """Reports are renewed every lease_ttl: one older than three TTLs (an instance that was
    SIGKILLed) drains nothing; a fresh one does, and once it goes stale the node is back."""
    nodes: list[Backend] = await backends(3)
    urls = [b.url for b in nodes]
    a = await fleet.start("gw-a", urls, min_healthy=1, warning={"recover_after": "10m"})
    await leader_of([a])
    await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in a.cluster), 10.0,
                   "every node healthy")
    assert a.fleet is not None and a.floor is not None
    now = time.time()
    # What two other instances wrote, as they write it.
    dead = SharedStore(peer_link("gw-dead"), spawn=spawner)
    alive = SharedStore(peer_link("gw-alive"), spawn=spawner)
    await dead.put("warnings", "gw-dead", {"nodes": {"node-3": "p95 2s"}, "at": now - 20})
    await alive.put("warnings", "gw-alive", {"nodes": {"node-2": "p95 1s"}, "at": now})
    two, three = a.cluster.get("node-2"), a.cluster.get("node-3")
    assert two is not None and three is not None
    await wait_for(lambda: "fleet" in two.holds, 5.0, "the fresh report's drain")
    assert "fleet" not in three.holds
    # gw-alive stops renewing: after three TTLs its node is readmitted at the next decision.
    await wait_for(lambda: "fleet" not in two.holds, 3 * 2.0 + 2 * 2.0 + 1.0,
                   "the stale report to be dropped")


# -- 4. maintenance windows, shared -----------------------------------------------------------

async def test_maintenance_windows_are_the_fleets(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    """A window scheduled on A is B's too: B enters it on its own clock, an end on B ends
    it on A, a cancellation on A reaches B; only the leader announces."""
    from gateway.maintenance import Phase
    nodes: list[Backend] = await backends(2)
    urls = [b.url for b in nodes]
    a, b, leader, follower = await fleet.pair(urls)

    later, body = await post(http, f"{a.admin_url}/maintenance",
                             {"start": "+2h", "duration": "30m", "reason": "db upgrade"})
    assert later == 201, body
    later_id = body["id"]
    await wait_for(lambda: later_id in b.maintenance.schedule.windows, 1.0, "B's copy")
    # Before a whole-fleet window every answer carries the advisory, through B too.
    async with http.get(f"{b.traffic_url}/") as resp:
        assert resp.status == 200
        assert resp.headers.get("X-Maintenance-Scheduled")
    status, body = await post(http, f"{a.admin_url}/maintenance",
                              {"start": "now", "duration": "10m", "reason": "switch swap"})
    assert status == 201, body
    now_id = body["id"]
    await wait_for(lambda: b.mode.phase is Phase.ACTIVE, 1.0, "B in maintenance")
    async with http.get(f"{b.traffic_url}/") as resp:
        assert resp.status == 503
    assert all(n.state is NodeState.MAINTENANCE for n in b.cluster)

    async with http.post(f"{b.admin_url}/maintenance/{now_id}/end", headers=auth()) as resp:
        assert resp.status == 200, await resp.text()
    await wait_for(lambda: a.mode.phase is Phase.NORMAL and b.mode.phase is Phase.NORMAL,
                   10.0, "both out of maintenance")
    assert a.maintenance.schedule.windows[now_id].status == "ended"

    async with http.delete(f"{a.admin_url}/maintenance/{later_id}", headers=auth()) as resp:
        assert resp.status == 200, await resp.text()
    await wait_for(lambda: b.maintenance.schedule.windows[later_id].status == "cancelled",
                   1.0, "B's copy cancelled")
    # The follower sent no announcement of its own.
    assert follower.maintenance.leads() is False
    assert leader.maintenance.leads() is True


async def test_a_gateway_starts_and_serves_while_redis_is_down(
        tmp_path: Path, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    """Redis unreachable at start-up (a config window included): the gateway serves on
    what it has and says why it is not connected."""
    from bench.processes import free_port
    nodes: list[Backend] = await backends(1)
    start = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(time.time() + 7200))
    config = make_config([nodes[0].url], tmp_path / "state", peers={
        "redis": f"redis://127.0.0.1:{free_port()}/0", "name": "gw-a", **LEASE},
        maintenance={"windows": [{"start": start, "duration": "1h", "reason": "planned"}]})
    gw = Gateway(config)
    await gw.start()
    try:
        await wait_for(lambda: all(n.state is NodeState.HEALTHY for n in gw.cluster), 10.0,
                       "the node healthy")
        async with http.get(f"{gw.traffic_url}/") as resp:
            assert resp.status == 200
        peers = await get_json(http, f"{gw.admin_url}/peers")
        assert peers["connected"] is False and peers["leader"] is None
        assert "Connect" in peers["reason"] or "connect" in peers["reason"]
        assert len(gw.maintenance.schedule.windows) == 1
    finally:
        await gw.stop()


class Cuttable:
    """A TCP proxy to Redis that a test can cut (every connection closed, new ones
    refused) and heal: a network partition between one instance and Redis."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                 self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        # Let the aborted connections' pipes finish, so nothing is left for the GC.
        await asyncio.sleep(0)

    async def heal(self) -> None:
        await self.start(self.port)


async def test_a_leader_cut_off_from_redis_steps_down_and_the_rest_go_on(
        fleet: Fleet, redis_server: RedisServer, backends: Callable[..., Any],
        http: aiohttp.ClientSession) -> None:
    nodes: list[Backend] = await backends(2)
    urls = [b.url for b in nodes]
    proxy = Cuttable(redis_server.port)
    await proxy.start()
    a = await fleet.start("gw-a", urls, peers={"redis": f"redis://127.0.0.1:{proxy.port}/0"})
    await leader_of([a])
    b = await fleet.start("gw-b", urls)
    assert await leader_of([a, b]) is a
    assert a.fleet is not None and b.fleet is not None
    old_epoch = a.fleet.election.epoch or 0

    await proxy.cut()
    began = time.monotonic()
    await wait_for(lambda: b.fleet is not None and b.fleet.election.leading, 2.0 + 2.0,
                   "B to take the lease")
    assert (b.fleet.election.epoch or 0) > old_epoch
    # A stepped down on its own clock, before Redis let the lease go to B.
    assert not a.fleet.election.leading
    assert time.monotonic() - began < 2.0 + 1.0
    stepped_down = a.events.since(kind="peers.follower", limit=0)[-1].at
    took_over = b.events.since(kind="peers.leader", limit=0)[-1].at
    assert stepped_down < took_over
    assert sample(a, "hagw_peers_connected") == 0
    async with http.get(f"{a.traffic_url}/") as resp:
        assert resp.status == 200  # A serves on what it knew
    status, body = await post(http, f"{b.admin_url}/nodes/node-1/drain", {"reason": "b"})
    assert status == 200, body
    one_on_a = a.cluster.get("node-1")
    assert one_on_a is not None and "operator" not in one_on_a.holds  # A cannot hear it

    await proxy.heal()
    await wait_for(lambda: "operator" in one_on_a.holds, 5.0, "A to resynchronise")
    await wait_for(lambda: a.fleet is not None and a.fleet.election.leader == "gw-b", 5.0,
                   "A to follow B")
    await fleet.stop(a)
    await proxy.cut()


async def test_the_deploy_gate_and_status_page_read_the_fleets_error_budget(
        fleet: Fleet, backends: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    """Every good request goes through the leader, every failed one through the follower:
    the leader's own counts are clean, the fleet's budget is spent, and the leader
    refuses a deploy for it; either status page shows the fleet's figures."""
    from monitor.slo import Counts
    nodes: list[Backend] = await backends(2)
    urls = [b.url for b in nodes]
    _, _, leader, follower = await fleet.pair(urls)
    for _ in range(50):
        async with http.get(f"{leader.traffic_url}/") as resp:
            assert resp.status == 200
    for node in nodes:
        node.fault(error_rate=1.0, error_status=500)
    for _ in range(20):
        async with http.get(f"{follower.traffic_url}/") as resp:
            assert resp.status >= 500
    for node in nodes:
        node.fault(error_rate=0.0)
    assert isinstance(leader.budget, FleetBudget) and isinstance(follower.budget, FleetBudget)
    await follower.budget.refresh()
    await leader.budget.refresh()
    assert leader.slo.window(3600) == Counts(50, 0, 0)  # its own
    assert leader.budget.window(3600) == Counts(50, 20, 0)  # the fleet's
    assert leader.slo.budget_remaining() == 1.0
    assert leader.budget.budget_remaining() < 0
    status, body = await post(http, f"{leader.admin_url}/deploys", {"version": "v2"})
    assert status == 422 and "error budget" in body["message"], body
    await follower.budget.refresh()
    page = await get_json(http, f"{follower.admin_url}/status.json")
    assert page["slo"]["scope"] == "fleet"
    assert page["slo"]["availability"]["24h"] == pytest.approx(50 / 70)
