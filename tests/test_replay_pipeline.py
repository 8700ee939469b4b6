"""The pipelined replay (``maintenance.replay_pipeline``): queued writes sent to a node down
one connection, ahead of its answers, against real nodes on 127.0.0.1.

The nodes here are small aiohttp apps that share one log, so the order in which the whole
fleet applied the writes can be checked, and that refuse or cut chosen writes once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from bench.processes import free_port
from gateway.maintenance import Phase
from gateway.upstream import ConnectFailure
from gateway.upstream.pipeline import send_pipelined
from tests.conftest import auth, wait_for

Serve = Callable[[web.Application], Awaitable[str]]


def _request(n: int) -> bytes:
    body = str(n).encode()
    return (b"POST /orders HTTP/1.1\r\nHost: node\r\nIdempotency-Key: k%d\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (n, len(body), body))


class Fleet:
    """What the nodes applied, in the order they applied it, across all of them."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []  # (node, body)
        self.keys: set[str] = set()
        self.repeats = 0
        #: Bodies answered 503 the first time they arrive; bodies whose connection is cut
        #: the first time (before the node applies them).
        self.refuse_once: set[str] = set()
        self.cut_once: set[str] = set()
        #: Bodies answered with Connection: close (the node reads nothing after them).
        self.close_after: set[str] = set()
        #: Requests each node read, pipelined or not.
        self.seen: dict[str, int] = {}

    def app(self, name: str) -> web.Application:
        async def health(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "version": "v1", "node": name})

        async def orders(request: web.Request) -> web.StreamResponse:
            body = (await request.read()).decode()
            self.seen[name] = self.seen.get(name, 0) + 1
            if body in self.cut_once:
                self.cut_once.discard(body)
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("cut by the test")
            if body in self.refuse_once:
                self.refuse_once.discard(body)
                return web.json_response({"error": "busy"}, status=503)
            key = request.headers["Idempotency-Key"]
            if key in self.keys:
                self.repeats += 1
                return web.json_response({"duplicate": True}, status=200)
            self.keys.add(key)
            self.applied.append((name, body))
            answer = web.json_response({"node": name, "body": body}, status=201)
            if body in self.close_after:
                answer.force_close()
            return answer

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/orders", orders)
        return app


# -- the pipelined connection -------------------------------------------------------------

async def test_pipelined_requests_are_answered_in_order_within_the_window(serve: Serve) -> None:
    fleet = Fleet()
    url = await serve(fleet.app("node-1"))
    port = int(url.rsplit(":", 1)[1])
    answers, sent, reason = await send_pipelined(
        "127.0.0.1", port, [_request(n) for n in range(300)], window=16, connect_timeout=2,
        idle_timeout=5)
    assert (sent, reason) == (300, "")
    assert [a.status for a in answers] == [201] * 300
    assert [a.body for a in answers] == [b'{"node": "node-1", "body": "%d"}' % n
                                         for n in range(300)]
    assert [body for _, body in fleet.applied] == [str(n) for n in range(300)]


async def test_a_node_that_closes_or_goes_silent_leaves_the_rest_unanswered(
        serve: Serve) -> None:
    fleet = Fleet()
    port = int((await serve(fleet.app("node-1"))).rsplit(":", 1)[1])
    fleet.close_after = {"40"}
    answers, sent, reason = await send_pipelined(
        "127.0.0.1", port, [_request(n) for n in range(100)], window=32, connect_timeout=2,
        idle_timeout=5)
    # The node answers the 41st with Connection: close and reads nothing after it.
    assert len(answers) == 41 and 41 < sent <= 41 + 32 and "closed the connection" in reason
    assert [body for _, body in fleet.applied] == [str(n) for n in range(41)]

    fleet.cut_once = {"107"}  # the node drops the connection on the 8th of these
    answers, sent, reason = await send_pipelined(
        "127.0.0.1", port, [_request(n) for n in range(100, 120)], window=8,
        connect_timeout=2, idle_timeout=5)
    assert len(answers) == 7 and sent > 7 and "closed the connection" in reason
    assert [body for _, body in fleet.applied][41:] == [str(n) for n in range(100, 107)]

    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    async with silent:
        quiet = silent.sockets[0].getsockname()[1]
        answers, sent, reason = await send_pipelined(
            "127.0.0.1", quiet, [_request(1)], window=4, connect_timeout=2, idle_timeout=0.2)
        for writer in held:
            writer.close()
    assert (answers, sent, reason) == ([], 1, "no answer for 0.2s")


async def test_a_refusal_stops_the_sending_and_the_requests_out_are_answered(
        serve: Serve) -> None:
    fleet = Fleet()
    port = int((await serve(fleet.app("node-1"))).rsplit(":", 1)[1])
    fleet.refuse_once = {"20"}
    answers, sent, reason = await send_pipelined(
        "127.0.0.1", port, [_request(n) for n in range(200)], window=8, connect_timeout=2,
        idle_timeout=5, stop_on=frozenset({503}))
    assert reason == "the node answered 503"
    # Whatever was out when the 503 came is answered; nothing else was sent.
    assert 21 <= sent <= 20 + 8 and len(answers) == sent
    assert answers[20].status == 503
    assert [body for _, body in fleet.applied] == [str(n) for n in range(sent) if n != 20]


async def test_nothing_listening_is_a_connect_failure() -> None:
    try:
        await send_pipelined("127.0.0.1", free_port(), [_request(1)], window=4,
                             connect_timeout=2, idle_timeout=1)
    except ConnectFailure as exc:
        assert not exc.sent
    else:
        raise AssertionError("expected ConnectFailure")


# -- the replay through a gateway ---------------------------------------------------------

QUEUE: dict[str, Any] = {
    "queue_routes": [{"method": "POST", "path": "/orders"}], "verify_timeout": "10s",
    "queue_rate_limit": {"enabled": False}, "max_client_queued_bytes": 0,
    "retry_base": "50ms", "retry_max": "200ms"}


async def _queue_writes(http: aiohttp.ClientSession, gw: Any,
                        count: int) -> tuple[list[str], list[str]]:
    """``count`` writes queued during a window, then the window ended: their bodies in
    arrival order, and their tickets."""
    tickets = []
    async with http.post(f"{gw.admin_url}/maintenance", headers=auth(),
                         json={"duration": "1h", "reason": "db upgrade"}) as resp:
        assert resp.status == 201, await resp.text()
        window = await resp.json()
    for n in range(count):  # one client, one after another: arrival order is n
        async with http.post(f"{gw.traffic_url}/orders", data=str(n)) as resp:
            assert resp.status == 202
            tickets.append((await resp.json())["ticket"])
    async with http.post(f"{gw.admin_url}/maintenance/{window['id']}/end",
                         headers=auth()) as resp:
        assert resp.status == 200
    return [str(n) for n in range(count)], tickets


async def test_pipelined_replay_keeps_the_fleets_arrival_order(
        serve: Serve, gateway: Any, http: aiohttp.ClientSession) -> None:
    fleet = Fleet()
    urls = [await serve(fleet.app(f"node-{i}")) for i in (1, 2)]
    gw = await gateway(urls, maintenance={**QUEUE, "replay_pipeline": 16})
    accepted, _ = await _queue_writes(http, gw, 700)
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.NORMAL, timeout=60)
    # Strict: one global order across both nodes (batches of 256 alternate between them).
    assert [body for _, body in fleet.applied] == accepted
    assert {node for node, _ in fleet.applied} == {"node-1", "node-2"}
    assert fleet.repeats == 0
    stats = await gw.maintenance.queue.stats()
    assert (stats.depth, stats.done, stats.failed) == (0, 700, 0)


async def test_pipelined_replay_retries_refused_and_cut_writes_and_loses_none(
        serve: Serve, gateway: Any, http: aiohttp.ClientSession) -> None:
    fleet = Fleet()
    url = await serve(fleet.app("node-1"))
    depth = 8
    gw = await gateway([url], maintenance={**QUEUE, "replay_pipeline": depth})
    fleet.refuse_once = {"50", "203"}
    fleet.cut_once = {"120"}
    accepted, tickets = await _queue_writes(http, gw, 300)
    await wait_for(lambda: gw.maintenance.mode.phase is Phase.NORMAL, timeout=60)
    applied = [body for _, body in fleet.applied]
    # Nothing lost, nothing applied twice, nothing failed.
    assert sorted(applied, key=int) == accepted and fleet.repeats == 0
    stats = await gw.maintenance.queue.stats()
    assert (stats.depth, stats.done, stats.failed) == (0, 300, 0)
    # A refused write lands after the ones pipelined behind it that the node answered: at
    # most depth - 1 places late. Every other write is in arrival order. A cut connection
    # loses no order: the node read nothing after the cut write.
    for refused in ("50", "203"):
        overtaken = [b for b in applied[:applied.index(refused)] if int(b) > int(refused)]
        assert 0 < len(overtaken) <= depth - 1
    others = [b for b in applied if b not in ("50", "203")]
    assert others == [b for b in accepted if b not in ("50", "203")]
    # Each entry is done with the node's own answer, its pipelined try counted.
    for n, attempts in ((50, 2), (120, 2), (203, 2), (49, 1), (121, 2), (299, 1)):
        entry = await gw.maintenance.queue.get(tickets[n])
        assert entry is not None and entry.status == "done" and entry.result_status == 201
        assert entry.attempts == attempts, (n, entry.attempts)
