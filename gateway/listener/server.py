"""The traffic listener: aiohttp's low-level HTTP server, hardened.

aiohttp's RequestHandler has no deadline for a client to finish sending its
headers, so a slowloris client could hold a connection forever; it also answers
oversized headers with 400 where RFC 6585 says 431. ``GuardedRequestHandler``
adds both. The low-level server skips aiohttp's router and middleware chain,
which the proxy does not need on every request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

log = logging.getLogger("hagw.listener")

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")


class GuardedRequestHandler(RequestHandler):
    """Adds a header deadline (slowloris guard) and 431 for oversized headers."""

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued and isinstance(self._messages[-1][0], _ErrInfo):
            self._fail_streaming_body(self._messages[-1][0])
        # Headers are complete once aiohttp queued a message or is handling one.
        if self._messages or self._request_in_progress or self._upgraded:
            self._disarm()
        elif self._header_deadline is None and data:
            self._arm()

    def _fail_streaming_body(self, error: _ErrInfo) -> None:
        """llhttp reports a framing error inside a body that is already streaming (a bad
        chunk size after a good chunk) as a new bad message and leaves that body waiting
        for bytes that never come: the request would hold its node until
        client_body_timeout and end in 408. Fail the body now, so it ends in 400."""
        bodies = [payload for _msg, payload in list(self._messages)[:-1]]
        if self._current_request is not None:
            bodies.append(self._current_request.content)
        for body in bodies:
            if not body.is_eof() and body.exception() is None:
                body.set_exception(error.exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self._loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if self._messages or self._request_in_progress or self._upgraded or transport is None:
            return
        log.info("closing %s: request headers not complete within %gs",
                 self.peername, self.header_timeout)
        transport.write(_TIMEOUT_408)
        self.force_close()
        transport.close()

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, LineTooLong) or (
                isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
            status = 431
        _answer_as_http11(request)
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        # Hostile or broken input is routine at the edge: log it quietly, answer in JSON.
        log.info("rejected a malformed request from %s: %s", request.remote, exc or message)
        body = {"error": "headers_too_large" if status == 431 else "bad_request",
                "message": (getattr(exc, "message", None) or message or "malformed request")}
        response = web.Response(status=status, body=json.dumps(body).encode(),
                                content_type="application/json")
        response.force_close()
        return response


def _answer_as_http11(request: BaseRequest) -> None:
    """aiohttp writes an answer's status line in the request's version: HTTP/1.0 for a
    request it could not parse, HTTP/2.0 for an HTTP/2.0 request line. RFC 9112 §2.3:
    answer in the highest version we support, up to the request's major version, which
    for an unparsed or HTTP/2 request is HTTP/1.1 (what nginx and haproxy send too)."""
    request._version = HttpVersion11
    request._cache.pop("version", None)  # BaseRequest.version is a cached property


def _refusal(status: int, error: str, message: str) -> web.Response:
    response = web.Response(status=status, content_type="application/json",
                            body=json.dumps({"error": error, "message": message}).encode())
    if status == 405:
        response.headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    response.force_close()
    return response


def screen(request: BaseRequest) -> web.Response | None:
    """Requests a reverse proxy must refuse before routing, whatever the parser let through."""
    version = request.version
    if version not in (HttpVersion10, HttpVersion11):
        _answer_as_http11(request)
        return _refusal(505, "http_version_not_supported",
                        f"HTTP/{version.major}.{version.minor} is not supported; use HTTP/1.1")
    if request.method == "CONNECT":
        return _refusal(405, "method_not_allowed",
                        "CONNECT is not supported: this is a gateway, not a forward proxy")
    if version == HttpVersion10 and "Transfer-Encoding" in request.headers:
        # RFC 9112 §6.1: treat as faulty framing, and close the connection afterwards.
        return _refusal(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request")
    return None


class GuardedServer(web.Server):
    """The proxy's handler calls ``screen`` first (no extra coroutine per request)."""

    def __init__(self, handler: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        handler = GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        return handler
