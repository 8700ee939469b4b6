"""Forwarding stored requests (queued writes being replayed) to the nodes: one at a time
through the same routing, retries and pools as live traffic, or pipelined to one node
down a connection of their own (gateway.upstream.pipeline)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.headers import request_head
from gateway.node import Node
from gateway.router.exchange import Exchange, NoNode, UpstreamBroke
from gateway.router.router import Router
from gateway.upstream.pipeline import send_pipelined

#: A stored request: method, target, headers, body and request id.
Stored = tuple[str, str, list[tuple[str, str]], bytes, str]
#: The node's whole answer: status, headers and body.
Whole = tuple[int, list[tuple[str, str]], bytes]


def _raw(headers: list[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    """Stored headers as the router takes them."""
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)


class Forwarder:
    """The control plane's replay sends through this (monitor.ports.Forwarder)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, request_id: str,
                      max_answer: int = 10 * 1024 * 1024, *, prefer: str | None = None,
                      before_send: Callable[[Node], Awaitable[None]] | None = None,
                      ) -> Whole:
        """Send a stored request through the same routing, retries and pools as live traffic,
        and return the node's whole answer. Raises UpstreamError, NoNode or TimeoutError."""
        ex = Exchange(request_id, method, target, _raw(headers), "", "http", body, len(body),
                      False, self.router.idempotent(method, any(
                          k.lower() == "idempotency-key" for k, _ in headers)),
                      prefer=prefer, before_send=before_send, trusted=True)
        conn, node = await self.router.send(ex)
        pool = self.router.pools[node]
        try:
            chunks = [conn.take_buffered()]
            size = len(chunks[0])
            async with asyncio.timeout(self.router.config.timeouts.stream_idle):
                while (chunk := await conn.read_chunk()):
                    size += len(chunk)
                    if size > max_answer:
                        raise UpstreamBroke(f"answer larger than {max_answer} bytes")
                    chunks.append(chunk)
            status = conn.status
            answer = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in conn.headers]
            pool.release(conn)
            return status, answer, b"".join(chunks)
        except BaseException:
            conn.abort()
            raise
        finally:
            node.release()

    async def pipeline(self, node_name: str, requests: list[Stored], window: int, *,
                       stop_on: frozenset[int] = frozenset(),
                       max_answer: int = 10 * 1024 * 1024) -> tuple[list[Whole], int, str]:
        """Send ``requests`` to one node, pipelined on a new connection (at most ``window``
        ahead of the answers; none after an answer in ``stop_on``). Returns its whole
        answers in order (a prefix of the requests), how many requests were sent, and why
        the rest got none ("" if none is missing). Raises NoNode if the node does not
        serve, ConnectFailure if nothing was sent. Each answer counts for the node as a
        try of live traffic does."""
        router = self.router
        node = router.cluster.get(node_name)
        if node is None or not node.serving:
            raise NoNode()
        pool = router.pools[node]
        wire = [request_head(method, target, _raw(headers), client_ip="", scheme="http",
                             node_host=node.host_header, request_id=request_id,
                             content_length=len(body), chunked=False, trusted=True) + body
                for method, target, headers, body, request_id in requests]
        attempts = router.attempts
        loop = asyncio.get_running_loop()
        started = loop.time()
        node.acquire()
        try:
            answers, sent, reason = await send_pipelined(
                pool.host, pool.port, wire, window=window, connect_timeout=pool.connect_timeout,
                idle_timeout=router.config.timeouts.stream_idle, max_answer=max_answer,
                stop_on=stop_on,
                ssl=pool.ssl, server_hostname=pool.server_hostname)
        finally:
            node.release()
        now = loop.time()
        each = (now - started) / max(1, len(answers))
        bound = router.accounting.node(node.name)
        if answers:
            pool.signal.answered(each, now)
        for answer in answers:
            bound.observe(answer.status, each)
            attempts.passive.record(node.name, each, answer.status >= 500)
        if len(answers) < sent:  # sent, and no answer
            bound.error()
            attempts.passive.record(node.name, each, True)
        return [(a.status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in a.headers],
                 a.body) for a in answers], sent, reason
