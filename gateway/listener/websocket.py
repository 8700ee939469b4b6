"""WebSocket upgrades, tunnelled both ways, as nginx and Envoy do.

The client's upgrade request goes to a node on a connection of its own; the node's own
handshake answer comes back, whatever it is (a node that does not upgrade that path
answers for itself, and the gateway charges nothing to anyone). After a 101 the bytes
flow both ways untouched, with flow control. The gateway only follows the frame
boundaries (``FrameCursor``), so that when the node drains (or the gateway shuts down)
it can close both sides with 1001 (going away) at a boundary, after a grace period,
and the client reconnects to another node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol, cast

import httptools

from gateway.cluster import Cluster
from gateway.errors import error_response
from gateway.forwarding import FORWARDING, ForwardingHeaders
from gateway.headers import HOP_BY_HOP, connection_tokens
from gateway.node import Node
from gateway.request import Request
from gateway.trace import TraceContext, with_trace

log = logging.getLogger("hagw.websocket")

GOING_AWAY = 1001
#: A node's answer that is not a 101 is relayed whole, up to this size.
_MAX_REFUSAL = 64 * 1024
_HIGH_WATER = 256 * 1024
_SKIP = HOP_BY_HOP | FORWARDING | {b"x-request-id"}


class Client(Protocol):
    """The client connection, as the tunnel sees it (gateway.listener.connection)."""

    transport: asyncio.Transport | None
    remote: str
    tunnel: Any


class FrameCursor:
    """Where one direction of a WebSocket stream is between frames (RFC 6455 section 5.2),
    from the frame headers alone: payloads are skipped, never unmasked or copied."""

    __slots__ = ("_head", "_remaining", "closed")

    def __init__(self) -> None:
        self._head = b""
        self._remaining = 0
        #: A close frame passed this way.
        self.closed = False

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._head

    def advance(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                continue
            head = self._head + data[pos:pos + 14 - len(self._head)]
            size = _header_size(head)
            if size is None or len(head) < size:
                self._head = head  # a header cut across chunks: everything left is in it
                return
            taken = size - len(self._head)
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", head[2:4])[0]
            elif length == 127:
                length = struct.unpack("!Q", head[2:10])[0]
            if head[0] & 0x0F == 0x8:
                self.closed = True
            self._head = b""
            self._remaining = length
            pos += taken


def _header_size(head: bytes) -> int | None:
    """The length of the frame header starting ``head``, or None if not known yet."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if head[1] & 0x80 else 0)


def close_frame(code: int, reason: bytes, *, masked: bool) -> bytes:
    payload = struct.pack("!H", code) + reason[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + body


class _NodeSide(asyncio.Protocol):
    """The connection to the node: first its handshake answer, then tunnel bytes."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head = b""
        self.status = 0
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            self.tunnel.from_node(data)
            return
        self.head += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The 101 head ends at the offset into this chunk; frames may follow.
            offset = len(self.head) - len(data) + upgrade.args[0]
            self.head, rest = self.head[:offset], self.head[offset:]
            self.answered.set_result(rest)
        except httptools.HttpParserError as exc:
            self.answered.set_exception(ConnectionError(f"invalid answer from the node: {exc}"))
        if not self.answered.done() and len(self.head) > _MAX_REFUSAL:
            self.answered.set_exception(ConnectionError("the node's answer is too large"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if self.status == 101:
            return  # the upgrade: data_received takes it from here
        if not self.answered.done():
            self.done = True
            self.answered.set_result(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            if self.status:
                self.answered.set_result(b"")  # an answer delimited by the close
            else:
                self.answered.set_exception(ConnectionError("the node closed the connection"))
        if self.status == 101:
            self.tunnel.node_lost()
        # A refusal (any other answer) is still to be relayed: the client connection stays
        # open until it has been written (WebSocketTunnels.tunnel).

    def pause_writing(self) -> None:
        self.tunnel.pause_client()

    def resume_writing(self) -> None:
        self.tunnel.resume_client()


class Tunnel:
    """One upgraded connection: client bytes to the node, node bytes to the client."""

    def __init__(self, client: Client, node: Node) -> None:
        self.client = client
        self.node = node
        self.upstream: _NodeSide | None = None
        self.to_node = FrameCursor()
        self.to_client = FrameCursor()
        self.finished = asyncio.get_running_loop().create_future()
        self._closing: tuple[int, bytes] | None = None
        self._sent_node = self._sent_client = False

    def __repr__(self) -> str:
        return f"<Tunnel {self.client.remote} <-> {self.node.name}>"

    # -- bytes both ways ----------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        up = self.upstream
        if up is None or up.transport is None or self._sent_node:
            return
        self.to_node.advance(data)
        up.transport.write(data)
        if self._closing is not None and self.to_node.at_boundary:
            self._close_node_side()

    def from_node(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is None or self._sent_client:
            return
        self.to_client.advance(data)
        transport.write(data)
        if self._closing is not None and self.to_client.at_boundary:
            self._close_client_side()

    def pause_client(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_client(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def pause_node(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_node(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def client_lost(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self._finish()

    def node_lost(self) -> None:
        if self.client.transport is not None:
            self.client.transport.close()
        self._finish()

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    # -- going away -----------------------------------------------------------------------

    def go_away(self, reason: bytes = b"going away") -> None:
        """Close both sides with 1001, each at its next frame boundary."""
        if self._closing is not None:
            return
        self._closing = (GOING_AWAY, reason)
        if self.to_client.at_boundary:
            self._close_client_side()
        if self.to_node.at_boundary:
            self._close_node_side()

    def _close_client_side(self) -> None:
        transport = self.client.transport
        if self._closing is None or self._sent_client or transport is None:
            return
        self._sent_client = True
        code, reason = self._closing
        transport.write(close_frame(code, reason, masked=False))

    def _close_node_side(self) -> None:
        up = self.upstream
        if self._closing is None or self._sent_node or up is None or up.transport is None:
            return
        self._sent_node = True
        code, reason = self._closing
        up.transport.write(close_frame(code, reason, masked=True))


#: How a tunnel reaches a node over TLS: the client context and the name for SNI and the
#: certificate check (None, None for a plain http:// node). The data plane answers it
#: from the node's pool, so tunnels and requests use the same settings.
UpstreamTls = Callable[[Node], tuple[ssl.SSLContext | None, str | None]]


def _plain(node: Node) -> tuple[ssl.SSLContext | None, str | None]:
    return None, None


class WebSocketTunnels:
    def __init__(self, cluster: Cluster, *, connect_timeout: float = 5.0,
                 tls: UpstreamTls = _plain) -> None:
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.open: dict[Node, set[Tunnel]] = defaultdict(set)

    def __repr__(self) -> str:
        return f"<WebSocketTunnels open={sum(len(s) for s in self.open.values())}>"

    async def tunnel(self, request: Request, client: Client, rest: bytes,
                     request_id: str, trace: TraceContext | None = None) -> int:
        """Relay the upgrade (carrying ``trace`` to the node as ``traceparent``); returns
        the status the client got."""
        conn = cast(_Sendable, client)
        node = self.cluster.pick()
        if node is None:
            conn.send(error_response(503, "no node is available", request_id, retry_after=1),
                      keep_alive=False)
            return 503
        tunnel = Tunnel(client, node)
        loop = asyncio.get_running_loop()
        url = node.config.url
        node.acquire()
        context, server_name = self.tls(node)
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, up = await loop.create_connection(
                        lambda: _NodeSide(tunnel), url.host, url.port, ssl=context,
                        server_hostname=(server_name or url.host) if context else None)
            except (OSError, TimeoutError):
                conn.send(error_response(502, "the WebSocket upgrade could not reach a node",
                                         request_id), keep_alive=False)
                return 502
            tunnel.upstream = up
            assert up.transport is not None
            up.transport.write(_upgrade_head(request, node, request_id, trace) + rest)
            try:
                leftover = await asyncio.wait_for(asyncio.shield(up.answered),
                                                  self.connect_timeout * 6)
            except (ConnectionError, TimeoutError):
                up.transport.abort()
                conn.send(error_response(502, "the node did not answer the WebSocket upgrade",
                                         request_id), keep_alive=False)
                return 502
            if client.transport is None:
                up.transport.abort()
                return 499
            # The node's own answer, exactly: its 101 (then the tunnel), or its refusal.
            client.transport.write(up.head)
            if up.status != 101:
                up.transport.close()
                return up.status
        finally:
            node.release()
        client.tunnel = tunnel
        self.open[node].add(tunnel)
        try:
            if leftover:
                tunnel.from_node(leftover)
            await tunnel.finished
        finally:
            self.open[node].discard(tunnel)
            client.tunnel = None
            if up.transport is not None:
                up.transport.close()
        return 101

    async def close_node(self, node: Node, grace: float) -> None:
        """Close the node's tunnels with 1001 once ``grace`` has passed."""
        if not self.open.get(node):
            return
        await asyncio.sleep(grace)
        await self._go_away(list(self.open.get(node, ())), b"node draining")

    async def close_all(self, why: str, grace: float) -> None:
        tunnels = [t for sockets in self.open.values() for t in sockets]
        if not tunnels:
            return
        if grace:
            await asyncio.sleep(grace)
        await self._go_away(tunnels, why.encode()[:120])

    async def _go_away(self, tunnels: list[Tunnel], reason: bytes, wait: float = 5.0) -> None:
        for tunnel in tunnels:
            tunnel.go_away(reason)
        pending = [t.finished for t in tunnels if not t.finished.done()]
        if pending:
            await asyncio.wait(pending, timeout=wait)
        for tunnel in tunnels:
            if not tunnel.finished.done():
                tunnel.node_lost()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self.close_all("gateway shutting down", grace=0)


class _Sendable(Protocol):
    def send(self, answer: object, *, keep_alive: bool) -> None: ...


def _upgrade_head(request: Request, node: Node, request_id: str,
                  trace: TraceContext | None = None) -> bytes:
    """The upgrade request for the node: hop-by-hop headers stripped but the upgrade
    itself, the forwarding headers set, the trace context the gateway's."""
    raw = request.raw_headers if trace is None else with_trace(request.raw_headers, trace)
    drop = _SKIP | (connection_tokens(raw) - {b"upgrade"})
    lines = [f"{request.method} {request.target} HTTP/1.1\r\n".encode("latin-1", "replace")]
    upgrade = b"websocket"
    host = b""
    forwarding = ForwardingHeaders()
    for name, value in raw:
        lower = name.lower()
        if lower == b"upgrade":
            upgrade = value
            continue
        if lower in drop:
            if lower in FORWARDING:
                forwarding.take(lower, name, value)
            continue
        if lower == b"host":
            if not value:
                continue
            host = value
        lines.append(name + b": " + value + b"\r\n")
    if not host:
        host = node.host_header
        lines.append(b"Host: " + host + b"\r\n")
    lines += [b"Upgrade: " + upgrade + b"\r\n", b"Connection: Upgrade\r\n"]
    lines += [n + b": " + v + b"\r\n" for n, v in forwarding.fields(
        trusted=request.trusted, client=request.remote, scheme=request.scheme, host=host)]
    lines += [b"X-Request-Id: " + request_id.encode("latin-1", "replace") + b"\r\n", b"\r\n"]
    return b"".join(lines)
