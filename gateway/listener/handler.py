"""What the traffic listener does with each request: refuse what must be refused, admit
it, answer it locally (status page, maintenance mode) or hand it to the router, and send
the node's answer back. Every request is counted once, whatever became of it."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiohttp import web

from gateway.accounting import Accounting
from gateway.admission import Admission
from gateway.config.schema import GatewayConfig
from gateway.errors import error_response
from gateway.headers import BadHeader, new_request_id
from gateway.listener.local import LocalRoute
from gateway.listener.respond import Responder
from gateway.listener.server import screen
from gateway.listener.websocket import WebSocketProxy
from gateway.router import (
    BodyTooLarge,
    ClientBodyError,
    Exchange,
    NoNode,
    Router,
    TryTimeout,
    UpstreamBroke,
)
from gateway.upstream import UpstreamError

log = logging.getLogger("hagw.proxy")
access_log = logging.getLogger("hagw.access")


class OutcomeSink(Protocol):
    """Who counts every client request's outcome (SLO accounting, in the control plane)."""

    def record(self, status: int, failure: str | None) -> object:
        """One answered request: its status, and why the gateway answered itself if it did."""


class _RequestBody:
    """The client's body as the router's BodySource: each read bounded by
    ``limits.client_body_timeout``, aiohttp's payload errors turned into a 400."""

    __slots__ = ("_content", "_timeout")

    def __init__(self, request: web.BaseRequest, timeout: float) -> None:
        self._content = request.content
        self._timeout = timeout

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._content.readany()
        except TimeoutError:
            raise ClientBodyError(408, "the request body stalled") from None
        except Exception as exc:  # aiohttp raises its own payload errors here
            raise ClientBodyError(400, f"bad request body: {exc}") from None


class TrafficHandler:
    def __init__(self, router: Router, admission: Admission, responder: Responder,
                 websockets: WebSocketProxy, accounting: Accounting, outcomes: OutcomeSink,
                 config: GatewayConfig) -> None:
        self.router = router
        self.admission = admission
        self.responder = responder
        self.websockets = websockets
        self.accounting = accounting
        self.outcomes = outcomes
        #: Checked in order before proxying; the first that answers wins.
        self.local_routes: list[LocalRoute] = []
        self._advisory: str | None = None
        self._advisory_line = b""
        #: The running loop, looked up once (on 3.11 every lookup is a getpid() syscall).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.configure(config)

    @property
    def advisory(self) -> str | None:
        """X-Maintenance-Scheduled for every proxied answer while a window is announced."""
        return self._advisory

    @advisory.setter
    def advisory(self, value: str | None) -> None:
        self._advisory = value
        self._advisory_line = (b"" if value is None
                               else f"X-Maintenance-Scheduled: {value}\r\n".encode())

    def configure(self, config: GatewayConfig) -> None:
        self.config = config
        self.request_timeout = config.timeouts.request
        self.retry_buffer = config.retries.buffer
        self.max_body = config.limits.max_body
        self.max_header = config.limits.max_header
        self.body_timeout = config.limits.client_body_timeout
        self.responder.stream_idle = config.timeouts.stream_idle
        self.admission.configure(config.rate_limit, config.overload)
        self._key_header = (config.rate_limit.header if config.rate_limit.key == "header"
                            else None)

    def __repr__(self) -> str:
        return f"<TrafficHandler routes={len(self.local_routes)} {self.admission!r}>"

    # -- entry point ------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        start = loop.time()
        refused_early = screen(request)
        if refused_early is not None:
            log.info("refused a request from %s: %s", request.remote, refused_early.text)
            return refused_early
        request_id = request.headers.get("X-Request-Id") or new_request_id()
        admission = self.admission
        key = admission.client_key(request.remote or "", request.headers.get(self._key_header)
                                   if self._key_header else None)
        refused = admission.admit(key)
        if refused is not None:
            shed = refused.status == 503
            self.accounting.admission_refused.labels("shed" if shed else "rate_limit").inc()
            self.accounting.observe_request(refused.status, loop.time() - start)
            self.outcomes.record(refused.status, "shed" if shed else None)
            return error_response(refused.status, refused.message, request_id,
                                  error="overloaded" if shed else None,
                                  retry_after=refused.retry_after)
        status = 500
        failure: str | None = None
        try:
            for route in self.local_routes:
                if not route.matches(request):
                    continue
                local = await route.answer(request, request_id)
                if local is not None:
                    response, failure = local
                    status = response.status
                    return response
            ex, response = await self._proxy(request, request_id)
            status = response.status
            failure = ex.failure if ex is not None else None
            return response
        except UpstreamBroke:
            status, failure = 502, "reset"
            raise
        except (ConnectionError, asyncio.CancelledError):
            status, failure = 499, "client_closed"  # nginx's code for a client that hung up
            raise
        finally:
            admission.done(key)
            elapsed = loop.time() - start
            self.accounting.observe_request(status, elapsed)
            self.outcomes.record(status, failure)
            if self.config.access_log:
                access_log.info("%s %s %s %d %.1fms %s", request.remote, request.method,
                                request.path_qs, status, elapsed * 1000, request_id)

    async def _proxy(self, request: web.BaseRequest,
                     request_id: str) -> tuple[Exchange | None, web.StreamResponse]:
        headers = request.headers
        if sum(len(k) + len(v) + 4 for k, v in request.raw_headers) > self.max_header:
            return None, error_response(431, f"request headers exceed {self.max_header} bytes",
                                        request_id, close=True)
        length = request.content_length
        if length is not None and length > self.max_body:
            return None, error_response(413, f"request body of {length} bytes exceeds "
                                             f"{self.max_body}", request_id, close=True)
        if headers.get("Upgrade", "").lower() == "websocket":
            return None, await self.websockets.proxy(request, request_id)
        chunked = length is None and request.body_exists
        body: bytes | None = b""
        if request.body_exists:
            if headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = None
            if length is not None and length <= self.retry_buffer:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        body = await request.content.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return None, error_response(408, "the request body did not arrive in time",
                                                request_id, close=True)
        method = request.method
        ex = Exchange(request_id, method, request.raw_path, request.raw_headers,
                      request.remote or "", request.scheme, body, length, chunked,
                      self.router.idempotent(method, "Idempotency-Key" in headers),
                      source=None if body is not None else _RequestBody(request,
                                                                        self.body_timeout))
        try:
            conn, node = await self.router.send(ex)
        except TryTimeout as exc:
            ex.failure = "timeout"
            self.accounting.gateway_errors.labels("timeout").inc()
            return ex, error_response(504, str(exc), request_id)
        except TimeoutError:
            ex.failure = "timeout"
            self.accounting.gateway_errors.labels("timeout").inc()
            return ex, error_response(504, f"no answer from a node within "
                                           f"{self.request_timeout:g}s", request_id)
        except NoNode:
            ex.failure = "no_node"
            self.accounting.gateway_errors.labels("no_node").inc()
            return ex, error_response(503, "no node is available to take the request",
                                      request_id, retry_after=1)
        except BadHeader as exc:
            return ex, error_response(400, str(exc), request_id, close=True)
        except BodyTooLarge:
            return ex, error_response(413, f"request body exceeds {self.max_body} bytes",
                                      request_id, close=True)
        except ClientBodyError as exc:
            return ex, error_response(exc.status, str(exc), request_id, close=True)
        except UpstreamError as exc:
            ex.failure = "upstream"
            self.accounting.gateway_errors.labels(exc.kind).inc()
            if exc.kind == "overflow":
                return ex, error_response(503, str(exc), request_id, retry_after=1)
            if not exc.sent:
                # Nothing reached a node (every try failed to connect): a 503 with
                # Retry-After tells the client that retrying later is safe, even for a
                # write. The nodes' addresses stay out of the answer.
                return ex, error_response(503, "no node could be reached", request_id,
                                          retry_after=1)
            return ex, error_response(502, str(exc), request_id)
        return ex, await self.responder.respond(ex, request, conn, node, self._advisory_line)
