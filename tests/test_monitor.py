"""The health monitor against real backends: warning signs, automatic drain, the capacity
floor, hung nodes, verified readmission with slow start."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from gateway.node import NodeState
from monitor.health.warning import TrafficWindow, percentile
from tests.conftest import sample, wait_for

FAST = {"interval": "200ms", "unhealthy_interval": "100ms", "timeout": "300ms",
        "healthy_threshold": 2, "unhealthy_threshold": 2, "jitter": 0}


class Load:
    """Constant client traffic through the gateway, bounded, recording every outcome."""

    def __init__(self, http: aiohttp.ClientSession, url: str, clients: int = 4,
                 limit: int = 20_000) -> None:
        self.http = http
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.latencies: list[tuple[float, float]] = []
        self.nodes: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._limit = limit
        self._tasks = [asyncio.create_task(self._client()) for _ in range(clients)]

    async def _client(self) -> None:
        while not self._stop.is_set() and sum(self.statuses.values()) < self._limit:
            started = time.monotonic()
            try:
                async with self.http.get(self.url) as resp:
                    body = await resp.json(content_type=None)
                    self.statuses[resp.status] += 1
                    if resp.status == 200:
                        self.nodes[body["node"]] += 1
            except aiohttp.ClientError:
                self.statuses[0] += 1
            self.latencies.append((started, time.monotonic() - started))

    async def stop(self) -> Counter[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.statuses

    def p99_since(self, since: float) -> float:
        recent = sorted(d for t, d in self.latencies if t >= since)
        return recent[int(len(recent) * 0.99)] if recent else 0.0


async def test_a_node_reporting_warn_is_drained_at_its_first_warn_probe(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], health=FAST)
    load = Load(http, f"{gw.traffic_url}/x")
    await wait_for(lambda: sum(load.statuses.values()) > 30)
    node = gw.cluster.get("node-2")
    nodes[1].fault(health="warn")
    await wait_for(lambda: node.state is NodeState.WARNING and not node.serving, timeout=3)
    warn_probes = sample(gw, "hagw_health_checks_total", node="node-2", result="warn")
    assert warn_probes == 1  # drained by the first probe that saw it: within one interval
    assert node.reason.startswith("auto-drained: health endpoint reports warn")
    served_before = load.nodes["node-2"]
    await asyncio.sleep(0.3)
    assert load.nodes["node-2"] - served_before <= 4  # at most what was already in flight
    statuses = await load.stop()
    assert set(statuses) == {200}
    kinds = [e.kind for e in gw.events.since(node="node-2")]
    assert "node.auto_drain" in kinds


async def test_the_x_health_status_header_counts_too(backends: Any, gateway: Any) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], health=FAST)
    node = gw.cluster.get("node-3")
    nodes[2].fault(health_header="warn")
    await wait_for(lambda: node.state is NodeState.WARNING)
    nodes[2].fault(health_header="fail")
    await wait_for(lambda: node.state is NodeState.UNHEALTHY)
    assert "reports fail" in node.reason


async def test_a_slow_node_is_drained_under_load_and_p99_recovers(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes],
                       health={**FAST, "path": "/health?fast=1"},  # live traffic must tell
                       warning={"window": "3s", "min_requests": 10, "latency_p95": "250ms",
                                "probe_latency": "5s"})
    load = Load(http, f"{gw.traffic_url}/x", clients=6)
    await wait_for(lambda: sum(load.statuses.values()) > 60)
    node = gw.cluster.get("node-1")
    nodes[0].fault(latency_ms=300)
    began = time.monotonic()
    await wait_for(lambda: node.state is NodeState.WARNING and not node.serving, timeout=5)
    assert "p95 latency" in node.reason
    recovered_from = time.monotonic() + 0.5
    await asyncio.sleep(1.5)
    statuses = await load.stop()
    assert set(statuses) == {200}
    assert load.p99_since(recovered_from) < 0.2  # node-1's 300ms no longer in the tail
    assert time.monotonic() - began < 10


async def test_a_hung_node_is_unhealthy_fast_and_its_requests_are_retried(
        node_processes: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    procs = node_processes(3)
    gw = await gateway([p.url for p in procs], health=FAST,
                       timeouts={"request": "3s"},
                       retries={"per_try_timeout": "500ms",
                                "on": ["connect-failure", "reset", "timeout", "503"]})
    load = Load(http, f"{gw.traffic_url}/x", clients=6)
    await wait_for(lambda: sum(load.statuses.values()) > 60)
    node = gw.cluster.get("node-2")
    procs[1].stop_signal()  # SIGSTOP: connections open, nothing answers
    stopped = time.monotonic()
    # First failing probe within one interval, then back-to-back: timeout x threshold.
    await wait_for(lambda: node.state is NodeState.UNHEALTHY, timeout=0.2 + 0.3 * 2 + 1.0)
    assert "probe timeout" in node.reason
    await asyncio.sleep(0.5)
    statuses = await load.stop()
    procs[1].cont()
    assert set(statuses) <= {200, 504}
    assert statuses[200] > 100
    slowest = max(d for t, d in load.latencies if t >= stopped - 0.1)
    assert slowest < 3.0  # held requests were rescued (or 504) within the request timeout
    # Stall detection saw the silence long before the 500 ms per-try timeout, and sent the
    # held GETs to other nodes too (a hedge), rather than abandoning and retrying them.
    assert sample(gw, "hagw_upstream_hedges_total", node="node-2", reason="stall") > 0


async def test_two_warning_nodes_one_drained_one_kept_by_the_floor(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], health=FAST, min_healthy="50%")
    nodes[0].fault(health="warn")
    n1 = gw.cluster.get("node-1")
    await wait_for(lambda: n1.warning_drained)
    nodes[1].fault(health="warn")
    n2 = gw.cluster.get("node-2")
    await wait_for(lambda: n2.state is NodeState.WARNING)
    assert n1.warning_drained and not n1.serving
    assert n2.serving and not n2.warning_drained
    assert "below min_healthy=2" in n2.reason
    async with http.get(f"{gw.admin_url}/nodes/node-2") as resp:
        snap = await resp.json()
    assert snap["effective_weight"] == pytest.approx(0.25)
    assert sample(gw, "hagw_drains_refused_total", node="node-2") == 1
    seen: Counter[str] = Counter()
    for _ in range(50):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            seen[(await resp.json())["node"]] += 1
    assert seen["node-1"] == 0 and seen["node-3"] > 3 * seen["node-2"] > 0
    events = [e for e in gw.events.since(kind="node.drain_refused")]
    assert events and events[0].node == "node-2"


async def test_recovered_node_is_readmitted_only_after_verification_and_ramps(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes],
                       health={**FAST, "verify": {"path": "/ready"}},
                       slow_start={"window": "3s", "min_weight": "10%"})
    node = gw.cluster.get("node-1")
    nodes[0].fault(health="fail", ready=False)
    await wait_for(lambda: node.state is NodeState.UNHEALTHY)
    nodes[0].fault(health="ok")  # probes pass, but /ready still says no
    await wait_for(lambda: node.state is NodeState.STARTING and "verify failed" in node.reason)
    await asyncio.sleep(0.5)
    assert node.state is NodeState.STARTING and not node.serving
    nodes[0].fault(ready=True)
    await wait_for(lambda: node.state is NodeState.HEALTHY)
    assert node.ramping
    early = node.weight_at(gw.clock.monotonic())
    assert early < 0.5
    seen: Counter[str] = Counter()
    for _ in range(60):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            seen[(await resp.json())["node"]] += 1
    assert 0 < seen["node-1"] < seen["node-2"]
    await wait_for(lambda: not node.ramping, timeout=5)
    history = [h["to"] for h in node.snapshot()["history"]]
    assert history[-3:] == ["UNHEALTHY", "STARTING", "HEALTHY"]


async def test_tcp_probes_and_body_match(backends: Any, gateway: Any) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], health={**FAST, "mode": "tcp"})
    assert all(n.state is NodeState.HEALTHY for n in gw.cluster)
    await nodes[1].stop()
    node2 = gw.cluster.get("node-2")
    await wait_for(lambda: node2.state is NodeState.UNHEALTHY)
    assert "tcp connect" in node2.reason
    gw2 = await gateway([nodes[0].url], health={**FAST, "body_match": '"status": "nope"'})
    only = gw2.cluster.get("node-1")
    await wait_for(lambda: only.state is NodeState.UNHEALTHY)
    assert "does not match" in only.reason


async def test_a_slow_probe_never_delays_the_others(backends: Any, gateway: Any) -> None:
    nodes = await backends(2)
    nodes[0].fault(latency_ms=2000)  # its /health hangs past the probe timeout
    gw = await gateway([b.url for b in nodes], health={**FAST, "unhealthy_interval": "2s"})
    before = sample(gw, "hagw_health_checks_total", node="node-2", result="success")
    await asyncio.sleep(1.0)
    after = sample(gw, "hagw_health_checks_total", node="node-2", result="success")
    assert after - before >= 3  # node-2 kept its 200ms rhythm


async def test_events_endpoint_shows_transitions_with_reasons(backends: Any, gateway: Any,
                                                              http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], health=FAST)
    nodes[0].fault(health="fail")
    await wait_for(lambda: gw.cluster.get("node-1").state is NodeState.UNHEALTHY)
    async with http.get(f"{gw.admin_url}/events?node=node-1&kind=node") as resp:
        events = (await resp.json())["events"]
    last = events[-1]
    assert last["data"]["to"] == "UNHEALTHY" and "probe got HTTP 503 2/2" in last["message"]
    assert sample(gw, "hagw_node_transitions_total", from_state="HEALTHY", to_state="UNHEALTHY", reason_class="health_check") == 1


def test_traffic_window_percentile_and_expiry() -> None:
    from gateway.clock import FakeClock
    clock = FakeClock()
    window = TrafficWindow(10, clock)
    for _ in range(95):
        window.record(0.01, False)
    for _ in range(5):
        window.record(0.5, True)
    count, errors, hist = window.totals()
    assert (count, errors) == (100, 5)
    assert 0.005 < percentile(hist, 0.5) <= 0.01
    assert 0.4 < percentile(hist, 0.99) <= 0.5
    clock.advance(11)
    assert window.totals()[0] == 0
