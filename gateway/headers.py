"""Header hygiene between client and node (RFC 9110 §7.6): hop-by-hop headers are
stripped both ways, the forwarding headers are the gateway's own (gateway.forwarding),
Via is appended, X-Request-Id is kept or made."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import urlsplit

from gateway.forwarding import FORWARDING, ForwardingHeaders

#: Hop-by-hop headers (RFC 9110 §7.6.1) plus the framing headers the gateway sets itself.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
_REQUEST_MANAGED = HOP_BY_HOP | FORWARDING | {
    b"content-length", b"expect", b"via", b"x-request-id",
}
RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}
#: Also dropped from the nodes' answers: what software they run is nobody's business
#: (nginx's proxy_hide_header default).
RESPONSE_HIDDEN = RESPONSE_DROP | {b"server", b"x-powered-by"}
VIA = b"1.1 hagw"
_BAD = (b"\r", b"\n", b"\0")

_prefix = os.urandom(4).hex()
_counter = itertools.count(1)


class BadHeader(ValueError):
    """A header that must never be forwarded (CR, LF or NUL inside it)."""


def new_request_id() -> str:
    # A per-process random prefix plus a counter: unique, and far cheaper than uuid4().
    return f"{_prefix}-{next(_counter):x}"


def connection_tokens(raw_headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            tokens |= _tokens(value)
    return frozenset(tokens)


def origin_form(target: str) -> tuple[str, bytes]:
    """An absolute-form target (``http://host/path?q``) as origin-form plus its authority.

    A gateway forwards origin-form, and the Host a node sees must be the target's authority
    (RFC 9112 §3.2.2), never a Host header that the target contradicts. Origin-form and
    ``*`` come back unchanged with an empty authority.
    """
    if target.startswith("/") or target == "*":
        return target, b""
    parts = urlsplit(target)
    path = parts.path or "/"
    authority = parts.netloc.rpartition("@")[2]  # never forward userinfo
    return (f"{path}?{parts.query}" if parts.query else path), authority.encode("latin-1",
                                                                                "replace")


def _tokens(value: bytes) -> set[bytes]:
    """The header names one Connection header lists, lower case."""
    return {t.strip().lower() for t in value.split(b",")}


#: A request without forwarding headers of its own (never written to).
_NO_FORWARDING = ForwardingHeaders()


def request_head(method: str, target: str, raw_headers: Sequence[tuple[bytes, bytes]], *,
                 client_ip: str, scheme: str, node_host: bytes, request_id: str,
                 content_length: int | None, chunked: bool, trusted: bool = False) -> bytes:
    """The request line and headers sent to a node, framed as the gateway sends the body.
    ``trusted``: the peer is a trusted proxy (or this is a replay), so its forwarding
    headers are believed (gateway.forwarding)."""
    target, authority = origin_form(target)
    out = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1", "replace")]
    append = out.append
    forwarding = _NO_FORWARDING
    via = b""
    host = b""
    #: Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1), wherever the
    #: Connection header sits among the others: they are taken out once all are read.
    named: set[bytes] | None = None
    #: Which copied line came from which header (only kept if Connection names any).
    lowers: list[bytes] = []
    for name, value in raw_headers:
        lower = name.lower()
        if lower in _REQUEST_MANAGED:
            if lower in FORWARDING:
                if forwarding is _NO_FORWARDING:
                    forwarding = ForwardingHeaders()
                forwarding.take(lower, name, value)
            elif lower == b"via":
                via = value if not via else via + b", " + value
            elif lower == b"connection":
                named = _tokens(value) if named is None else named | _tokens(value)
            continue
        if lower == b"host":
            if authority or not value:
                continue  # the absolute-form target's authority, or the node's, below
            host = value
        append(name + b": " + value + b"\r\n")
        lowers.append(lower)
    if named is not None:
        named -= {b"host"}
        out[1:] = [line for line, lower in zip(out[1:], lowers, strict=True)
                   if lower not in named]
        # A forwarding header or Via named in Connection is the gateway's to write anyway.
    if authority:
        host = authority
        append(b"Host: " + host + b"\r\n")
    elif not host:
        host = node_host
        append(b"Host: " + host + b"\r\n")
    for name, value in forwarding.fields(trusted=trusted, client=client_ip, scheme=scheme,
                                         host=host):
        append(name + b": " + value + b"\r\n")
    append(b"Via: " + (via + b", " + VIA if via else VIA) + b"\r\n")
    append(b"X-Request-Id: " + request_id.encode("latin-1", "replace") + b"\r\n")
    if chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    elif content_length is not None:
        append(b"Content-Length: " + str(content_length).encode() + b"\r\n")
    append(b"\r\n")
    head = b"".join(out)
    # Every line ends in the one CRLF it was given: a CR, LF or NUL anywhere else would
    # let a header split into two on the node's side. One check of the whole head.
    lines = len(out)
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise _bad_header(raw_headers)
    return head


def _bad_header(raw_headers: Sequence[tuple[bytes, bytes]]) -> BadHeader:
    """Which header broke a request head (CR, LF or NUL inside it)."""
    for name, value in raw_headers:
        if b"\r" in value or b"\n" in value or b"\0" in value:
            return BadHeader(f"header {name.decode('latin-1')!r} contains CR, LF or NUL")
    return BadHeader("the request line or a header contains CR, LF or NUL")


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>``: always HTTP/1.1, the highest version the gateway
    speaks (RFC 9112 section 2.3), whatever the request's."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


_date_cache: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    """The Date header line, rebuilt at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n")
    return _date_cache[1]


def response_head(status: int, raw: list[tuple[bytes, bytes]], request_id: str, *,
                  content_length: int | None, keep_alive: bool, http10: bool,
                  extra: bytes = b"", replaced: frozenset[bytes] = frozenset()) -> bytes:
    """The status line and headers of a complete answer, built straight from the node's raw
    headers: hop-by-hop, framing and software headers removed, Via and X-Request-Id added,
    framed by ``content_length`` (None: no body allowed, as for 204 and 304). ``extra``
    are the gateway's own header lines; the node's of the same names (``replaced``,
    lower case) are dropped, so the gateway's policy (HSTS) is the one the client gets."""
    out = [status_line(status)]
    append = out.append
    drop = RESPONSE_HIDDEN | replaced if replaced else RESPONSE_HIDDEN
    via = b""
    has_id = has_date = False
    # Headers named in Connection are hop-by-hop too, wherever Connection sits: they are
    # taken out once all are read (rare: most nodes name none).
    named: set[bytes] | None = None
    lowers: list[bytes] = []
    for name, value in raw:
        lower = name.lower()
        if lower in drop:
            if lower == b"connection":
                named = _tokens(value) if named is None else named | _tokens(value)
            continue
        if lower == b"via":
            via = value
            continue
        if lower == b"x-request-id":
            has_id = True
        elif lower == b"date":
            has_date = True
        append(name + b": " + value + b"\r\n")
        lowers.append(lower)
    if named is not None:
        kept = [(line, lower) for line, lower in zip(out[1:], lowers, strict=True)
                if lower not in named]
        out[1:] = [line for line, _ in kept]
        append = out.append
        has_id = any(lower == b"x-request-id" for _, lower in kept)
        has_date = any(lower == b"date" for _, lower in kept)
        if b"via" in named:
            via = b""
    append(b"Via: " + (via + b", " + VIA if via else VIA) + b"\r\n")
    if not has_id:
        append(b"X-Request-Id: " + request_id.encode("latin-1", "replace") + b"\r\n")
    if not has_date:
        append(date_header())
    if content_length is not None:
        append(b"Content-Length: " + str(content_length).encode() + b"\r\n")
    if not keep_alive:
        append(b"Connection: close\r\n")
    elif http10:
        append(b"Connection: keep-alive\r\n")
    append(extra)
    append(b"\r\n")
    return b"".join(out)
