"""Incidents: opened by outages on their own, timeline, notes, resolution and the review."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from gateway.clock import FakeClock
from gateway.config.schema import IncidentConfig
from monitor.incident.report import render
from monitor.incident.tracker import IncidentTracker
from tests.conftest import auth, hagw, spawn_node, wait_for, write_cli_config

FAST = {"interval": "100ms", "unhealthy_interval": "100ms", "timeout": "300ms",
        "healthy_threshold": 2, "unhealthy_threshold": 2, "jitter": 0}


def test_tracker_opens_collects_and_resolves() -> None:
    clock = FakeClock()
    tracker = IncidentTracker(IncidentConfig(resolve_after=60, lookback=600), clock)
    tracker.observe({"at": clock.time() - 5, "kind": "node.transition", "node": "node-1",
                     "message": "HEALTHY -> UNHEALTHY", "unplanned": True})
    assert tracker.evaluate({}, [100, 0, 0], 1.0) == []
    changes = tracker.evaluate({"below_min_healthy": "only 1 node serving"}, [100, 0, 0], 1.0)
    incident = changes[0].incident
    assert changes[0].kind == "opened" and incident.title == "Reduced capacity"
    assert incident.causes == ["only 1 node serving"] and incident.status == "investigating"
    assert incident.started_at == clock.time() - 5  # the first sign, not the opening
    assert [e["kind"] for e in incident.timeline] == ["node.transition", "incident.opened"]
    clock.advance(10)
    tracker.evaluate({"all_nodes_out": "every node is out", "below_min_healthy": "x"},
                     [150, 40, 0], 0.5)
    assert incident.severity == "major" and incident.conditions[-1] == "all_nodes_out"
    clock.advance(10)
    assert [c.kind for c in tracker.evaluate({}, [200, 40, 0], 0.4)] == ["monitoring"]
    assert incident.recovered_at == clock.time() and incident.status == "monitoring"
    clock.advance(59)
    assert tracker.evaluate({}, [210, 40, 0], 0.4) == []
    clock.advance(1)
    changes = tracker.evaluate({}, [210, 40, 0], 0.4)
    assert changes[0].kind == "resolved" and tracker.current is None
    impact = incident.impact()
    assert impact["requests_failed"] == 40 and impact["requests_total"] == 150
    assert abs(impact["budget_consumed"] - 0.6) < 1e-9
    assert impact["detection_seconds"] == 5 and impact["recovery_seconds"] == 25
    tracker.note(incident.id, "db failover")
    text = render(incident)
    assert "Requests failed: 40 (26.67% of 150)" in text
    assert "time to detect 5s" in text and "db failover" in text
    assert "## Root cause" in text and "## Follow-ups" in text


def test_a_flapping_condition_does_not_resolve_early() -> None:
    clock = FakeClock()
    tracker = IncidentTracker(IncidentConfig(resolve_after=30), clock)
    tracker.evaluate({"fast_burn": "burning"}, [0, 0, 0], 1.0)
    for _ in range(5):
        clock.advance(20)
        tracker.evaluate({}, [0, 0, 0], 1.0)
        clock.advance(1)
        tracker.evaluate({"fast_burn": "burning"}, [0, 0, 0], 1.0)
    assert tracker.current is not None


async def test_killing_two_of_three_nodes_opens_an_incident_that_closes_on_recovery(
        gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    procs = [spawn_node(f"node-{i + 1}") for i in range(3)]
    try:
        gw = await gateway([p.url for p in procs], health=FAST, retries={"attempts": 1},
                           incidents={"resolve_after": "1s"})
        for _ in range(30):
            async with http.get(f"{gw.traffic_url}/x") as resp:
                assert resp.status == 200
        for p in procs[:2]:
            p.kill()
        await wait_for(lambda: gw.incidents.tracker.current is not None, timeout=5)
        incident = gw.incidents.tracker.current
        assert "below min_healthy=2" in incident.causes[0]
        assert incident.title == "Reduced capacity"
        # The survivor fails exactly five requests while the incident is open.
        async with http.post(f"{procs[2].url}/_fault", json={"error_rate": 1.0,
                                                              "error_status": 500}) as resp:
            assert resp.status == 200
        for _ in range(5):
            async with http.get(f"{gw.traffic_url}/x") as resp:
                assert resp.status == 500
        async with http.post(f"{procs[2].url}/_fault", json={"error_rate": 0.0}) as resp:
            assert resp.status == 200
        for _ in range(15):
            async with http.get(f"{gw.traffic_url}/x") as resp:
                assert resp.status == 200
        async with http.post(f"{gw.admin_url}/incidents/{incident.id}/notes", headers=auth(),
                             json={"text": "two hosts lost power"}) as resp:
            assert resp.status == 201
        for i, p in enumerate(procs[:2]):  # restore them on the same ports
            procs[i] = spawn_node(p.name, port=p.port)
            p.proc.stdout.close()  # type: ignore[union-attr]
        # node-3 turned WARNING for the errors it served and is drained once capacity is back.
        await wait_for(lambda: gw.cluster.serving_primaries() >= 2, timeout=10)
        await wait_for(lambda: gw.incidents.tracker.current is None, timeout=10)
        assert incident.status == "resolved"
        impact = incident.impact()
        assert impact["requests_failed"] == 5 and impact["requests_total"] == 20
        assert impact["budget_consumed"] > 0
        kinds = [e["kind"] for e in incident.timeline]
        assert kinds.count("node.transition") >= 4  # down and back up
        assert kinds[-1] == "incident.resolved"
        messages = " ".join(e["message"] for e in incident.timeline)
        assert "UNHEALTHY" in messages and "two hosts lost power" in messages
        async with http.get(f"{gw.admin_url}/incidents/{incident.id}/report") as resp:
            report = await resp.text()
        assert "Requests failed: 5 (25.00% of 20)" in report
        assert f"{impact['budget_consumed']:.2%} of the SLO window's budget" in report
        assert "| HEALTHY -> UNHEALTHY" in report.replace(" node-1:", "").replace(
            " node-2:", "")
        assert any(e.kind == "incident.opened" for e in gw.events.since())

        # The CLI prints the same review, and the record survived as JSON in state_dir.
        config = tmp_path / "g.yaml"
        write_cli_config(config, [p.url for p in procs], gw.admin_address[1])
        result = await asyncio.to_thread(hagw, "incident", "report", incident.id, config=config)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"# Post-incident review: {incident.title}")
    finally:
        for p in procs:
            p.kill()
            if p.proc.stdout is not None:
                p.proc.stdout.close()


async def test_planned_maintenance_opens_no_incident(backends: Any, gateway: Any,
                                                     http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], health=FAST)
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(),
                         json={"duration": "1h"}) as resp:
        assert resp.status == 201
    await gw.incidents.evaluate()
    assert gw.incidents.tracker.current is None
    assert gw.incidents.conditions() == {}


async def test_a_zero_impact_rolled_back_deploy_opens_no_incident(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    """A rollback nobody noticed is a deploy event, not an outage: no red status page."""
    nodes = await backends(2)
    # The action fails for v2 and works for the rollback to v1.
    gw = await gateway([b.url for b in nodes], health=FAST,
                       deploy={"command": ["sh", "-c", 'test "$0" != v2', "{version}"],
                               "action_attempts": 1, "verify_version": False})
    for _ in range(20):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            assert resp.status == 200
    record = await gw.deploys.begin("v2")
    await wait_for(lambda: not record.active, timeout=10)
    assert record.status.value == "rolled_back"
    await gw.incidents.evaluate()
    assert gw.incidents.tracker.current is None
    assert gw.incidents.tracker.incidents == {}
    assert gw.incidents.conditions() == {}
    async with http.get(f"{gw.admin_url}/status.json") as resp:
        assert (await resp.json())["state"] == "operational"
    assert any(e.kind == "deploy.rolled_back" for e in gw.events.since())


async def test_a_deploy_that_failed_requests_opens_an_incident(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    nodes = await backends(2)
    gate = tmp_path / "go"
    # The action waits for the test to have sent its failing requests, then fails.
    gw = await gateway([b.url for b in nodes], health=FAST, retries={"attempts": 1},
                       deploy={"command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep "
                                           "0.02; done; exit 1"], "action_attempts": 1,
                               "command_timeout": "20s"})
    record = await gw.deploys.begin("v2")
    await wait_for(lambda: any(s.kind == "action" for r in record.nodes.values()
                               for s in r.steps), timeout=5)
    for b in nodes:
        b.fault(error_rate=1.0, error_status=500)
    for _ in range(3):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            assert resp.status == 500
    for b in nodes:
        b.fault(error_rate=0.0)
    gate.touch()
    await wait_for(lambda: not record.active, timeout=10)
    await wait_for(lambda: gw.incidents.tracker.current is not None, timeout=6)
    incident = gw.incidents.tracker.current
    assert incident.conditions == ["deploy_failed"]
    assert incident.title == "Errors during a deploy"
    assert "command exited with 1" in incident.causes[0]
    assert "3 request(s) failed" in incident.causes[0]
