"""The write queue holds what clients send during a whole-fleet window, credentials
included, until it is replayed. What it keeps, for how long, where, who may read a
result, and how much of the disk anyone may fill (issue 16, items 5, 6 and 9).

Real gateways on loopback with a recording node; queue files opened as an attacker with
a shell on the machine would (sqlite3, raw bytes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.maintenance import Phase
from gateway.queue.store import ClientOverQuota, Entry, QueueFull, QueueLimits, SqliteQueue
from gateway.router import NoNode, TryTimeout
from gateway.upstream import ConnectFailure
from monitor.maintenance.replay import public_error
from tests.conftest import auth, wait_for

QUEUE = {"queue_routes": [{"method": "POST", "path": "/orders"}], "verify_timeout": "10s"}
SECRET = "Bearer s3cret-token-of-alice"


@dataclass
class Recorder:
    """A node that records every write's headers and answers with a cookie of its own."""

    url: str = ""
    writes: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def node(serve: Any) -> Recorder:
    recorder = Recorder()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def orders(request: web.Request) -> web.Response:
        recorder.writes.append({k.lower(): v for k, v in request.headers.items()})
        await request.read()
        return web.json_response({"accepted": True}, status=201,
                                 headers={"Set-Cookie": "session=for-the-client-only"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/orders", orders)
    recorder.url = await serve(app)
    return recorder


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # what most systems give a service: files 0644, directories 0755
    try:
        yield
    finally:
        os.umask(old)


async def window(http: aiohttp.ClientSession, gw: Any) -> str:
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(),
                         json={"duration": "1h", "reason": "db upgrade"}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


async def end(http: aiohttp.ClientSession, gw: Any, window_id: str) -> None:
    async with http.post(f"{gw.admin_url}/maintenance/{window_id}/end",
                         headers=auth()) as resp:
        assert resp.status == 200, await resp.text()
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.NORMAL, timeout=15,
                   what="the replay finished")


async def queue_write(http: aiohttp.ClientSession, gw: Any, body: bytes = b'{"n": 1}',
                      **headers: str) -> aiohttp.ClientResponse:
    async with http.post(f"{gw.traffic_url}/orders", data=body, headers=headers) as resp:
        await resp.read()
        return resp


def state_files(state_dir: Path) -> list[Path]:
    return [p for p in state_dir.rglob("*") if p.is_file() or p.is_dir()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def open_modes(state_dir: Path) -> dict[str, str]:
    """Everything under ``state_dir`` (itself included) that its group or others may use."""
    return {str(p): f"{mode(p):o}" for p in [state_dir, *state_files(state_dir)]
            if mode(p) & 0o077}


def found_in_queue_files(state_dir: Path, secrets: list[bytes]) -> list[str]:
    return [f"{secret!r} in {path.name}" for path in sorted(state_dir.glob("queue.db*"))
            for secret in secrets if secret in path.read_bytes()]


# -- item 5: private files, and nothing kept once replayed ------------------------------------


async def test_the_state_directory_and_its_files_are_private(
        umask_022: None, node: Recorder, gateway: Any, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    gw = await gateway([node.url], maintenance=QUEUE)
    await window(http, gw)
    resp = await queue_write(http, gw, Authorization=SECRET)
    assert resp.status == 202
    state_dir = Path(gw.config.state_dir)
    assert mode(state_dir) == 0o700
    names = {p.name for p in state_files(state_dir)}
    assert {"queue.db", "queue.db-wal", "queue.db-shm", "state.db", "state.db-wal"} <= names
    assert open_modes(state_dir) == {}


async def test_a_state_directory_left_open_is_narrowed(
        umask_022: None, node: Recorder, gateway: Any, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    """As an older hagw left it: state_dir 0755, queue.db and state.db 0644."""
    old = tmp_path / "state0"  # the state_dir gateway() gives its first gateway
    old.mkdir(mode=0o755)
    for name in ("queue.db", "state.db"):
        sqlite3.connect(old / name).close()
        (old / name).chmod(0o644)
    gw = await gateway([node.url], maintenance=QUEUE)
    await window(http, gw)
    assert (await queue_write(http, gw)).status == 202
    assert mode(old) == 0o700
    assert open_modes(old) == {}


async def test_a_replayed_write_leaves_no_credential_or_body_on_disk(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway([node.url], maintenance=QUEUE)
    window_id = await window(http, gw)
    body = b'{"card": "4111-1111-1111-1111"}'
    for _ in range(3):
        resp = await queue_write(http, gw, body, Authorization=SECRET,
                                 Cookie="session=alice-cookie-value")
        assert resp.status == 202
    await end(http, gw, window_id)
    assert len(node.writes) == 3
    assert node.writes[0]["authorization"] == SECRET  # the node needed them...
    state_dir = Path(gw.config.state_dir)
    db = sqlite3.connect(state_dir / "queue.db")
    rows = db.execute("SELECT status, headers, body FROM entries").fetchall()
    db.close()
    assert rows == [("done", "[]", b"")] * 3  # ...and the queue keeps none of it
    assert found_in_queue_files(state_dir, [b"s3cret-token-of-alice", b"alice-cookie-value",
                                            b"4111-1111"]) == []


async def test_store_headers_keeps_only_the_listed_headers(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway([node.url], maintenance={**QUEUE, "store_headers": ["Authorization"]})
    window_id = await window(http, gw)
    resp = await queue_write(http, gw, Authorization=SECRET, Cookie="session=x",
                             **{"X-Tenant": "acme"})
    assert resp.status == 202
    await end(http, gw, window_id)
    [sent] = node.writes
    assert sent["authorization"] == SECRET
    assert "cookie" not in sent and "x-tenant" not in sent
    assert sent["x-forwarded-for"] == "127.0.0.1"  # the gateway's own are always there


# -- item 6: the ticket is the client's alone -------------------------------------------------


async def test_the_ticket_reaches_no_node_and_no_log(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gw = await gateway([node.url], maintenance=QUEUE, access_log=True)
    window_id = await window(http, gw)
    async with http.post(f"{gw.traffic_url}/orders", data=b"{}") as resp:
        assert resp.status == 202
        assert resp.headers["Cache-Control"] == "no-store"
        accepted = await resp.json()
    ticket, request_id = accepted["ticket"], accepted["request_id"]
    async with http.get(f"{gw.traffic_url}{accepted['status_url']}") as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    await end(http, gw, window_id)
    [sent] = node.writes
    assert sent["x-request-id"] == request_id  # the id the client was given, not the ticket
    assert ticket not in sent["idempotency-key"]
    assert all(ticket not in value for value in sent.values())
    async with http.get(f"{gw.traffic_url}{accepted['status_url']}") as resp:
        assert resp.status == 200
    logged = [r.getMessage() for r in caplog.records]
    assert any("/_hagw/queue/<ticket>" in line for line in logged)  # the access log
    assert all(ticket not in line for line in logged)
    async with http.get(f"{gw.admin_url}/events?limit=1000") as resp:
        assert ticket not in await resp.text()


async def test_a_stored_result_keeps_no_cookie(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway([node.url], maintenance=QUEUE)
    window_id = await window(http, gw)
    async with http.post(f"{gw.traffic_url}/orders", data=b"{}") as resp:
        status_url = (await resp.json())["status_url"]
    await end(http, gw, window_id)
    async with http.get(f"{gw.traffic_url}{status_url}") as resp:
        done = await resp.json()
        assert "Set-Cookie" not in resp.headers
    assert done["status"] == "done" and done["result"]["status"] == 201
    assert {k.lower() for k in done["result"]["headers"]}.isdisjoint({"set-cookie"})
    db = sqlite3.connect(Path(gw.config.state_dir) / "queue.db")
    [(headers,)] = db.execute("SELECT result_headers FROM entries").fetchall()
    db.close()
    assert "for-the-client-only" not in headers


async def test_a_result_is_shown_only_with_the_credentials_it_was_sent_with(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway([node.url], maintenance=QUEUE)
    window_id = await window(http, gw)
    async with http.post(f"{gw.traffic_url}/orders", data=b"{}",
                         headers={"Authorization": SECRET}) as resp:
        status_url = (await resp.json())["status_url"]
    await end(http, gw, window_id)
    async with http.get(f"{gw.traffic_url}{status_url}") as resp:
        stranger = await resp.json()  # the ticket alone (leaked, say)
    async with http.get(f"{gw.traffic_url}{status_url}",
                        headers={"Authorization": "Bearer someone-else"}) as resp:
        other = await resp.json()
    async with http.get(f"{gw.traffic_url}{status_url}",
                        headers={"Authorization": SECRET}) as resp:
        owner = await resp.json()
    assert stranger["status"] == other["status"] == owner["status"] == "done"
    assert "result" not in stranger and "result" not in other
    assert "result_withheld" in stranger
    assert owner["result"]["status"] == 201


def test_a_failed_tries_reason_names_no_node() -> None:
    """What a ticket's status shows as last_error or error."""
    assert public_error(TryTimeout("no answer within retries.per_try_timeout (1s)",
                                   "node-1")) == \
        "TryTimeout: no answer within retries.per_try_timeout (1s)"
    refused = public_error(ConnectFailure("connect to 10.0.0.7:8443 failed: refused"))
    assert "10.0.0.7" not in refused and refused.startswith("ConnectFailure")
    assert public_error(NoNode()) == "NoNode: no node is available"
    assert "node" not in public_error(TimeoutError()).split(":")[0]


# -- item 9: how much of the disk anyone may fill ---------------------------------------------


async def test_one_client_cannot_fill_the_queue(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    """max_client_queued_bytes: over it, 429 for that client; other clients (here behind
    a trusted proxy, by X-Forwarded-For) still queue. Replayed, the bytes are freed."""
    gw = await gateway([node.url], trusted_proxies=["127.0.0.1"],
                       maintenance={**QUEUE, "max_client_queued_bytes": "8KB",
                                    "max_queued_body": "4KB"})
    window_id = await window(http, gw)
    big = b"x" * 3000
    mallory = {"X-Forwarded-For": "198.51.100.66"}
    statuses = [(await queue_write(http, gw, big, **mallory)).status for _ in range(3)]
    assert statuses == [202, 202, 429]
    async with http.post(f"{gw.traffic_url}/orders", data=big, headers=mallory) as resp:
        assert resp.status == 429 and "Retry-After" in resp.headers
        assert "max_client_queued_bytes" in (await resp.json())["message"]
    alice = {"X-Forwarded-For": "203.0.113.5"}
    assert (await queue_write(http, gw, big, **alice)).status == 202
    assert (await gw.queue.stats()).bytes > 3 * 3000
    await end(http, gw, window_id)
    assert (await gw.queue.stats()).bytes == 0
    await window(http, gw)
    assert (await queue_write(http, gw, big, **mallory)).status == 202


async def test_the_queue_has_a_size_limit(node: Recorder, gateway: Any,
                                          http: aiohttp.ClientSession) -> None:
    gw = await gateway([node.url], maintenance={**QUEUE, "max_queued_bytes": "10KB",
                                                "max_client_queued_bytes": 0})
    await window(http, gw)
    statuses = [(await queue_write(http, gw, b"x" * 3000)).status for _ in range(4)]
    assert statuses == [202, 202, 202, 503]
    async with http.post(f"{gw.traffic_url}/orders", data=b"x") as resp:
        assert resp.status == 503
        assert "max_queued_bytes" in (await resp.json())["message"]


async def test_a_nearly_full_disk_refuses_writes_clearly(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    """More free space asked for than any disk has: every write is refused, nothing kept."""
    gw = await gateway([node.url], maintenance={**QUEUE, "min_free_disk": "1000000000GB"})
    await window(http, gw)
    async with http.post(f"{gw.traffic_url}/orders", data=b"{}") as resp:
        assert resp.status == 503 and "Retry-After" in resp.headers
        assert "disk is nearly full" in (await resp.json())["message"]
    assert (await gw.queue.stats()).queued == 0


async def test_queued_writes_are_rate_limited_per_client(
        node: Recorder, gateway: Any, http: aiohttp.ClientSession) -> None:
    gw = await gateway([node.url], maintenance={
        **QUEUE, "queue_rate_limit": {"rate": 0.001, "burst": 2}})
    await window(http, gw)
    statuses = [(await queue_write(http, gw)).status for _ in range(3)]
    assert statuses == [202, 202, 429]
    assert (await gw.queue.stats()).queued == 2


async def test_the_caps_hold_across_processes_sharing_the_file(tmp_path: Path) -> None:
    """Workers each open the queue file; the caps are checked in the committing
    transaction, so two of them writing at once never exceed them together."""
    limits = QueueLimits(max_bytes=20_000, max_client_bytes=12_000)
    first = SqliteQueue(tmp_path, 1000, limits=limits)
    second = SqliteQueue(tmp_path, 1000, limits=limits)
    await first.open()
    await second.open()

    async def put(queue: SqliteQueue, n: int, client: str) -> str:
        try:
            await queue.enqueue(Entry(f"t{client}{n}", 0.0, "POST", "/orders", [],
                                      b"x" * 1000, f"k{client}{n}", client=client))
        except ClientOverQuota:
            return "client"
        except QueueFull:
            return "full"
        return "ok"

    tries = [(q, n, c) for n in range(15) for c in ("a", "b") for q in (first, second)]
    results = await asyncio.gather(*(put(q, n, c) for q, n, c in tries))
    # Each entry holds 1000 + 2 ("[]") + 7 ("/orders") bytes: 19 fit in 20,000, 11 per client.
    size = 1009
    accepted = [c for (_, _, c), result in zip(tries, results, strict=True) if result == "ok"]
    assert len(accepted) == 19
    assert accepted.count("a") <= 11 and accepted.count("b") <= 11
    stats = await first.stats()
    assert (stats.queued, stats.bytes) == (19, 19 * size)
    for queue in (first, second):
        await queue.close()
