"""SLO accounting: exact counts, windows, budget, burn rate, persistence, and agreement
with what clients saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from gateway.accounting import Accounting
from gateway.clock import FakeClock
from gateway.config.schema import SloConfig
from gateway.store import StateStore
from monitor import slo_store
from monitor.slo import BAD, DAY, EXCLUDED, GOOD, HOUR, SloTracker
from monitor.uptime import NodeUptime


def tracker(**config: Any) -> tuple[SloTracker, FakeClock]:
    clock = FakeClock(start=1_800_000_000.0)
    return SloTracker(SloConfig(**config), clock), clock


@pytest.mark.parametrize(("status", "failure", "kind"), [
    (200, None, GOOD), (404, None, GOOD), (301, None, GOOD), (500, None, BAD), (503, None, BAD),
    (200, "reset", BAD), (504, "timeout", BAD), (503, "maintenance", EXCLUDED),
    (202, "maintenance", EXCLUDED), (499, "client_closed", EXCLUDED), (429, None, GOOD),
])
def test_classification(status: int, failure: str | None, kind: int) -> None:
    slo, _ = tracker()
    assert slo.classify(status, failure) == kind


def test_configured_bad_statuses_and_charged_maintenance() -> None:
    slo, _ = tracker(bad_statuses=(429,), count_maintenance=True)
    assert slo.classify(429, None) == BAD
    assert slo.classify(503, "maintenance") == BAD
    assert slo.classify(202, "maintenance") == EXCLUDED


def test_one_bad_in_ten_thousand_is_exactly_the_budget() -> None:
    slo, clock = tracker()
    for i in range(10_000):
        slo.record(500 if i == 0 else 200)
        if i % 100 == 0:
            clock.advance(30)
    counts = slo.window(30 * DAY)
    assert (counts.good, counts.bad) == (9_999, 1)
    assert slo.availability(30 * DAY) == 0.9999
    assert slo.budget_remaining() == pytest.approx(0.0, abs=1e-9)
    slo.record(503)
    assert slo.budget_remaining() < 0


def test_windows_and_burn_rate_follow_time() -> None:
    slo, clock = tracker()
    for _ in range(99):
        slo.record(200)
    slo.record(502)  # 1% errors: 100x the allowed 0.01%
    assert slo.burn_rate(300) == pytest.approx(100.0)
    clock.advance(2 * HOUR)
    for _ in range(100):
        slo.record(200)
    assert slo.burn_rate(HOUR) == 0.0
    assert slo.availability(HOUR) == 1.0
    assert slo.availability(DAY) == pytest.approx(199 / 200)
    assert slo.burn_rate(6 * HOUR) == pytest.approx((1 / 200) / 0.0001)
    clock.advance(31 * DAY)
    assert slo.window(30 * DAY).total == 0 and slo.budget_remaining() == 1.0


def test_daily_history_has_ninety_days() -> None:
    slo, clock = tracker()
    slo.record(200)
    clock.advance(DAY)
    slo.record(500)
    days = slo.daily()
    assert len(days) == 90
    assert days[-1][1].bad == 1 and days[-2][1].good == 1
    assert days[-1][0] - days[-2][0] == DAY


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    slo, clock = tracker()
    for status in (200, 200, 500):
        slo.record(status)
    clock.advance(2 * HOUR)
    slo.record(200)
    store = StateStore(tmp_path)
    await store.open(slo_store.SCHEMA)
    await slo_store.flush(store, slo)
    await store.close()

    again = SloTracker(SloConfig(), clock)
    store = StateStore(tmp_path)
    await store.open(slo_store.SCHEMA)
    await slo_store.restore(store, again)
    await store.close()
    counts = again.window(DAY)
    assert (counts.good, counts.bad) == (3, 1)
    assert again.daily()[-1][1].total == 4


def test_uptime_splits_planned_and_unplanned() -> None:
    from tests.test_node_state import make_node
    clock = FakeClock()
    node, _ = make_node(clock, boot=True)
    uptime = NodeUptime(clock)
    node.publish = lambda event: uptime.observe(node)
    uptime.observe(node)
    node.probe_passed()
    clock.advance(10)
    node.drain("deploy v2", "deploy")
    clock.advance(5)
    node.restart_checks("redeployed")
    node.undrain("deployed", "deploy")  # STARTING after a planned drain is planned too
    clock.advance(2)
    node.probe_passed()
    node.probe_passed()
    clock.advance(10)
    for _ in range(3):
        node.probe_failed("probe timeout")
    clock.advance(3)
    totals = uptime.totals()["node-1"]
    assert totals["serving"] == pytest.approx(20)
    assert totals["planned"] == pytest.approx(7)
    assert totals["unplanned"] == pytest.approx(3)
    states = uptime.states()["node-1"]
    uptime.forget("node-1")  # removed from the config: the counters stop, and keep their value
    clock.advance(60)
    assert uptime.totals()["node-1"] == pytest.approx(totals)
    assert uptime.states()["node-1"] == pytest.approx(states)


async def test_gateway_availability_agrees_with_the_client(backends: Any, gateway: Any,
                                                           http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    nodes[1].fault(error_rate=0.3, error_status=500)
    gw = await gateway([b.url for b in nodes], retries={"attempts": 1},
                       health={"enabled": False}, outlier_detection={"enabled": False})
    good = bad = 0
    for _ in range(200):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            await resp.read()
            if resp.status >= 500:
                bad += 1
            else:
                good += 1
    async with http.get(f"{gw.traffic_url}/missing-but-404-is-fine") as resp:
        good += 1
    assert bad > 0
    counts = gw.slo.window(HOUR)
    assert (counts.good, counts.bad) == (good, bad)
    assert gw.slo.availability(HOUR) == good / (good + bad)
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert f'hagw_slo_requests_total{{result="bad"}} {float(bad)}' in text
    assert f'hagw_sli_availability_ratio{{window="1h"}} {good / (good + bad)}' in text
    assert "hagw_slo_target_ratio 0.9999" in text
    assert 'hagw_node_rotation_seconds_total{node="node-1",status="serving"}' in text
    assert "hagw_cluster_serving_nodes 2.0" in text


def test_metrics_registry_is_per_gateway() -> None:
    ra, rb = CollectorRegistry(), CollectorRegistry()
    a, _b = Accounting(ra), Accounting(rb)
    a.observe_request(200, 0.003)
    a.node("node-1").observe(503, 0.2)
    assert ra.get_sample_value("hagw_requests_total", {"code_class": "2xx"}) == 1.0
    assert rb.get_sample_value("hagw_requests_total", {"code_class": "2xx"}) == 0.0
    assert ra.get_sample_value("hagw_request_duration_seconds_bucket",
                               {"le": "0.005"}) == 1.0
    assert ra.get_sample_value("hagw_request_duration_seconds_bucket",
                               {"le": "0.0025"}) == 0.0
    assert ra.get_sample_value("hagw_upstream_requests_total",
                               {"node": "node-1", "code_class": "5xx"}) == 1.0
