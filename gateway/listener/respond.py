"""The node's answer, back to the client: one prebuilt write when it is whole in memory,
else streamed as it arrives, with flow control both ways."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import HttpVersion11 as HTTP11
from aiohttp import web

from gateway.headers import response_head
from gateway.listener.raw_response import RawResponse
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.router import Exchange, PassiveObserver, UpstreamBroke, declared_length
from gateway.upstream import ConnectionPool, UpstreamConnection, UpstreamError

log = logging.getLogger("hagw.proxy")

_CHUNK_END = b"0\r\n\r\n"
#: Above this much unsent answer, wait for the client before reading more from the node.
_CLIENT_HIGH_WATER = 1024 * 1024


class Responder:
    def __init__(self, pools: Mapping[Node, ConnectionPool], outlier: OutlierDetector,
                 passive: PassiveObserver, stream_idle: float) -> None:
        self.pools = pools
        self.outlier = outlier
        self.passive = passive
        self.stream_idle = stream_idle
        self.loop: asyncio.AbstractEventLoop | None = None

    async def respond(self, ex: Exchange, request: web.BaseRequest, conn: UpstreamConnection,
                      node: Node, extra: bytes) -> web.StreamResponse:
        """Send ``conn``'s answer to the client; ``extra`` are header lines to add."""
        pool = self.pools[node]
        try:
            status = conn.status
            if conn.complete:
                # The whole answer is here: one prebuilt write (the common, fast case).
                body = conn.take_buffered()
                pool.release(conn)
                if ex.method == "HEAD" or status in (204, 304) or status < 200:
                    length = declared_length(conn.headers) if ex.method == "HEAD" else None
                    body = b""
                else:
                    length = len(body)
                keep_alive = request.keep_alive
                head = response_head(
                    status, conn.headers, ex.request_id, content_length=length,
                    keep_alive=keep_alive, http10=request.version < HTTP11, extra=extra)
                return RawResponse(status, head + body, keep_alive=keep_alive)
            return await self._stream(ex, request, conn, pool, extra)
        except (UpstreamError, TimeoutError) as exc:
            # Too late for an error status: cut the client connection so it sees a failure.
            conn.abort()
            # Still the node's failure: outlier detection and the warning detector count it.
            self.outlier.failure(node, "reset")
            self.passive.record(node.name, 0.0, True)
            log.warning("node %s failed mid-response (%s); closing the client connection",
                        node.name, exc)
            if request.transport is not None:
                request.transport.abort()
            raise UpstreamBroke(str(exc)) from None
        except BaseException:
            conn.abort()
            raise
        finally:
            node.release()

    async def _stream(self, ex: Exchange, request: web.BaseRequest, conn: UpstreamConnection,
                      pool: ConnectionPool, extra: bytes) -> web.StreamResponse:
        """A body still arriving: forward it as it comes, written straight to the client's
        transport, whatever has arrived coalesced into one write, with flow control both
        ways (the node is paused while the client is slow)."""
        declared = declared_length(conn.headers)
        keep_alive = request.keep_alive
        http10 = request.version < HTTP11
        chunked = declared is None and not http10
        if declared is None and http10:
            keep_alive = False  # an HTTP/1.0 client: the end of the body is the close
        head = response_head(conn.status, conn.headers, ex.request_id, content_length=declared,
                             keep_alive=keep_alive, http10=http10, extra=extra
                             + (b"Transfer-Encoding: chunked\r\n" if chunked else b""))
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(head)
        loop = self.loop or asyncio.get_running_loop()
        self.loop = loop
        sent = 0
        while chunk := await conn.read_chunk(loop.time() + self.stream_idle):
            # Whatever else arrived meanwhile goes out in the same (vectored) write.
            parts = [chunk, *conn.take_chunks()]
            size = sum(map(len, parts))
            if transport.is_closing():
                raise ConnectionResetError("the client went away")
            if chunked:
                transport.writelines((b"%x\r\n" % size, *parts, b"\r\n"))
            else:
                transport.writelines(parts)
            sent += size
            if transport.get_write_buffer_size() > _CLIENT_HIGH_WATER:
                await request.writer.drain()
        if chunked:
            transport.write(_CHUNK_END)
        pool.release(conn)
        return RawResponse.already_sent(conn.status, sent, keep_alive=keep_alive)
