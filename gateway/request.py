"""One client request as the traffic listener parsed it: the head, and its body as it
arrives (gateway.listener.connection feeds it)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import unquote

#: Pause reading from the client while this much of a streamed body waits for the node.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024


class BodyBroken(Exception):
    """The body will not come: the client went away, or its framing was bad."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """The raw header pairs as received, with a case-insensitive lookup built once."""

    __slots__ = ("_index", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._index: dict[bytes, bytes] | None = None

    def _lookup(self) -> dict[bytes, bytes]:
        index = self._index
        if index is None:
            index = self._index = {}
            for name, value in self.raw:
                key = name.lower()
                index[key] = index[key] + b", " + value if key in index else value
        return index

    def get(self, name: str, default: str = "") -> str:
        """The value (several joined with ", "), decoded as latin-1, or ``default``."""
        value = self._lookup().get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __contains__(self, name: str) -> bool:
        return name.lower().encode("latin-1") in self._lookup()

    def count(self, name: bytes) -> int:
        lower = name.lower()
        found = 0
        for n, _ in self.raw:  # a plain loop: a generator costs more on every request
            if n.lower() == lower:
                found += 1
        return found

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"<Headers {len(self.raw)}>"


class FlowControl(Protocol):
    """What a body asks of its connection (implemented by ClientConnection)."""

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...

    def reading_body(self) -> None:
        """A reader waits for the body: the time to send 100 Continue if it was asked for."""


class Body:
    """A request body as it arrives: chunks queued by the connection, read by the router
    or a local route. Reading pauses the client while too much is queued."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter", "received")

    def __init__(self, conn: FlowControl) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BodyBroken | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Bytes received so far (for limits).
        self.received = 0

    # -- the connection's side ----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.received += len(data)
        if self._size > BODY_HIGH_WATER:
            self._conn.pause_body()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BodyBroken) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the reader's side --------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._done

    async def read(self) -> bytes:
        """The next part of the body; b"" at its end. Raises BodyBroken."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._conn.reading_body()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size < BODY_LOW_WATER:
            self._conn.resume_body()
        return chunk

    def take(self) -> bytes:
        """Everything queued, without waiting (the whole body once ``complete``)."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.resume_body()
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    def __repr__(self) -> str:
        state = "done" if self._done else "broken" if self._error else "open"
        return f"<Body {self.received} bytes {state}>"


class Request:
    __slots__ = ("_path", "body", "chunked", "client", "content_length", "expect_continue",
                 "headers", "keep_alive", "method", "remote", "scheme", "target", "trusted",
                 "upgrade", "version")

    def __init__(self, method: str, target: str, version: str, headers: Headers,
                 remote: str, scheme: str, *, keep_alive: bool, upgrade: bool,
                 content_length: int | None, chunked: bool, body: Body | None) -> None:
        self.method = method
        #: The request target exactly as sent (path and query, or absolute-form).
        self.target = target
        #: "1.1" or "1.0".
        self.version = version
        self.headers = headers
        #: The peer's address, and whether it is a trusted proxy.
        self.remote = remote
        self.trusted = False
        #: The client's address: the peer's, or behind trusted proxies the one their
        #: X-Forwarded-For names (set by the traffic handler, gateway.forwarding).
        self.client = remote
        self.scheme = scheme
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.content_length = content_length
        self.chunked = chunked
        #: None when the request has no body.
        self.body = body
        self.expect_continue = headers.get("Expect").lower() == "100-continue"
        self._path: str | None = None

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return self.headers.raw

    @property
    def path(self) -> str:
        """The decoded path, without the query (for matching local routes)."""
        path = self._path
        if path is None:
            target = self.target
            if not target.startswith("/"):  # absolute-form: http://host/path?q
                rest = target.split("://", 1)[-1]
                slash = rest.find("/")
                target = rest[slash:] if slash >= 0 else "/"
            path = self._path = unquote(target.split("?", 1)[0])
        return path

    @property
    def has_body(self) -> bool:
        return self.body is not None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version} from {self.remote}>"
