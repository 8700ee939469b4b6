"""Stall detection and hedging end to end, against raw nodes on loopback that answer only
when the test says so: a hung node is one that accepted a request and holds it."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httptools
import pytest

from gateway.node import NodeState
from tests.conftest import sample, wait_for


class _Conn(asyncio.Protocol):
    def __init__(self, node: RawNode) -> None:
        self.node = node
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.node.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.node.connections.discard(self)
        self.node.closed += 1

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        self.node.requests.append((method, self.url.decode(), self.body))
        self.url = self.body = b""
        if self.node.hang:
            self.node.held.append(self)
        else:
            self.answer()

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            body = self.node.name.encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))


class RawNode:
    """A node that answers its name, or, while ``hang`` is set, holds every request."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hang = False
        self.held: list[_Conn] = []
        self.requests: list[tuple[str, str, bytes]] = []
        self.connections: set[_Conn] = set()
        self.closed = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def release(self) -> None:
        self.hang = False
        held, self.held = self.held, []
        for conn in held:
            conn.answer()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self.server.wait_closed()


@pytest.fixture
async def raw_nodes() -> Any:
    started: list[RawNode] = []

    async def start(*names: str) -> list[tuple[RawNode, str]]:
        out = []
        for name in names:
            node = RawNode(name)
            out.append((node, await node.start()))
            started.append(node)
        return out

    yield start
    for node in started:
        node.release()
        await node.stop()


NO_HEALTH = {"enabled": False}


async def get(http: Any, url: str, method: str = "GET", **kwargs: Any) -> tuple[int, str]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.text()


async def test_requests_held_by_a_stalled_node_are_hedged_and_writes_are_not(
        raw_nodes: Any, gateway: Any, http: Any) -> None:
    (a, url_a), (b, url_b) = await raw_nodes("node-a", "node-b")
    # min_time is long enough for the first GETs to be sent before node-a is suspect.
    gw = await gateway([url_a, url_b], health=NO_HEALTH, timeouts={"request": "3s"},
                       outlier_detection={"stall": {"min_samples": 3, "min_time": "300ms",
                                                    "eject_after": "600ms", "factor": 2,
                                                    "min_requests": 1}})
    for _ in range(10):  # both nodes' latency is learned; the next pick is node-1 again
        assert (await get(http, f"{gw.traffic_url}/warm"))[0] == 200
    a.hang = True
    post = asyncio.create_task(get(http, f"{gw.traffic_url}/orders", "POST", data=b"once"))
    await wait_for(lambda: any(m == "POST" for m, _, _ in a.requests), what="POST on node-a")
    answers: Counter[tuple[int, str]] = Counter()

    async def client() -> None:
        for _ in range(10):
            answers[await get(http, f"{gw.traffic_url}/item")] += 1

    await asyncio.gather(*(client() for _ in range(4)))
    # Every GET answered, by node-b: those node-a held were hedged.
    assert answers == {(200, "node-b"): 40}
    node = gw.cluster.get("node-1")
    await wait_for(lambda: node.state is NodeState.EJECTED, what="node-a ejected as stalled")
    assert "stalled" in node.reason
    assert sample(gw, "hagw_upstream_stalls_total", node="node-1") == 1
    # The POST reached node-a, so it was never sent again: it waits for node-a, and gets
    # the gateway's 504 at the request deadline.
    status, _ = await post
    assert status == 504
    assert [r for r in b.requests if r[0] == "POST"] == []
    assert [r[2] for r in a.requests if r[0] == "POST"] == [b"once"]
    hedged = sample(gw, "hagw_upstream_hedges_total", node="node-1", reason="stall")
    assert hedged >= 1
    assert hedged == sum(1 for m, path, _ in a.requests if m == "GET" and path == "/item")


async def test_a_hedge_that_answers_first_wins_and_the_held_try_is_discarded(
        raw_nodes: Any, gateway: Any, http: Any) -> None:
    (a, url_a), (_b, url_b) = await raw_nodes("node-a", "node-b")
    gw = await gateway([url_a, url_b], health=NO_HEALTH, timeouts={"request": "5s"},
                       retries={"per_try_timeout": "100ms", "hedge_on_per_try_timeout": True},
                       outlier_detection={"stall": {"enabled": False}})
    a.hang = True
    status, body = await get(http, f"{gw.traffic_url}/item")
    assert (status, body) == (200, "node-b")
    assert len(a.held) == 1 and gw.cluster.get("node-1").in_flight == 1
    # The held try is left to end on its own, so a node that was only slow is heard
    # from; when node-a answers at last, the answer is dropped and the connection closed,
    # never returned to the pool.
    a.release()
    await wait_for(lambda: a.closed == 1, what="the held connection to node-a closed")
    assert sample(gw, "hagw_upstream_hedges_total", node="node-1", reason="per_try_timeout") == 1
    assert gw.cluster.get("node-1").in_flight == 0
    assert gw.pools[gw.cluster.get("node-1")].idle == 0


async def test_the_held_try_that_answers_first_wins_and_the_hedge_is_cancelled(
        raw_nodes: Any, gateway: Any, http: Any) -> None:
    (a, url_a), (b, url_b) = await raw_nodes("node-a", "node-b")
    gw = await gateway([url_a, url_b], health=NO_HEALTH, timeouts={"request": "5s"},
                       retries={"per_try_timeout": "100ms", "hedge_on_per_try_timeout": True},
                       outlier_detection={"stall": {"enabled": False}})
    a.hang = b.hang = True
    request = asyncio.create_task(get(http, f"{gw.traffic_url}/item"))
    await wait_for(lambda: len(b.held) == 1, what="the hedge held by node-b")
    a.release()  # the first try answers while the hedge still waits
    assert await request == (200, "node-a")
    await wait_for(lambda: b.closed == 1, what="the hedge's connection to node-b closed")
    assert [gw.cluster.get(n).in_flight for n in ("node-1", "node-2")] == [0, 0]
