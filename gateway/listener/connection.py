"""One client connection of the traffic listener: an ``asyncio.Protocol`` on httptools
(llhttp, with none of its lenient flags), the way uvicorn's httptools protocol works.

The connection parses requests, enforces the limits a gateway needs at the edge (header
bytes and count while parsing, a deadline for the head, keep-alive idleness, a deadline
for a client that stops reading), answers what must be refused before routing, and runs
one task per request, one request at a time (pipelined requests wait their turn). Its
state changes in small synchronous methods; the I/O is the transport's.

Idle connections cost little: no task, no buffers, one parser and one timer handle.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, cast

import httptools

from gateway.config.schema import LimitsConfig
from gateway.errors import Answer, error_response
from gateway.headers import date_header, new_request_id, status_line
from gateway.request import Body, BodyBroken, Headers, Request

log = logging.getLogger("hagw.listener")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Above this much unsent answer the writer waits for the client (see ``drain``).
WRITE_HIGH_WATER = 1024 * 1024
#: Requests parsed ahead of the one being answered (pipelining) before reading pauses.
PIPELINE_DEPTH = 16
#: Methods refused before routing: a gateway is no forward proxy (CONNECT), and TRACE
#: would echo the request, cookies and credentials included (nginx answers 405 too).
#: llhttp refuses IIS's TRACK itself (400).
_REFUSED_METHODS = {
    "CONNECT": "CONNECT is not supported: this is a gateway, not a forward proxy",
    "TRACE": "TRACE is not supported: it would echo the request back",
}
#: A Host value (RFC 9110 section 7.2, RFC 3986 section 3.2.2): a registered name or an
#: IPv4 address, or an IP literal in brackets, then an optional port. Empty is allowed.
VALID_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)?"
                        rb"(?::[0-9]{1,5})?")


class Tunnel(Protocol):
    """An upgraded connection's other side (gateway.listener.websocket)."""

    def from_client(self, data: bytes) -> None: ...

    def client_lost(self) -> None: ...

    def pause_node(self) -> None: ...

    def resume_node(self) -> None: ...


class Handler(Protocol):
    async def handle(self, request: Request, conn: ClientConnection) -> bool:
        """Answer ``request`` on ``conn``; True to keep the connection open for the next."""

    async def upgrade(self, request: Request, conn: ClientConnection, rest: bytes) -> None:
        """A protocol upgrade (WebSocket); ``rest``: bytes the client sent after the head."""


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServerState:
    """What every connection of one listener shares (uvicorn gives its protocols a small
    ServerState, not the server)."""

    def __init__(self, handler: Handler, limits: LimitsConfig, *, scheme: str = "http",
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]] | None = None,
                 ) -> None:
        self.handler = handler
        self.limits = limits
        self.scheme = scheme
        #: Runs a request, or a connection's start. Each catches and logs what it raises, so
        #: the spawner need not guard it (a guard would cost a coroutine per request).
        self.spawn = spawn or asyncio.ensure_future
        self.connections: set[ClientConnection] = set()
        #: Shutting down: no new request starts; idle connections close.
        self.closing = False
        #: Connections with a request (or tunnel) running, and events for "none" of them
        #: and for "no connection at all".
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.empty = asyncio.Event()
        self.empty.set()

    def busy(self) -> int:
        return self.running

    def opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)
        self.empty.clear()

    def closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.empty.set()

    def started(self) -> None:
        self.running += 1
        self.idle.clear()

    def finished(self) -> None:
        self.running -= 1
        if not self.running:
            self.idle.set()

    def __repr__(self) -> str:
        return f"<ServerState {len(self.connections)} connections, {self.busy()} busy>"


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_body_paused",
        "_building",
        "_continued",
        "_drain_waiter",
        "_head_fed",
        "_header_bytes",
        "_headers",
        "_queue",
        "_refusal",
        "_started",
        "_timer",
        "_upgrading",
        "_url",
        "_write_paused",
        "bytes_out",
        "current",
        "loop",
        "parser",
        "remote",
        "state",
        "task",
        "transport",
        "tunnel",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = ""
        #: Bytes written to the client on this connection (the access log's "bytes").
        self.bytes_out = 0
        self.task: asyncio.Task[None] | None = None
        #: The request being answered.
        self.current: Request | None = None
        #: After a WebSocket upgrade: where the client's bytes go.
        self.tunnel: Tunnel | None = None
        #: An upgrade request whose head is parsed (llhttp stops right after it).
        self._upgrading: Request | None = None
        #: The current request's task has begun to run.
        self._started = False
        self._queue: deque[Request] = deque()
        #: The request whose head or body is being received (maybe queued, not answered).
        self._building: Request | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        #: Bytes fed to the parser since the current head began (None: not in a head).
        self._head_fed: int | None = None
        self._refusal: Answer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._body_paused = False
        self._continued = False

    def __repr__(self) -> str:
        state = "busy" if self.task is not None else "idle"
        return f"<ClientConnection {self.remote} {state} queued={len(self._queue)}>"

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        self.state.opened(self)
        self._arm(self.state.limits.client_header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.closed(self)
        self._disarm()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        if self._building is not None and self._building.body is not None:
            self._building.body.fail(BodyBroken(400, "the client went away"))
        if self.task is not None:
            self.task.cancel()
        self._queue.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client went away"))
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self._refusal is not None:
            return  # refused: nothing more is read from this client
        if self._head_fed is None and self.task is None and not self._queue:
            # The first byte of a new request on an idle keep-alive connection: from now on
            # its head has client_header_timeout to arrive (slowloris guard).
            self._arm(self.state.limits.client_header_timeout, self._head_too_slow)
        # Between messages a read is fed to the parser a head's worth at a time, so a head
        # that never ends is refused once past the limit, not after a whole read (256 KB)
        # was buffered by llhttp; a body is fed as it comes.
        step = self.state.limits.max_header + 1024
        while data:
            if self._building is None and len(data) > step:
                part, data = data[:step], data[step:]
            else:
                part, data = data, b""
            if not self._feed(part, data):
                return

    def _feed(self, part: bytes, rest: bytes) -> bool:
        """Parse ``part`` (``rest`` follows it); False once the connection is refused or
        upgraded, when nothing more is parsed."""
        began = self._head_fed is None
        if not began:
            self._head_fed = (self._head_fed or 0) + len(part)
        try:
            self.parser.feed_data(part)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade((part[upgrade.args[0]:] if upgrade.args else b"") + rest)
            return False
        except _Refused as refused:
            self._refuse(refused.status, str(refused))
            return False
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:  # pragma: no cover - a bug in a callback
                log.exception("request parsing failed", exc_info=cause)
                self._refuse(400, "malformed request")
            return False
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed request: {exc}")
            return False
        if began and self._head_fed is not None:
            # A head began inside this part: at most ``step`` bytes of it are in there.
            self._head_fed = 0
        limit = self.state.limits.max_header
        if self._head_fed is not None and self._head_fed > limit + 1024:
            # Still inside a head past the limit: do not let the parser buffer more.
            self._refuse(431, f"request headers exceed {limit} bytes")
            return False
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_node()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_node()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        if self._head_fed is None:
            self._head_fed = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.state.limits
        self._header_bytes += len(name) + len(value) + 4
        if len(self._headers) >= limits.max_headers:
            raise _Refused(431, f"more than {limits.max_headers} request headers")
        if self._header_bytes + len(self._url) > limits.max_header:
            raise _Refused(431, f"request headers exceed {limits.max_header} bytes")
        if b"_" in name:
            # nginx's underscores_in_headers off: X_Forwarded_For and friends are dropped,
            # as a node or a framework that maps - and _ alike would read them as the real
            # header (CGI, WSGI and PHP do).
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_fed = None
        if self.task is None and not self._queue:
            self._disarm()
        parser = self.parser
        version = parser.get_http_version()
        method = parser.get_method().decode("ascii", "replace")
        headers = Headers(self._headers)
        if version not in ("1.1", "1.0"):
            raise _Refused(505, f"HTTP/{version or '0.9'} is not supported; use HTTP/1.1")
        refused = _REFUSED_METHODS.get(method)
        if refused is not None:
            raise _Refused(405, refused)
        hosts = headers.count(b"host")
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise _Refused(400, "a request needs exactly one Host header")
        if hosts and not VALID_HOST.fullmatch(headers.get("Host").encode("latin-1")):
            raise _Refused(400, "the Host header is not a valid host[:port]")
        transfer = headers.get("Transfer-Encoding")
        if transfer and version == "1.0":
            # RFC 9112 section 6.1: faulty framing; close afterwards.
            raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
        if transfer and transfer.strip().lower() != "chunked":
            # Anything but exactly "chunked" is a framing a node could read otherwise.
            raise _Refused(400, "Transfer-Encoding must be chunked")
        if transfer and "Content-Length" in headers:
            raise _Refused(400, "Content-Length together with Transfer-Encoding")
        length_text = headers.get("Content-Length")
        length = int(length_text) if length_text else None
        limit = self.state.limits.max_body
        if length is not None and length > limit:
            raise _Refused(413, f"request body of {length} bytes exceeds {limit}")
        chunked = bool(transfer)
        has_body = chunked or bool(length)
        request = Request(
            method, self._url.decode("latin-1"), version, headers, self.remote,
            self.state.scheme, keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(), content_length=length, chunked=chunked,
            body=Body(self) if has_body else None)
        self._building = request if has_body else None
        if request.upgrade:
            self._upgrading = request  # handled by data_received's HttpParserUpgrade
            return
        self._queue.append(request)
        if len(self._queue) > PIPELINE_DEPTH and self.transport is not None:
            self.transport.pause_reading()
        if self.task is None:
            self._next()

    def on_body(self, body: bytes) -> None:
        request = self._building
        if request is not None and request.body is not None:
            request.body.feed(body)

    def on_message_complete(self) -> None:
        request = self._building
        if request is not None and request.body is not None:
            request.body.finish()
        self._building = None

    # -- running requests, one at a time ----------------------------------------------------

    def _next(self) -> None:
        """Start the next parsed request, if any; else wait idly for one."""
        if self.transport is None:
            return
        if not self._queue:
            if self._refusal is not None:
                self._send_refusal()
            elif self.state.closing:
                self.transport.close()
            else:
                self._arm(self.state.limits.client_keepalive, self._idle_too_long)
            return
        request = self._queue.popleft()
        if len(self._queue) <= PIPELINE_DEPTH // 2 and self._refusal is None:
            self.transport.resume_reading()
        self._continued = False
        self._started = False
        self.current = request
        self.state.started()
        self.task = self.state.spawn(self._run(request))

    async def _run(self, request: Request) -> None:
        self._started = True
        keep = False
        try:
            if self.current is request:  # else refused before it could start
                keep = await self.state.handler.handle(request, self)
        except asyncio.CancelledError:
            pass
        except ConnectionError as exc:
            # The client went away, or was cut for not reading (client_send_timeout):
            # its own doing, counted as 499, and no traceback to flood the log.
            log.debug("%r ended early: %s", request, exc)
        except Exception:
            log.exception("answering %r failed", request)
        finally:
            self.task = None
            self.current = None
            self.state.finished()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._refusal is not None:
            self._send_refusal()
            return
        body = request.body
        if not keep or self.state.closing or (body is not None and not body.complete):
            transport.close()  # the rest of a body nobody read is not parsed as a request
            return
        self._next()

    def _upgrade(self, rest: bytes) -> None:
        request, self._upgrading = self._upgrading, None
        if request is None or self.task is not None or self._queue:
            self._refuse(400, "an upgrade must be the only request on its connection")
            return
        self._disarm()
        self.state.started()
        self.task = self.state.spawn(self._run_upgrade(request, rest))

    async def _run_upgrade(self, request: Request, rest: bytes) -> None:
        try:
            await self.state.handler.upgrade(request, self, rest)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("upgrading %r failed", request)
        finally:
            self.task = None
            self.state.finished()
            if self.transport is not None:
                self.transport.close()

    # -- refusals and timers ----------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` once the request being answered (if any) is done, then close.
        Nothing more is read from this connection."""
        if self._refusal is not None:
            return
        request_id = new_request_id()
        log.info("refused a request from %s: %d %s (%s)", self.remote, status, message,
                 request_id)
        self._refusal = error_response(status, message, request_id, close=True)
        request = self._building
        if request is not None and request.body is not None:
            request.body.fail(BodyBroken(400 if status == 400 else status, message))
            if request is self.current and self.task is not None and not self._started:
                # Parsed in the same read as its head: its task has not run yet, so
                # nothing of it went anywhere, and it never will (see _run).
                self.current = None
        self._building = None
        self._queue.clear()
        if self.transport is not None:
            self.transport.pause_reading()
        if self.task is None:
            self._send_refusal()

    def _send_refusal(self) -> None:
        if self._refusal is not None and self.transport is not None:
            self.send(self._refusal, keep_alive=False)
            self.transport.close()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_too_slow(self) -> None:
        self._timer = None
        if self.task is None and self.transport is not None and self._refusal is None:
            timeout = self.state.limits.client_header_timeout
            log.info("closing %s: request headers not complete within %gs", self.remote,
                     timeout)
            self._refuse(408, f"request headers not complete within {timeout:g}s")

    def _idle_too_long(self) -> None:
        self._timer = None
        if self.task is None and self._head_fed is None and self.transport is not None:
            self.transport.close()

    # -- writing answers (the handler's side) ------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def keep_alive(self, request: Request) -> bool:
        """Whether the answer to ``request`` may leave the connection open."""
        return request.keep_alive and not self.state.closing and self._refusal is None

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.bytes_out += len(data)
        transport.write(data)

    def writelines(self, parts: Iterable[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        if not isinstance(parts, list | tuple):
            parts = list(parts)
        self.bytes_out += sum(len(p) for p in parts)
        transport.writelines(parts)

    def splice_fd(self) -> int | None:
        """The socket's descriptor, for a body spliced to it (gateway.listener.splice); None
        over TLS, where the kernel cannot move the bytes."""
        transport = self.transport
        if transport is None or transport.get_extra_info("ssl_object") is not None:
            return None
        sock = transport.get_extra_info("socket")
        return None if sock is None else int(sock.fileno())

    @property
    def unsent(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def drain(self) -> None:
        """Wait while the client does not read what it was sent; past
        ``limits.client_send_timeout`` the connection is cut (nginx's send_timeout), which
        frees the node connection behind it too."""
        if not self._write_paused:
            return
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        waiter = self._drain_waiter = self.loop.create_future()
        timeout = self.state.limits.client_send_timeout
        timer = self.loop.call_later(timeout, self._send_too_slow, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None

    def _send_too_slow(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        log.info("closing %s: it read nothing for %gs", self.remote,
                 self.state.limits.client_send_timeout)
        waiter.set_exception(ConnectionResetError("the client stopped reading"))
        if self.transport is not None:
            self.transport.abort()

    def send(self, answer: Answer, *, keep_alive: bool, head_only: bool = False,
             extra: bytes = b"") -> None:
        """A whole answer of the gateway's own, in one write."""
        out = [status_line(answer.status)]
        for name, value in answer.headers:
            out.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
        if answer.content_type is not None:
            out.append(f"Content-Type: {answer.content_type}\r\n".encode("latin-1"))
        out.append(date_header())
        out.append(b"Content-Length: %d\r\n" % len(answer.body))
        if not keep_alive or answer.close:
            out.append(b"Connection: close\r\n")
        out.append(extra)
        out.append(b"\r\n")
        if not head_only:
            out.append(answer.body)
        self.write(b"".join(out))

    # -- the body's flow control (gateway.request.FlowControl) ---------------------

    def pause_body(self) -> None:
        if not self._body_paused and self.transport is not None:
            self._body_paused = True
            self.transport.pause_reading()

    def resume_body(self) -> None:
        if self._body_paused and self.transport is not None and self._refusal is None:
            self._body_paused = False
            self.transport.resume_reading()

    def reading_body(self) -> None:
        request = self.current
        if request is None or self._continued or not request.expect_continue:
            return
        self._continued = True
        body = request.body
        if body is not None and not body.complete and self.transport is not None:
            self.transport.write(_CONTINUE)
