"""Maintenance windows: schedule, announcements, maintenance mode, the durable queue and
its FIFO replay (in process; the crash tests are in test_maintenance_crash.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.clock import FakeClock
from gateway.maintenance import Phase
from gateway.node import NodeState
from gateway.queue.store import DONE, QUEUED, Entry, QueueFull, SqliteQueue
from monitor.maintenance.schedule import ACTIVE, CANCELLED, ENDED, SCHEDULED, Schedule, iso
from tests.conftest import auth, wait_for

HOUR, DAY = 3600.0, 86400.0
QUEUE = {"queue_routes": [{"method": "POST", "path": "/orders"},
                          {"method": "POST", "path": "/withdrawals/**"}],
         "read_routes": [{"method": "POST", "path": "/search"}],
         "max_queued_body": "1KB", "verify_timeout": "10s",
         # Every client here is one loopback address: the per-client guards are tested in
         # tests/test_queue_limits.py.
         "queue_rate_limit": {"enabled": False}, "max_client_queued_bytes": 0}


# -- the schedule, synchronously -------------------------------------------------------------

def test_schedule_announces_at_lead_times_then_starts_and_ends() -> None:
    clock = FakeClock()
    schedule = Schedule((DAY, HOUR), clock)
    window = schedule.add(clock.time() + 2 * DAY, 45 * 60, "db upgrade")
    seen: list[tuple[str, str, float]] = []

    def run() -> None:
        for due in schedule.due():
            schedule.apply(due)
            seen.append((due.kind, due.key, clock.time()))

    run()
    assert seen == [("announce", "scheduled", clock.time())]
    clock.advance(DAY - 1)
    run()
    assert len(seen) == 1
    assert schedule.next_deadline() == window.start - DAY
    clock.advance(1)
    run()
    assert seen[-1][:2] == ("announce", f"before:{DAY:g}")
    clock.advance(DAY - HOUR)
    run()
    assert seen[-1][:2] == ("announce", f"before:{HOUR:g}")
    clock.advance(HOUR)
    run()
    assert seen[-1][0] == "start" and window.status == ACTIVE
    clock.advance(45 * 60)
    run()
    assert seen[-1][0] == "end" and window.status == ENDED
    assert [k for k, _, _ in seen] == ["announce", "announce", "announce", "start", "end"]


def test_window_times_are_rfc3339_for_any_year() -> None:
    assert iso(1_800_000_000.5) == "2027-01-15T08:00:00Z"
    # Found by the OpenAPI fuzzer: a window from year 6 was shown as "6-10-01T00:00:01Z".
    assert iso(-61954243199.0) == "0006-10-01T00:00:01Z"


def test_late_scheduling_skips_stale_reminders_and_cancel_needs_scheduled() -> None:
    clock = FakeClock()
    schedule = Schedule((DAY, HOUR), clock)
    soon = schedule.add(clock.time() + 30 * 60, 600, "hotfix")
    keys = [d.key for d in schedule.due()]
    assert keys == ["scheduled"]  # no "in 24h" or "in 1h" sent late
    schedule.cancel(soon.id)
    assert soon.status == CANCELLED and schedule.due() == []
    with pytest.raises(ValueError, match="ends in the past"):
        schedule.add(clock.time() - 100, 50, "too late")
    now = schedule.add(clock.time(), 60, "now")
    for due in schedule.due():
        schedule.apply(due)
    assert now.status == ACTIVE
    with pytest.raises(ValueError, match="only a scheduled window"):
        schedule.cancel(now.id)
    assert schedule.end_now(now.id).end == clock.time()


# -- the queue store --------------------------------------------------------------------------

async def test_queue_group_commits_in_arrival_order_and_recovers(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path, capacity=1000)
    await queue.open()
    entries = [Entry(f"t{i}", time.time(), "POST", "/orders", [("A", "b")], b"%d" % i, f"k{i}")
               for i in range(50)]
    stored = await asyncio.gather(*(queue.enqueue(e) for e in entries))
    assert [e.seq for e in stored] == sorted(e.seq for e in stored)
    assert [e.position for e in stored] == list(range(1, 51))
    batch = await queue.next_batch(10, time.time())
    assert [e.ticket for e in batch] == [f"t{i}" for i in range(10)]
    await queue.mark_replaying(batch[0])
    await queue.close()

    again = SqliteQueue(tmp_path, capacity=1000)  # as after a crash
    await again.open()
    assert await again.recover() == 1
    first = (await again.next_batch(1, time.time()))[0]
    assert first.ticket == "t0" and first.status == QUEUED and first.attempts == 1
    first.status, first.result_status, first.result_body = DONE, 201, b"ok"
    await again.finish(first)
    assert (await again.get("t0")).result_status == 201  # type: ignore[union-attr]
    assert await again.position(await again.get("t5")) == 5  # type: ignore[arg-type]
    stats = await again.stats()
    assert (stats.queued, stats.done) == (49, 1)
    assert await again.purge(time.time() + 1) == 1
    await again.close()


async def test_a_full_queue_refuses_instead_of_dropping(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path, capacity=2)
    await queue.open()
    for i in range(2):
        await queue.enqueue(Entry(f"t{i}", 0, "POST", "/", [], b"", f"k{i}"))
    with pytest.raises(QueueFull):
        await queue.enqueue(Entry("t3", 0, "POST", "/", [], b"", "k3"))
    await queue.close()


# -- against a running gateway -------------------------------------------------------------

async def start_window(http: aiohttp.ClientSession, gw: Any, **body: Any) -> dict[str, Any]:
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(),
                         json={"duration": "1h", "reason": "db upgrade", **body}) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def end_window(http: aiohttp.ClientSession, gw: Any, window_id: str) -> None:
    async with http.post(f"{gw.admin_url}/maintenance/{window_id}/end",
                         headers=auth()) as resp:
        assert resp.status == 200, await resp.text()


async def test_whole_fleet_window_503s_reads_and_queues_writes(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], maintenance=QUEUE)
    window = await start_window(http, gw)
    assert gw.maintenance.mode.phase is Phase.ACTIVE
    assert all(n.state is NodeState.MAINTENANCE for n in gw.cluster)

    async with http.get(f"{gw.traffic_url}/item") as resp:
        assert resp.status == 503
        retry_after = int(resp.headers["Retry-After"])
        assert 3590 <= retry_after <= 3600  # the window's end
        body = await resp.json()
        assert body["error"] == "maintenance" and "db upgrade" in body["message"]
    async with http.get(f"{gw.traffic_url}/item", headers={"Accept": "text/html"}) as resp:
        assert resp.status == 503 and "Down for planned maintenance" in await resp.text()
    async with http.post(f"{gw.traffic_url}/search", json={}) as resp:
        assert resp.status == 503  # a read route, whatever its method
    async with http.delete(f"{gw.traffic_url}/orders/1") as resp:
        assert resp.status == 503  # other writes: not accepted
    async with http.post(f"{gw.traffic_url}/orders", data=b"x" * 2000) as resp:
        assert resp.status == 413  # above max_queued_body
    tickets = []
    for i in range(3):
        async with http.post(f"{gw.traffic_url}/orders", json={"n": i},
                             headers={"Idempotency-Key": f"client-{i}"} if i == 0 else {}) as r:
            assert r.status == 202
            data = await r.json()
            assert r.headers["Location"] == data["status_url"]
            assert data["position"] == i + 1
            tickets.append(data["status_url"])
    async with http.post(f"{gw.traffic_url}/withdrawals/acct-7/now", json={"amount": 5}) as r:
        assert r.status == 202
        tickets.append((await r.json())["status_url"])
    async with http.get(f"{gw.traffic_url}{tickets[1]}") as resp:
        status = await resp.json()
        assert status["status"] == "queued" and status["position"] == 2
    assert nodes[0].info.requests + nodes[1].info.requests == 0  # nothing reached a node

    await end_window(http, gw, window["id"])
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.NORMAL, timeout=10)
    writes = nodes[0].info.writes + nodes[1].info.writes
    assert len(writes) == 4
    async with http.get(f"{gw.traffic_url}{tickets[0]}") as resp:
        done = await resp.json()
    assert done["status"] == "done" and done["result"]["status"] == 201
    assert json.loads(done["result"]["body"])["accepted"] is True
    keys = sorted(w["key"] for w in writes)
    assert "client-0" in keys  # the client's own key was kept; others got their ticket id
    async with http.get(f"{gw.traffic_url}/item") as resp:
        assert resp.status == 200
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert 'hagw_queue_entries_total{event="replayed"} 4.0' in text
    assert "hagw_maintenance_active 0.0" in text


async def test_ten_thousand_queued_posts_replay_in_arrival_order(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], maintenance=QUEUE)
    window = await start_window(http, gw)
    accepted: dict[str, int] = {}

    async def client(c: int) -> None:
        for n in range(500):
            body = f"{c}:{n}"
            async with http.post(f"{gw.traffic_url}/orders", data=body) as resp:
                assert resp.status == 202
                accepted[body] = n

    await asyncio.gather(*(client(c) for c in range(20)))
    assert len(accepted) == 10_000
    order = [e.body.decode() for e in await gw.maintenance.queue.next_batch(20_000, 0)]
    await end_window(http, gw, window["id"])
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.NORMAL, timeout=120)
    delivered = [w["body"] for w in nodes[0].info.writes + nodes[1].info.writes]
    # Strict order across the fleet: rebuild the global sequence from the arrival order.
    assert sorted(delivered) == sorted(accepted)
    by_node = [w["body"] for w in nodes[0].info.writes]
    assert by_node == [b for b in order if b in set(by_node)]
    seq = {body: i for i, body in enumerate(order)}
    for node in nodes:
        positions = [seq[w["body"]] for w in node.info.writes]
        assert positions == sorted(positions)
    for c in range(20):  # and every client's own writes arrived in the order it sent them
        mine = [int(b.split(":")[1]) for b in order if b.startswith(f"{c}:")]
        assert mine == sorted(mine)
    stats = await gw.maintenance.queue.stats()
    assert (stats.depth, stats.done, stats.failed) == (0, 10_000, 0)


async def test_live_writes_during_replay_wait_behind_the_queue(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], maintenance=QUEUE)
    window = await start_window(http, gw)
    for i in range(30):
        async with http.post(f"{gw.traffic_url}/orders", data=f"queued-{i}") as resp:
            assert resp.status == 202
    nodes[0].fault(latency_ms=20)  # a slow replay, so a live write arrives during it
    await end_window(http, gw, window["id"])
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.REPLAYING, timeout=10)
    async with http.post(f"{gw.traffic_url}/orders", data="live") as resp:
        assert resp.status == 201  # it waited its turn and got the node's own answer
        assert "X-Queue-Ticket" in resp.headers
    async with http.get(f"{gw.traffic_url}/item") as resp:
        assert resp.status == 200  # reads are served normally during the replay
    bodies = [w["body"] for w in nodes[0].info.writes]
    assert bodies[-1] == "live" and bodies[:30] == [f"queued-{i}" for i in range(30)]


async def test_transient_failures_retry_and_then_fail_without_dropping(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], maintenance={**QUEUE, "max_attempts": 3,
                                                    "retry_base": "10ms", "retry_max": "20ms"},
                       retries={"attempts": 1}, outlier_detection={"enabled": False})
    window = await start_window(http, gw)
    async with http.post(f"{gw.traffic_url}/orders", data="doomed") as resp:
        ticket = (await resp.json())["status_url"]
    nodes[0].fault(error_rate=1.0, error_status=503)
    await end_window(http, gw, window["id"])
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.NORMAL, timeout=10)
    async with http.get(f"{gw.traffic_url}{ticket}") as resp:
        status = await resp.json()
    assert status["status"] == "failed" and status["attempts"] == 3
    assert "node answered 503" in status["error"]
    assert any(e.kind == "queue.failed" for e in gw.events.since())


async def test_node_subset_window_holds_and_readmits_only_those_nodes(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], maintenance=QUEUE,
                       health={"verify": {"path": "/ready"}})
    window = await start_window(http, gw, nodes=["node-2"], reason="kernel patch")
    node2 = gw.cluster.get("node-2")
    assert node2.state is NodeState.MAINTENANCE and "kernel patch" in node2.reason
    assert gw.maintenance.mode.phase is Phase.NORMAL  # traffic flows through the rest
    seen = set()
    for _ in range(10):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            assert resp.status == 200
            seen.add((await resp.json())["node"])
    assert seen == {"node-1", "node-3"}
    await end_window(http, gw, window["id"])
    assert node2.state is NodeState.STARTING  # verified before it gets traffic again
    await wait_for(lambda: node2.state is NodeState.HEALTHY)
    history = [h["to"] for h in node2.snapshot()["history"]]
    assert history[-3:] == ["MAINTENANCE", "STARTING", "HEALTHY"]


class HookServer:
    """Receives webhook, Slack and Alertmanager posts."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.fail_first = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first:
            self.fail_first -= 1
            return web.Response(status=502)
        self.received.append((request.path, await request.json()))
        return web.Response(status=200)


@pytest.fixture
async def hooks(serve: Any) -> tuple[HookServer, str]:
    server = HookServer()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    return server, await serve(app)


async def test_announcements_arrive_at_the_right_times(
        backends: Any, gateway: Any, http: aiohttp.ClientSession,
        hooks: tuple[HookServer, str]) -> None:
    server, base = hooks
    server.fail_first = 1  # the first delivery is retried
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], maintenance=QUEUE, notifiers=[
        {"type": "webhook", "url": f"{base}/hook"},
        {"type": "slack", "url": f"{base}/slack"},
        {"type": "alertmanager", "url": f"{base}/am", "events": ["maintenance"]}])
    clock = FakeClock(start=time.time())
    gw.maintenance.clock = gw.maintenance.schedule.clock = clock
    start = clock.time() + 2 * DAY
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(), json={
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "duration": "45m", "reason": "db upgrade"}) as resp:
        window = await resp.json()

    def hook_events() -> list[str]:
        return [body["event"] for path, body in server.received if path == "/hook"]

    await wait_for(lambda: hook_events() == ["maintenance.scheduled"])
    async with http.get(f"{gw.traffic_url}/x") as resp:
        assert "X-Maintenance-Scheduled" not in resp.headers  # more than 24h ahead
    for advance, expected in [(DAY, "maintenance.reminder"), (DAY - HOUR, "maintenance.reminder"),
                              (HOUR, "maintenance.started"), (45 * 60, "maintenance.ended")]:
        clock.advance(advance - 1)
        assert await gw.maintenance.tick() == []  # not a second early
        clock.advance(1)
        await gw.maintenance.tick()
        await wait_for(lambda expected=expected: hook_events()[-1] == expected)
        if expected == "maintenance.reminder":
            async with http.get(f"{gw.traffic_url}/x") as resp:
                assert resp.headers["X-Maintenance-Scheduled"] == \
                    f"{window['start_iso']}/{window['end_iso']}"
    notices = [body for path, body in server.received if path == "/hook"]
    assert [n["title"].split(":")[0] for n in notices] == [
        "Maintenance scheduled", "Maintenance in 1d", "Maintenance in 1h",
        "Maintenance started", "Maintenance ended"]
    assert [n["at"] for n in notices][1] == pytest.approx(start - DAY)
    slack = [body for path, body in server.received if path == "/slack"]
    assert slack[0]["text"].startswith("*Maintenance scheduled: db upgrade*")
    alerts = [body for path, body in server.received if path == "/am/api/v2/alerts"]
    assert alerts[0][0]["labels"]["alertname"] == "HagwMaintenance"
    assert alerts[0][0]["startsAt"].endswith("Z")
    async with http.get(f"{gw.admin_url}/maintenance") as resp:
        summary = await resp.json()
    delivered = [d for d in summary["announcements"] if d["notifier"] == "webhook[0]"]
    assert delivered[0]["attempts"] == 2 and all(d["status"] == "delivered" for d in delivered)


async def test_email_notifier_speaks_smtp(tmp_path: Path) -> None:
    from gateway.config.schema import NotifierConfig
    from monitor.notify import Notice, Notifier
    lines: list[bytes] = []

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            lines.append(line)
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(b"250 queued\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                in_data = True
                writer.write(b"354 go\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(smtp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    notifier = Notifier(NotifierConfig(type="email", smtp_host="127.0.0.1", smtp_port=port,
                                       starttls=False, sender="hagw@example.com",
                                       to=("ops@example.com",)), 0)
    async with aiohttp.ClientSession() as session:
        await notifier.send(session, Notice("maintenance.scheduled", "Maintenance scheduled: "
                                            "db upgrade", "2026-12-01 02:00", time.time()))
    server.close()
    await server.wait_closed()
    text = b"".join(lines).decode()
    assert "rcpt TO:<ops@example.com>" in text.replace("RCPT", "rcpt")
    assert "Subject: [hagw] Maintenance scheduled: db upgrade" in text


async def test_windows_survive_a_restart_and_config_windows_load(
        backends: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    from gateway.app.runtime import Gateway
    from tests.conftest import make_config
    nodes = await backends(2)
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + DAY * 3))
    config = make_config([b.url for b in nodes], tmp_path, maintenance={
        **QUEUE, "windows": [{"start": start, "duration": "30m", "reason": "from config",
                              "nodes": ["node-1"]}]})
    async with Gateway(config) as gw:
        window = await gw.maintenance.schedule_window(time.time() + DAY, 600, "api", ())
        upcoming = {w.reason for w in gw.maintenance.schedule.upcoming()}
        assert upcoming == {"from config", "api"}
        await gw.maintenance.cancel(window.id)
    async with Gateway(config) as again:
        states = {w.reason: w.status for w in again.maintenance.schedule.windows.values()}
        assert states == {"from config": SCHEDULED, "api": CANCELLED}


async def test_replay_results_are_forgotten_after_result_ttl(
        backends: Any, gateway: Any, tmp_path: Path) -> None:
    nodes = await backends(1)
    queue = SqliteQueue(tmp_path / "state0", capacity=10)  # the state_dir gateway() uses
    await queue.open()
    done = []
    for ticket, age in (("old", 2 * HOUR), ("fresh", 60.0)):
        entry = await queue.enqueue(Entry(ticket, time.time(), "POST", "/orders", [], b"",
                                          ticket))
        entry.status, entry.result_status, entry.finished = DONE, 201, time.time() - age
        done.append(entry)
    await queue.finish_many(done)
    await queue.close()
    gw = await gateway([b.url for b in nodes], maintenance={**QUEUE, "result_ttl": "1h"})
    async with asyncio.timeout(5):  # the schedule loop purges at start, then periodically
        while await gw.maintenance.queue.get("old") is not None:
            await asyncio.sleep(0.01)
    assert await gw.maintenance.purge_results() == 0
    assert (await gw.maintenance.queue.get("fresh")).result_status == 201  # type: ignore[union-attr]


async def test_a_write_recovered_after_a_crash_goes_back_to_the_node_it_was_sent_to(
        backends: Any, gateway: Any, tmp_path: Path) -> None:
    nodes = await backends(3)
    queue = SqliteQueue(tmp_path / "state0", capacity=10)  # the state_dir gateway() uses
    await queue.open()
    for i in range(5):
        entry = await queue.enqueue(Entry(f"t{i}", time.time(), "POST", "/orders", [],
                                          b"w%d" % i, f"k{i}"))
        await queue.mark_replaying(entry, "node-3")  # sent to node-3, then the gateway died
    await queue.close()
    gw = await gateway([b.url for b in nodes], maintenance=QUEUE)
    await wait_for(lambda: gw.maintenance.queue.depth == 0, timeout=10)
    # node-3 may already hold them (same keys): only node-3 can drop the repeats.
    assert [w["body"] for w in nodes[2].info.writes] == [f"w{i}" for i in range(5)]
    assert nodes[0].info.writes == [] and nodes[1].info.writes == []


async def test_the_maintenance_page_shows_nothing_but_itself(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    """The HTML 503 a browser gets: a CSP that allows no script or external anything,
    nosniff, no caching, and the reason as text."""
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], maintenance=QUEUE)
    await start_window(http, gw, reason="<script>alert('x')</script> upgrade")
    async with http.get(f"{gw.traffic_url}/item", headers={"Accept": "text/html"}) as resp:
        assert resp.status == 503
        page = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page and "&lt;script&gt;" in page
