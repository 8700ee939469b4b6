"""One keep-alive HTTP/1.1 connection to a node, parsed by httptools (llhttp).

This replaces aiohttp's client on the hot path: measured in the README's
Performance section, aiohttp's ClientSession costs about three times what the
rest of a proxied request costs. The connection carries one exchange at a time
and tells its failures apart precisely, because retry safety depends on it:
was anything sent, and did any answer arrive?

Exactly one response per request, as nginx's upstream keepalive does
(``ngx_http_upstream_keepalive_close_handler``): a byte the node sends after a complete
response, or while the connection sits idle in the pool, is a protocol violation. The
connection is closed and never reused, so an extra response (a node that answers twice,
or one desynchronised by a body it ignored) can never become another client's answer.
A connection goes back to the pool only when its parser sits between messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol, cast

import httptools

from gateway.stall import NodeSignal

log = logging.getLogger("hagw.upstream")


class Owner(Protocol):
    """What a connection tells the pool that owns it (the pool imports this module, not
    the other way round)."""

    name: str
    #: Stamped with the loop time of every byte the node sends (stall detection).
    signal: NodeSignal

    def discard(self, conn: UpstreamConnection) -> None:
        """The connection's socket is gone."""

    def close_idle(self) -> None:
        """A reused connection broke before any answer: the idle ones are suspect."""

#: A response head (status line and headers, interim answers included) larger than this
#: is refused with a 502, as Envoy's max_response_headers_kb (60 KiB) and count (100) do.
MAX_RESPONSE_HEAD = 64 * 1024
MAX_RESPONSE_HEADERS = 200
#: Pause reading from the node while this much response body waits for the client.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


_EXPIRED = object()
#: A head wait ended early on purpose: the check time passed, or the node was declared
#: stalled (``interrupt``). The exchange goes on; the router decides what to do.
_WOKEN = object()


def _expire(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_EXPIRED)


def _wake_early(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_WOKEN)


class UpstreamError(Exception):
    """A failure talking to a node. ``sent``: did any request byte reach the socket?"""

    kind = "reset"
    sent = True


class ConnectFailure(UpstreamError):
    kind = "connect-failure"
    sent = False


class PoolOverflow(UpstreamError):
    """The node's connection cap (circuit breaker) is reached; nothing was sent."""

    kind = "overflow"
    sent = False


class UpstreamReset(UpstreamError):
    def __init__(self, message: str, *, sent: bool, reused: bool,
                 answered: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.reused = reused
        #: Had any of the node's answer arrived? (A close before it is a dead keep-alive.)
        self.answered = answered


class InvalidResponse(UpstreamError):
    kind = "protocol"


class _SecondResponse(Exception):
    """Raised inside the parser: a message began after the exchange's response ended."""


class _HeadTooLarge(Exception):
    """Raised inside the parser: the response head is over MAX_RESPONSE_HEAD(ERS)."""


def framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response says where its body ends (Content-Length, or chunked last)."""
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            return True
        if lower == b"transfer-encoding" and value.rsplit(b",", 1)[-1].strip().lower() \
                == b"chunked":
            return True
    return False


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_body", "_body_size", "_body_waiter", "_drain_waiter", "_exc", "_expecting",
        "_head_fed", "_head_size", "_head_waiter", "_interim", "_paused", "_until_close",
        "_write_paused", "body_seen", "closed", "complete", "exchanges", "handed_over",
        "head_only", "headers",
        "idle_since", "keep_alive", "loop", "parser", "pool", "status", "stray", "transport",
    )

    def __init__(self, pool: Owner) -> None:
        self.pool = pool
        # Created by create_connection, so inside the running loop; looked up once.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.exchanges = 0
        #: The node sent bytes nobody asked for (after a complete response, or while idle):
        #: the connection is closed and never reused.
        self.stray = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.keep_alive = True
        self.head_only = False
        self._head_waiter: asyncio.Future[object] | None = None
        self._body: deque[bytes] = deque()
        self._body_size = 0
        #: Body bytes the parser has seen (taken or not).
        self.body_seen = 0
        #: The rest of the body is read from the socket by someone else (``hand_over``).
        self.handed_over = False
        self._body_waiter: asyncio.Future[object] | None = None
        self._exc: BaseException | None = None
        self._interim = False
        self._paused = False
        self._head_size = 0
        #: Bytes received before the final response head was complete.
        self._head_fed = 0
        #: An exchange is on and its response is not complete: only now may bytes arrive.
        self._expecting = False
        #: The response's body ends when the node closes the connection (no framing).
        self._until_close = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.pool.signal.heard = self.loop.time()
        if not self._expecting:
            # Idle in the pool, or its response already complete: nobody asked for these.
            self._protocol_violation(f"{len(data)} bytes arrived while no response was due",
                                     logging.INFO if self.complete else logging.WARNING)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A 101 for a request that never asked to upgrade (this client never does).
            self._fail(InvalidResponse("the node switched protocols (101) for a request "
                                       "that did not ask to upgrade"))
            self.close()
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _SecondResponse):
                self._protocol_violation("a second response followed a complete one")
            elif isinstance(exc.__context__, _HeadTooLarge):
                self._fail(InvalidResponse(f"the node's response head is over "
                                           f"{MAX_RESPONSE_HEAD} bytes or "
                                           f"{MAX_RESPONSE_HEADERS} headers"))
                self.close()
            else:  # pragma: no cover - a bug in a callback
                self._fail(InvalidResponse(f"invalid response from the node: {exc}"))
                self.close()
        except httptools.HttpParserError as exc:
            if self.complete:
                self._protocol_violation(f"bytes after a complete response ({exc})")
            else:
                self._fail(InvalidResponse(f"invalid response from the node: {exc}"))
                self.close()
            return
        if not self.status and self._exc is None:
            # Still no final head: one endless header line or interim answers would
            # otherwise be buffered by the parser without bound.
            self._head_fed += len(data)
            if self._head_fed > MAX_RESPONSE_HEAD:
                self._fail(InvalidResponse(f"the node's response head is over "
                                           f"{MAX_RESPONSE_HEAD} bytes"))
                self.close()

    def _protocol_violation(self, what: str, level: int = logging.WARNING) -> None:
        """Bytes the node had no business sending: the connection is never reused. A
        response already complete is still delivered whole; one still due fails."""
        self.stray = True
        self.keep_alive = False
        if not self.complete:
            self._fail(InvalidResponse(f"invalid response from the node: {what}"))
        log.log(level, "node %s: %s; connection closed, never reused", self.pool.name, what)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if self._until_close and self.status and not self.complete and exc is None:
            # A response without Content-Length or chunked framing ends with the
            # connection (RFC 9112 section 6.3): the close is its end, not a failure.
            self.complete = True
            self._expecting = False
            self.keep_alive = False
            self._wake()
        if not self.complete and self.exchanges > 1 and not self.status:
            self.pool.close_idle()
        if not self.complete:
            sent = self.exchanges > 0
            if self.status:
                err: UpstreamError = UpstreamReset("the node closed the connection mid-response",
                                                   sent=sent, reused=self.exchanges > 1,
                                                   answered=True)
            else:
                err = UpstreamReset(
                    f"the node closed the connection before answering"
                    f"{f' ({exc})' if exc else ''}", sent=sent, reused=self.exchanges > 1)
            self._fail(err)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_RESPONSE_HEAD or len(self.headers) >= MAX_RESPONSE_HEADERS:
            raise _HeadTooLarge()
        self.headers.append((name, value))

    def on_message_begin(self) -> None:
        if self.complete:
            raise _SecondResponse()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            return  # refused in data_received (HttpParserUpgrade), never forwarded
        if 100 <= status < 200:
            # Interim answers (100 Continue, 103 Early Hints) are not forwarded.
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self._until_close = (not self.head_only and status not in (204, 304)
                             and not framed(self.headers))
        if self.head_only:
            # A HEAD answer has no body even if it announces one; llhttp cannot be told,
            # so the exchange ends here and the connection is not reused.
            self.complete = True
            self._expecting = False
            self.keep_alive = False
        self._wake_head()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self._body.append(body)
        self._body_size += len(body)
        self.body_seen += len(body)
        if self._body_size > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.status:
            return  # the 101's (see on_headers_complete)
        self.complete = True
        self._expecting = False
        self._until_close = False
        self._wake()

    # -- wakeups -------------------------------------------------------------------------

    def _wake_head(self) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.complete:
            self._wake_head()

    def _fail(self, exc: BaseException) -> None:
        self._exc = exc
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # -- the exchange API used by the proxy ---------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def begin(self, head_only: bool) -> None:
        self._reset_exchange()
        self.head_only = head_only
        self._expecting = True
        self.exchanges += 1

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise UpstreamReset("the connection to the node is closed", sent=False,
                                reused=self.exchanges > 1)
        transport.write(data)

    async def drain(self) -> None:
        """Wait while the node is not reading what we send (flow control for big bodies)."""
        if self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.closed and self._exc is not None:
            raise self._exc

    async def read_head(self, deadline: float = float("inf"),
                        check_at: float = float("inf")) -> bool:
        """Wait for the response status and headers until ``deadline`` (loop time);
        TimeoutError after it. Returns False, with the exchange still going, if the wait
        ended early: at ``check_at``, or because ``interrupt`` was called."""
        if not self.status and self._exc is None:
            waiter = self._head_waiter = self.loop.create_future()
            try:
                if not await self._wait(waiter, deadline, "no response headers before the "
                                        "deadline", check_at):
                    return False
            finally:
                self._head_waiter = None
        if self._exc is not None and not self.status:
            raise self._exc
        return True

    def interrupt(self) -> None:
        """End a head wait now (its node was declared stalled); the exchange goes on."""
        waiter = self._head_waiter
        if waiter is not None:
            _wake_early(waiter)

    @property
    def waiting_for_head(self) -> bool:
        return self._head_waiter is not None

    async def _wait(self, waiter: asyncio.Future[object], deadline: float, late: str,
                    check_at: float = float("inf")) -> bool:
        """Wait for the protocol to wake ``waiter``; TimeoutError(late) at ``deadline``;
        False if woken early (at ``check_at``, or by ``interrupt``).

        One timer on the waiter is cheaper per request than an asyncio.timeout scope."""
        if check_at < deadline:
            timer: asyncio.TimerHandle | None = self.loop.call_at(check_at, _wake_early, waiter)
        elif deadline != float("inf"):
            timer = self.loop.call_at(deadline, _expire, waiter)
        else:
            timer = None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
        result = waiter.result()
        if result is _EXPIRED:
            raise TimeoutError(late)
        return result is not _WOKEN

    @property
    def early_response(self) -> bool:
        """The node answered while we were still sending the body."""
        return self.status != 0

    def take_buffered(self) -> bytes:
        """All response body received so far (the whole body once ``complete``)."""
        body = self._body
        if not body:
            return b""
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._body_size = 0
        self._resume()
        return data

    def take_chunks(self) -> list[bytes]:
        """Every body part received so far, as they came (no copying)."""
        chunks = list(self._body)
        self._body.clear()
        self._body_size = 0
        self._resume()
        return chunks

    async def read_chunk(self, deadline: float = float("inf")) -> bytes:
        """The next part of the body; b"" once the body is complete. TimeoutError if nothing
        arrives before ``deadline`` (loop time)."""
        while not self._body:
            if self.complete:
                return b""
            await self._more_body(deadline)
        chunk = self._body.popleft()
        self._body_size -= len(chunk)
        self._resume()
        return chunk

    async def wait_complete(self, deadline: float = float("inf")) -> None:
        """Wait until the whole body is buffered (nothing consumed); raises if the node fails
        first. For a small answer the proxy can still retry: the client has seen nothing."""
        while not self.complete:
            await self._more_body(deadline)

    async def _more_body(self, deadline: float) -> None:
        """Until more of the body (or its end, or a failure) arrives."""
        if self._exc is not None:
            raise self._exc
        waiter = self._body_waiter = self.loop.create_future()
        try:
            await self._wait(waiter, deadline, "the node's body stalled")
        finally:
            self._body_waiter = None

    def _resume(self) -> None:
        if self._paused and self._body_size < LOW_WATER and self.transport is not None \
                and not self.handed_over:
            self._paused = False
            self.transport.resume_reading()

    @property
    def reusable(self) -> bool:
        """Back into the pool only between messages: the response complete, the node
        willing, nothing stray heard, no failure."""
        return (self.complete and self.keep_alive and not self.stray and self.usable
                and self._exc is None)

    def hand_over(self) -> int:
        """Stop reading the node's socket for good and hand it over for the rest of the body
        (gateway.listener.splice): its descriptor. Only with no body part left untaken.
        The connection is closed afterwards, never reused: its parser never sees the rest."""
        transport = self.transport
        assert transport is not None and not self.complete and not self._body
        self.handed_over = True
        self.keep_alive = False
        transport.pause_reading()
        return int(transport.get_extra_info("socket").fileno())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("idle" if self.complete or not self.exchanges
                                              else "busy")
        stray = " stray" if self.stray else ""
        return f"<UpstreamConnection {self.pool.name} {state}{stray} exchanges={self.exchanges}>"
