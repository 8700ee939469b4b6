"""HTTP/1.1 pipelining on a connection of its own: requests written ahead of the node's
answers, which are read in the same order (RFC 9112 section 9.3.2).

The maintenance replay sends queued writes this way, instead of a round trip each. A node
reads a connection's requests in order and answers them in order, so the order they were
queued in is the order the node sees. At most ``window`` requests are out unanswered; once
half of them are answered, as many more go in one write, so the node always has work
waiting and neither side pays a system call per request.

The connection is never pooled and never shared with live traffic: a pooled connection
carries exactly one exchange at a time (gateway.upstream.connection). It ends when every
answer is in, when the node closes it (``Connection: close``, a crash), when an answer
breaks the framing, or when the node stays silent for ``idle_timeout``. What it returns
is the answers that arrived whole, a prefix of the requests, and how many requests were
written: the caller knows the rest got no answer (the node may or may not have acted on
those it was sent). An answer with a status in ``stop_on`` (a node refusing work) stops
the sending: the requests already out are answered, no more go.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from dataclasses import dataclass, field
from typing import cast

import httptools

from gateway.upstream.connection import (
    MAX_RESPONSE_HEAD,
    MAX_RESPONSE_HEADERS,
    ConnectFailure,
    framed,
)


@dataclass(slots=True)
class Answer:
    """One whole answer of the node's, to the request at the same index."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class _Partial:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    head_size: int = 0
    body_size: int = 0
    #: No Content-Length and not chunked: the body ends when the connection does.
    until_close: bool = False
    complete: bool = False


class _Refused(Exception):
    """Raised inside a parser callback: the answer breaks a limit."""


class PipelinedConnection(asyncio.Protocol):
    """Sends ``requests`` at most ``window`` ahead of their answers; collects the answers,
    in order."""

    def __init__(self, requests: list[bytes], window: int, max_answer: int,
                 stop_on: frozenset[int] = frozenset()) -> None:
        self.requests = requests
        self.stop_on = stop_on
        #: An answer in ``stop_on`` arrived (why, for the caller): no more requests go.
        self.stopped = ""
        self.expected = len(requests)
        self.window = window
        #: Requests written so far.
        self.sent = 0
        self.max_answer = max_answer
        self.answers: list[Answer] = []
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        #: Set when bytes arrive and when the connection ends.
        self.progress = asyncio.Event()
        self.ended = False
        #: Bytes heard from the node: a slow answer still arriving is not a silent node.
        self.received = 0
        #: Why the connection ended before every answer was in (for the log).
        self.reason = ""
        self._current = _Partial()

    def __repr__(self) -> str:
        return f"<PipelinedConnection {len(self.answers)}/{self.expected} answers" \
               f"{' ended' if self.ended else ''}>"

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.sent = min(self.window, self.expected)
        self.transport.writelines(self.requests[:self.sent])

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        self.received += len(data)
        self.progress.set()
        try:
            self.parser.feed_data(data)
            if not self.ended:
                self._refill()
        except httptools.HttpParserCallbackError as exc:
            self._end(f"answer refused: {exc.__context__ or exc}")
        except httptools.HttpParserUpgrade:
            self._end("the node switched protocols (101)")
        except httptools.HttpParserError as exc:
            self._end(f"invalid answer from the node: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        partial = self._current
        if partial.status and partial.until_close and not partial.complete \
                and not self.ended and exc is None:
            # An answer without framing ends with the connection (RFC 9112 section 6.3).
            self.on_message_complete()
        self._end(f"the node closed the connection{f' ({exc})' if exc else ''}")

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Partial()

    def on_header(self, name: bytes, value: bytes) -> None:
        partial = self._current
        partial.head_size += len(name) + len(value) + 4
        partial.headers.append((name, value))
        if partial.head_size > MAX_RESPONSE_HEAD or len(partial.headers) > MAX_RESPONSE_HEADERS:
            raise _Refused(f"head over {MAX_RESPONSE_HEAD} bytes or {MAX_RESPONSE_HEADERS} "
                           "headers")

    def on_headers_complete(self) -> None:
        partial = self._current
        partial.status = self.parser.get_status_code()
        partial.until_close = not framed(partial.headers)

    def on_body(self, body: bytes) -> None:
        partial = self._current
        partial.body_size += len(body)
        if partial.body_size > self.max_answer:
            raise _Refused(f"answer larger than {self.max_answer} bytes")
        partial.body.append(body)

    def on_message_complete(self) -> None:
        partial = self._current
        partial.complete = True
        if 100 <= partial.status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        answers = self.answers
        answers.append(Answer(partial.status, partial.headers, b"".join(partial.body)))
        if partial.status in self.stop_on and not self.stopped:
            self.stopped = f"the node answered {partial.status}"
        if len(answers) == self.expected:
            self._end("")
        elif not self.parser.should_keep_alive():
            self._end(f"the node closed the connection after {len(answers)} answers")
        elif self.stopped and len(answers) == self.sent:
            self._end(self.stopped)

    def _refill(self) -> None:
        """Top the requests in flight up to ``window`` once half of them are answered."""
        sent, window = self.sent, self.window
        if sent < self.expected and sent - len(self.answers) <= window // 2 \
                and not self.stopped and self.transport is not None:
            more = min(self.expected, len(self.answers) + window)
            self.transport.writelines(self.requests[sent:more])
            self.sent = more

    # -- the end ------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        self.progress.set()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.ended = True
        self.reason = self.reason or "aborted"
        self.progress.set()
        if self.transport is not None:
            self.transport.abort()


async def send_pipelined(host: str, port: int, requests: list[bytes], *, window: int,
                         connect_timeout: float, idle_timeout: float,
                         max_answer: int = 10 * 1024 * 1024,
                         stop_on: frozenset[int] = frozenset(),
                         ssl: _ssl.SSLContext | None = None,
                         server_hostname: str | None = None,
                         ) -> tuple[list[Answer], int, str]:
    """Send ``requests`` (each a whole request: head and body) down one new connection,
    at most ``window`` ahead of the answers, and return the answers that came back whole,
    in order, how many requests were written, and why the connection ended early (""
    if every request was answered). Raises ConnectFailure if nothing was sent."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: PipelinedConnection(requests, window, max_answer, stop_on), host, port,
                ssl=ssl,
                server_hostname=(server_hostname or host) if ssl else None)
    except TimeoutError:
        raise ConnectFailure(f"connect to {host}:{port} timed out after "
                             f"{connect_timeout:g}s") from None
    except (OSError, _ssl.SSLError) as exc:
        raise ConnectFailure(f"connect to {host}:{port} failed: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        while not conn.ended:
            conn.progress.clear()
            heard = conn.received
            try:
                async with asyncio.timeout(idle_timeout):
                    await conn.progress.wait()
            except TimeoutError:
                if conn.received == heard:
                    conn.reason = f"no answer for {idle_timeout:g}s"
                    conn.abort()
    except BaseException:
        conn.abort()
        raise
    return conn.answers, conn.sent, conn.reason
