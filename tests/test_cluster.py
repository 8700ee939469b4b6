"""Fleet rules without I/O: balancing, capacity floor, backups, locality, panic, ejection."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
import yaml

from gateway.clock import FakeClock
from gateway.cluster import Cluster
from gateway.config import GatewayConfig, parse_config
from gateway.events import EventBus, EventLog
from gateway.node import Node, NodeState
from gateway.outlier import OutlierDetector


def config(n: int = 3, **overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "admin": {"token": "t"},
        "nodes": [{"name": f"node-{i + 1}", "url": f"http://127.0.0.1:{9600 + i}"}
                  for i in range(n)],
    }
    data.update(overrides)
    return parse_config(yaml.safe_dump(data), "<test>")


_HISTORY: dict[int, EventLog] = {}


def history(c: Cluster) -> EventLog:
    """What the event log recorded for a cluster made by ``cluster()``."""
    return _HISTORY[id(c)]


def cluster(n: int = 3, **overrides: Any) -> tuple[Cluster, FakeClock]:
    clock = FakeClock()
    bus = EventBus()
    log = EventLog(bus, clock=clock)
    c = Cluster(config(n, **overrides), clock=clock, bus=bus, rng=random.Random(7))
    _HISTORY[id(c)] = log
    for node in c:
        node.probe_passed()  # boot: one pass admits
    return c, clock


def spread(c: Cluster, count: int = 300) -> Counter[str]:
    picks: Counter[str] = Counter()
    for _ in range(count):
        node = c.pick()
        assert node is not None
        picks[node.name] += 1
    return picks


@pytest.fixture(params=["round_robin", "least_request", "random"])
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_policy_spreads_over_serving_nodes(policy: str) -> None:
    c, _ = cluster(balancer=policy)
    picks = spread(c)
    assert set(picks) == {"node-1", "node-2", "node-3"}
    assert min(picks.values()) > 60


def test_round_robin_rotates_exactly() -> None:
    c, _ = cluster()
    assert [c.pick().name for _ in range(6)] == ["node-1", "node-2", "node-3"] * 2  # type: ignore[union-attr]


def test_weights_are_honoured(policy: str) -> None:
    c, _ = cluster(balancer=policy, nodes=[
        {"name": "big", "url": "http://127.0.0.1:1", "weight": 3},
        {"name": "small", "url": "http://127.0.0.1:2", "weight": 1}])
    picks = spread(c, 400)
    assert 2.0 < picks["big"] / picks["small"] < 4.5


def test_least_request_prefers_the_idle_node() -> None:
    c, _ = cluster(2, balancer="least_request")
    busy = c.get("node-1")
    assert busy is not None
    for _ in range(50):
        busy.acquire()
    picks = spread(c, 100)
    assert picks["node-2"] == 100


def test_drained_nodes_get_nothing_and_retries_avoid_the_failed_node() -> None:
    c, _ = cluster()
    node2 = c.get("node-2")
    assert node2 is not None
    node2.drain("maintenance")
    assert "node-2" not in spread(c, 30)
    first = c.pick()
    assert first is not None
    assert c.pick(exclude=[first]) is not first


def test_capacity_floor_drains_one_warning_node_and_keeps_the_other() -> None:
    c, _ = cluster()  # min_healthy 50% of 3 = 2
    n1, n2 = c.get("node-1"), c.get("node-2")
    assert n1 is not None and n2 is not None
    n1.observe_warning("health endpoint reports warn", clear=False)
    n2.observe_warning("p95 latency 420ms > 250ms", clear=False)
    assert n1.warning_drained and not n1.serving
    assert not n2.warning_drained and n2.serving
    assert "below min_healthy=2" in n2.reason
    assert n2.weight_at(0) == pytest.approx(0.25)
    refused = history(c).since(kind="node.drain_refused")
    assert [e.node for e in refused] == ["node-2"]
    picks = spread(c, 300)
    assert "node-1" not in picks and picks["node-3"] > picks["node-2"] * 2
    # Another node fails: the drained warning node comes back at reduced weight.
    n3 = c.get("node-3")
    assert n3 is not None
    for _ in range(3):
        n3.probe_failed("probe timeout")
    assert n1.serving and n1.state is NodeState.WARNING


def test_backups_serve_only_below_the_floor() -> None:
    c, _ = cluster(nodes=[
        {"name": "p1", "url": "http://127.0.0.1:1"}, {"name": "p2", "url": "http://127.0.0.1:2"},
        {"name": "b1", "url": "http://127.0.0.1:3", "backup": True}], min_healthy=2)
    assert "b1" not in spread(c, 30)
    p1 = c.get("p1")
    assert p1 is not None
    p1.drain("operator")
    assert set(spread(c, 30)) == {"p2", "b1"}


def test_prefer_zone_spills_over_as_the_local_zone_loses_capacity() -> None:
    c, _ = cluster(zone="a", locality="prefer_zone", nodes=[
        {"name": "a1", "url": "http://127.0.0.1:1", "zone": "a"},
        {"name": "a2", "url": "http://127.0.0.1:2", "zone": "a"},
        {"name": "b1", "url": "http://127.0.0.1:3", "zone": "b"},
        {"name": "b2", "url": "http://127.0.0.1:4", "zone": "b"}], min_healthy=1)
    assert set(spread(c, 40)) == {"a1", "a2"}
    a1 = c.get("a1")
    assert a1 is not None
    for _ in range(3):
        a1.probe_failed("down")
    picks = spread(c, 1000)
    assert 350 < picks["a2"] < 650  # half the local zone is gone: half the traffic spills


def test_panic_routes_to_every_node_not_drained() -> None:
    c, clock = cluster(panic_threshold="50%", outlier_detection={"max_ejection_percent": "100%"})
    n1, n2, n3 = (c.get(f"node-{i}") for i in (1, 2, 3))
    assert n1 and n2 and n3
    n1.eject(clock.monotonic() + 30, "x")
    assert not c.panic
    n2.eject(clock.monotonic() + 30, "x")
    assert c.panic
    assert set(spread(c, 60)) == {"node-1", "node-2", "node-3"}
    n3.drain("operator")
    assert set(spread(c, 60)) == {"node-1", "node-2"}


def test_panic_prefers_live_nodes_over_unhealthy_ones() -> None:
    c, clock = cluster()
    n1, n2, n3 = (c.get(f"node-{i}") for i in (1, 2, 3))
    assert n1 and n2 and n3
    for _ in range(3):
        n1.probe_failed("down")
        n2.probe_failed("down")
    n3.eject(clock.monotonic() + 30, "x")
    assert set(spread(c, 30)) == {"node-3"}
    for _ in range(3):
        n3.probe_failed("down")
    assert set(spread(c, 30)) == {"node-1", "node-2", "node-3"}


def test_no_panic_threshold_means_503() -> None:
    c, _ = cluster(1, panic_threshold=0)
    node = c.get("node-1")
    assert node is not None
    for _ in range(3):
        node.probe_failed("down")
    assert c.pick() is None


def test_outlier_ejection_multiplies_and_caps() -> None:
    c, clock = cluster(outlier_detection={"consecutive_failures": 3, "base_ejection_time": "10s",
                                          "max_ejection_percent": "34%"})
    outlier = OutlierDetector(c, c.config.outlier_detection)
    n1, n2 = c.get("node-1"), c.get("node-2")
    assert n1 and n2
    for _ in range(2):
        outlier.failure(n1, "503")
    outlier.success(n1)  # consecutive only
    for _ in range(3):
        outlier.failure(n1, "503")
    assert n1.state is NodeState.EJECTED and "ejected for 10s" in n1.reason
    for _ in range(3):
        outlier.failure(n2, "reset")
    assert n2.state is NodeState.HEALTHY  # 34% of 3 nodes: one at a time
    assert history(c).since(kind="node.ejection_refused")
    clock.advance(10)
    assert c.tick() is None
    assert n1.state is NodeState.HEALTHY
    for _ in range(3):
        outlier.failure(n1, "503")
    assert "ejected for 20s" in n1.reason  # second ejection: twice as long
    assert c.tick() == pytest.approx(clock.monotonic() + 20)


def test_reload_adds_and_removes_nodes() -> None:
    c, _ = cluster(2)
    old = c.get("node-2")
    assert old is not None
    old.acquire()
    added, removed = c.update(config(nodes=[
        {"name": "node-1", "url": "http://127.0.0.1:9600"},
        {"name": "node-3", "url": "http://127.0.0.1:9602"}]))
    assert [n.name for n in added] == ["node-3"] and removed == [old]
    assert old.removed and old.state is NodeState.DRAINING and old.in_flight == 1
    assert c.get("node-2") is None
    assert {n.name for n in c} == {"node-1", "node-3"}
    c.forget(old)
    assert all(n is not old for n in c.nodes.values())


def test_node_repr_in_cluster() -> None:
    c, _ = cluster(1)
    assert repr(c) == "<Cluster nodes=1 serving=1>"
    assert isinstance(c.get("node-1"), Node)
