"""Forwarding a stored request (a queued write being replayed) through the same routing,
retries and pools as live traffic, and reading the node's whole answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.node import Node
from gateway.router.exchange import Exchange, UpstreamBroke
from gateway.router.router import Router


class Forwarder:
    """The control plane's replay sends through this (monitor.ports.Forwarder)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, request_id: str,
                      max_answer: int = 10 * 1024 * 1024, *, prefer: str | None = None,
                      before_send: Callable[[Node], Awaitable[None]] | None = None,
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send a stored request through the same routing, retries and pools as live traffic,
        and return the node's whole answer. Raises UpstreamError, NoNode or TimeoutError."""
        raw = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
        ex = Exchange(request_id, method, target, raw, "", "http", body, len(body),
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
