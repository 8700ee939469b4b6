"""One request on its way through the router: what is known of it, and how it can fail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.node import Node


class BodySource(Protocol):
    """Where a streamed request body comes from (the client's connection)."""

    async def read(self) -> bytes:
        """The next part of the body; b"" at its end. Raises ClientBodyError."""


class NoNode(Exception):
    """No node may take the request."""


class TryTimeout(TimeoutError):
    """One attempt got no answer within ``retries.per_try_timeout`` (the request's own
    deadline had not passed). The message, which the client sees, says why no retry
    followed; ``str()`` names the node too (for the log)."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.public = message
        self.node = node

    def __str__(self) -> str:
        return f"{self.node}: {self.public}"


class BodyTooLarge(Exception):
    pass


class UpstreamBroke(ConnectionResetError):
    """The node failed after the response had started; the client connection is cut."""


class ClientBodyError(Exception):
    """The client's body broke off, stalled or was malformed: answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Exchange:
    """What the router knows about one request while it tries nodes: a live client request
    (its body buffered in ``body`` or streamed from ``source``), or a queued write being
    replayed (``body`` whole)."""

    request_id: str
    method: str
    #: Path and query as received.
    target: str
    raw_headers: Sequence[tuple[bytes, bytes]]
    client_ip: str
    scheme: str
    body: bytes | None
    length: int | None
    chunked: bool
    idempotent: bool
    source: BodySource | None = None
    #: loop.time() by which the node's response headers must have arrived (retries included).
    deadline: float = float("inf")
    tried: list[Node] = field(default_factory=list)
    #: A replayed write goes back to the node that got it before, if that node serves:
    #: a backend that remembers Idempotency-Keys per node then drops the repeat.
    prefer: str | None = None
    #: Awaited with the chosen node just before the first byte is sent (the replay
    #: records where the entry goes, durably, before it goes).
    before_send: Callable[[Node], Awaitable[None]] | None = None
    body_consumed: bool = False
    #: The peer is a trusted proxy, or this is a replay of what the gateway recorded: its
    #: forwarding headers are believed (gateway.forwarding).
    trusted: bool = False
    #: Why the gateway answered itself (for metrics): "no_node", "timeout", "upstream"...
    failure: str | None = None

    @property
    def replayable(self) -> bool:
        return self.body is not None or not self.body_consumed

    def __repr__(self) -> str:
        return (f"<Exchange {self.method} {self.target} {self.request_id} "
                f"tried={[n.name for n in self.tried]}>")


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length a node's answer declares, if any and well formed."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
