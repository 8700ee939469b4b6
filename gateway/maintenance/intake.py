"""Accepting a write into the durable queue during a whole-fleet window: its body is read
whole (bounded), it is committed to disk, and only then does the client get its 202.

What is stored: the method, the target, the body, and the request's end-to-end headers
(or only ``maintenance.store_headers``), never hop-by-hop ones, ``Content-Length``,
``Expect`` or the client's forwarding headers (the gateway's own take their place, as
the node would have had them). The ticket is the client's credential for the result: it
is not the entry's ``Idempotency-Key`` (a key of its own is made when the client sent
none) nor its request id."""

from __future__ import annotations

import asyncio
import secrets
import time

from gateway.errors import Answer, error_response
from gateway.forwarding import FORWARDING, ForwardingHeaders
from gateway.headers import HOP_BY_HOP, connection_tokens
from gateway.maintenance.tickets import owner_of
from gateway.queue.store import Entry
from gateway.request import BodyBroken, Request

_NOT_STORED = HOP_BY_HOP | {b"content-length", b"expect", b"x-request-id"}


class BodyRefused(Exception):
    def __init__(self, response: Answer) -> None:
        super().__init__(response.status)
        self.response = response


async def read_entry(request: Request, request_id: str, *, limit: int, timeout: float,
                     keep: frozenset[bytes] = frozenset()) -> Entry:
    """The queued write ``request`` becomes; BodyRefused (413, 408) if its body is too
    large or too slow."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyRefused(error_response(
            413, f"a queued request body may be at most {limit} bytes", request_id))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            if request.body is not None:
                async for chunk in request.body:
                    size += len(chunk)
                    if size > limit:
                        raise BodyRefused(error_response(
                            413, f"a queued request body may be at most {limit} bytes",
                            request_id, close=True))
                    chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(error_response(408, "the request body did not arrive in time",
                                         request_id, close=True)) from None
    except BodyBroken as exc:
        raise BodyRefused(error_response(exc.status, str(exc), request_id, close=True)) from None
    ticket = secrets.token_urlsafe(16)
    return Entry(ticket=ticket, created=time.time(), method=request.method,
                 target=request.target, headers=stored_headers(request, request_id, keep),
                 body=b"".join(chunks),
                 idempotency_key=request.headers.get("Idempotency-Key")
                 or f"hagw-{secrets.token_urlsafe(16)}",
                 request_id=request_id, client=request.client,
                 owner=owner_of(ticket, request.headers.get("Authorization")))


def stored_headers(request: Request, request_id: str,
                   keep: frozenset[bytes] = frozenset()) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop ones (only those in ``keep``, lower case, if
    given), with the forwarding headers as the node would get them now
    (gateway.forwarding): the replay believes what is stored."""
    drop = _NOT_STORED | connection_tokens(request.raw_headers)
    forwarding = ForwardingHeaders()
    host = b""
    headers = []
    for name, value in request.raw_headers:
        lower = name.lower()
        if lower in FORWARDING:
            forwarding.take(lower, name, value)
            continue
        if lower == b"host":
            host = value
        if lower not in drop and (not keep or lower in keep or lower == b"host"):
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    headers += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in forwarding.fields(
        trusted=request.trusted, client=request.remote, scheme=request.scheme, host=host)]
    headers.append(("X-Request-Id", request_id))
    return headers
