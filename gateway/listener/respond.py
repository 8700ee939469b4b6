"""The node's answer, back to the client: one prebuilt write when it is whole in memory,
else streamed as it arrives, with flow control both ways."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.headers import response_head
from gateway.listener import splice
from gateway.listener.connection import WRITE_HIGH_WATER, ClientConnection
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.request import Request
from gateway.router import Exchange, PassiveObserver, UpstreamBroke, declared_length
from gateway.upstream import ConnectionPool, UpstreamConnection, UpstreamError

log = logging.getLogger("hagw.proxy")

_CHUNK_END = b"0\r\n\r\n"


class Responder:
    def __init__(self, pools: Mapping[Node, ConnectionPool], outlier: OutlierDetector,
                 passive: PassiveObserver, stream_idle: float) -> None:
        self.pools = pools
        self.outlier = outlier
        self.passive = passive
        self.stream_idle = stream_idle
        self.loop: asyncio.AbstractEventLoop | None = None

    async def respond(self, ex: Exchange, request: Request, conn: ClientConnection,
                      up: UpstreamConnection, node: Node, extra: bytes,
                      replaced: frozenset[bytes] = frozenset()) -> tuple[int, bool]:
        """Send ``up``'s answer to the client; ``extra`` are header lines to add, in place
        of the node's of those names (``replaced``). Returns the status and whether the
        client connection may stay open."""
        pool = self.pools[node]
        status = up.status
        keep_alive = conn.keep_alive(request)
        http10 = request.version == "1.0"
        try:
            if up.complete:
                # The whole answer is here: one prebuilt write (the common, fast case).
                body = up.take_buffered()
                pool.release(up)
                if ex.method == "HEAD" or status in (204, 304) or status < 200:
                    length = declared_length(up.headers) if ex.method == "HEAD" else None
                    body = b""
                else:
                    length = len(body)
                conn.write(response_head(status, up.headers, ex.request_id,
                                         content_length=length, keep_alive=keep_alive,
                                         http10=http10, extra=extra,
                                         replaced=replaced) + body)
                return status, keep_alive
            return status, await self._stream(ex, request, conn, up, pool, keep_alive, extra,
                                              replaced)
        except (UpstreamError, TimeoutError) as exc:
            # Too late for an error status: cut the client connection so it sees a failure.
            up.abort()
            # Still the node's failure: outlier detection and the warning detector count it.
            self.outlier.failure(node, "reset")
            self.passive.record(node.name, 0.0, True)
            log.warning("node %s failed mid-response (%s); closing the client connection",
                        node.name, exc)
            if conn.transport is not None:
                conn.transport.abort()
            raise UpstreamBroke(str(exc)) from None
        except BaseException:
            up.abort()
            raise
        finally:
            node.release()

    async def _splice(self, conn: ClientConnection, client: int, up: UpstreamConnection,
                      pool: ConnectionPool, count: int) -> None:
        """The last ``count`` bytes of the body, spliced to the client's socket ``client``;
        the node's connection closes."""
        assert self.loop is not None
        loop, signal = self.loop, pool.signal

        def heard() -> None:
            signal.heard = loop.time()  # stall detection hears the node as it streams

        node = up.hand_over()
        try:
            await splice.relay(node, client, count, node_idle=self.stream_idle,
                               client_idle=conn.state.limits.client_send_timeout,
                               heard=heard)
        except ConnectionResetError:
            if conn.transport is not None:  # gone or not reading: cut, as drain() does
                conn.transport.abort()
            raise
        finally:
            up.close()
        conn.bytes_out += count

    async def _stream(self, ex: Exchange, request: Request, conn: ClientConnection,
                      up: UpstreamConnection, pool: ConnectionPool, keep_alive: bool,
                      extra: bytes, replaced: frozenset[bytes]) -> bool:
        """A body still arriving: forward it as it comes, whatever has arrived coalesced
        into one vectored write, with flow control both ways (the node is paused while the
        client is slow; a client that reads nothing for client_send_timeout is cut)."""
        declared = declared_length(up.headers)
        http10 = request.version == "1.0"
        chunked = declared is None and not http10
        if declared is None and http10:
            keep_alive = False  # an HTTP/1.0 client: the end of the body is the close
        conn.write(response_head(up.status, up.headers, ex.request_id, content_length=declared,
                                 keep_alive=keep_alive, http10=http10, extra=extra
                                 + (b"Transfer-Encoding: chunked\r\n" if chunked else b""),
                                 replaced=replaced))
        loop = self.loop or asyncio.get_running_loop()
        self.loop = loop
        # A long body with a length, plain TCP both ways: the kernel can move the rest.
        client = (conn.splice_fd() if splice.AVAILABLE and pool.ssl is None
                  and ex.method != "HEAD" else None)
        while chunk := await up.read_chunk(loop.time() + self.stream_idle):
            # Whatever else arrived meanwhile goes out in the same (vectored) write.
            parts = [chunk, *up.take_chunks()]
            if chunked:
                conn.writelines((b"%x\r\n" % sum(map(len, parts)), *parts, b"\r\n"))
            else:
                conn.writelines(parts)
            if conn.unsent > WRITE_HIGH_WATER:
                await conn.drain()
            elif client is not None and declared is not None and conn.unsent == 0 \
                    and not up.complete and declared - up.body_seen >= splice.SPLICE_MIN:
                # Everything received went out, and nothing waits in the client's buffer:
                # the rest goes socket to socket.
                await self._splice(conn, client, up, pool, declared - up.body_seen)
                return keep_alive
        if chunked:
            conn.write(_CHUNK_END)
        pool.release(up)
        return keep_alive
