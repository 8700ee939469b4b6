"""What the traffic listener does with each request: admit it, answer it locally (status
page, maintenance mode) or hand it to the router, and send the node's answer back. Every
request is counted once, whatever became of it."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Protocol

from gateway.accounting import Accounting
from gateway.admission import Admission
from gateway.config.schema import GatewayConfig
from gateway.errors import Answer, error_response
from gateway.events import Event, Publish
from gateway.forwarding import TrustedProxies
from gateway.headers import BadHeader
from gateway.listener.access_log import AccessEntry
from gateway.listener.connection import ClientConnection
from gateway.listener.local import LocalRoute
from gateway.listener.respond import Responder
from gateway.listener.websocket import WebSocketTunnels
from gateway.request import Body, BodyBroken, Request
from gateway.router import (
    BodyTooLarge,
    ClientBodyError,
    Exchange,
    NoNode,
    Router,
    TryTimeout,
    UpstreamBroke,
)
from gateway.span_export import PendingSpan, SpanExport
from gateway.trace import TraceContext, continue_or_start, with_trace
from gateway.upstream import UpstreamError

log = logging.getLogger("hagw.proxy")

#: A client's X-Request-Id is kept only if it looks like one; otherwise a new one is made
#: (Envoy does the same for external clients), so it can never inject into logs or headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(frozen=True, slots=True)
class AdvisoryChanged(Event):
    """The X-Maintenance-Scheduled header changed (workers must follow)."""

    advisory: str | None


class OutcomeSink(Protocol):
    """Who counts every client request's outcome (SLO accounting, in the control plane)."""

    def record(self, status: int, failure: str | None) -> object:
        """One answered request: its status, and why the gateway answered itself if it did."""


class _StreamedBody:
    """The client's body as the router's BodySource: each read bounded by
    ``limits.client_body_timeout``; a broken body becomes a ClientBodyError."""

    __slots__ = ("_body", "_timeout")

    def __init__(self, body: Body, timeout: float) -> None:
        self._body = body
        self._timeout = timeout

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._body.read()
        except TimeoutError:
            raise ClientBodyError(408, "the request body stalled") from None
        except BodyBroken as exc:
            raise ClientBodyError(exc.status, f"bad request body: {exc}") from None


async def read_whole(body: Body, limit: int, timeout: float) -> bytes:
    """A body read whole, at most ``limit`` bytes, each part within ``timeout``. Raises
    ClientBodyError (408 slow, 413 too large, 400 broken)."""
    if body.complete:
        data = body.take()
    else:
        parts = []
        size = 0
        source = _StreamedBody(body, timeout)
        while chunk := await source.read():
            size += len(chunk)
            if size > limit:
                raise ClientBodyError(413, f"request body exceeds {limit} bytes")
            parts.append(chunk)
        data = b"".join(parts)
    if len(data) > limit:
        raise ClientBodyError(413, f"request body exceeds {limit} bytes")
    return data


class TrafficHandler:
    def __init__(self, router: Router, admission: Admission, responder: Responder,
                 websockets: WebSocketTunnels, accounting: Accounting, outcomes: OutcomeSink,
                 config: GatewayConfig, publish: Publish | None = None) -> None:
        self.router = router
        self.publish = publish
        self.admission = admission
        self.responder = responder
        self.websockets = websockets
        self.accounting = accounting
        self.outcomes = outcomes
        #: Checked in order before proxying; the first that answers wins.
        self.local_routes: list[LocalRoute] = []
        self._advisory: str | None = None
        self._advisory_line = b""
        #: Strict-Transport-Security on every answer of a TLS listener with ``tls.hsts``.
        self._hsts_line = b""
        #: The header lines added to every proxied answer: the advisory, then HSTS.
        self._extra_lines = b""
        #: The names of those lines: a node's own are dropped (the gateway's win).
        self._extra_names: frozenset[bytes] = frozenset()
        #: The running loop, looked up once (on 3.11 every lookup is a getpid() syscall).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Where sampled requests' spans go (``tracing.otlp_endpoint``); None: nowhere.
        self.spans: SpanExport | None = None
        self.configure(config)

    @property
    def advisory(self) -> str | None:
        """X-Maintenance-Scheduled for every proxied answer while a window is announced."""
        return self._advisory

    @advisory.setter
    def advisory(self, value: str | None) -> None:
        changed = value != self._advisory
        self._advisory = value
        self._advisory_line = (b"" if value is None
                               else f"X-Maintenance-Scheduled: {value}\r\n".encode())
        self._set_extra()
        if changed and self.publish is not None:
            self.publish(AdvisoryChanged(value))

    def configure(self, config: GatewayConfig) -> None:
        self.config = config
        self.request_timeout = config.timeouts.request
        self.retry_buffer = config.retries.buffer
        self.max_body = config.limits.max_body
        self.body_timeout = config.limits.client_body_timeout
        self.sample_ratio = config.tracing.sample_ratio
        self.responder.stream_idle = config.timeouts.stream_idle
        self.proxies = TrustedProxies(config.trusted_proxies)
        self.admission.configure(config.rate_limit, config.overload, config.trusted_proxies)
        self._key_header = (config.rate_limit.header if config.rate_limit.key == "header"
                            else None)
        hsts = config.tls.hsts if config.tls is not None else None
        self._hsts_line = (b"" if hsts is None
                           else f"Strict-Transport-Security: {hsts.header}\r\n".encode())
        self._set_extra()

    def __repr__(self) -> str:
        return f"<TrafficHandler routes={len(self.local_routes)} {self.admission!r}>"

    def _set_extra(self) -> None:
        self._extra_lines = self._advisory_line + self._hsts_line
        self._extra_names = frozenset(
            line.split(b":", 1)[0].lower() for line in self._extra_lines.split(b"\r\n") if line)

    # -- entry points (gateway.listener.connection.Handler) ---------------------------------

    async def handle(self, request: Request, conn: ClientConnection) -> bool:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        start = loop.time()
        trace, request_id = self._trace(request)
        self._identify(request)
        entry = (AccessEntry(request.remote, request.method, self._logged_target(request),
                             request.version, request_id, trace.trace_id,
                             request.headers.get("User-Agent"), request.headers.get("Referer"),
                             time.time(), conn.bytes_out)
                 if self.config.access_log else None)
        spans = self.spans
        span = (spans.begin(trace, request, request_id, self._traced_path(request))
                if spans is not None and trace.sampled else None)
        admission = self.admission
        key = (admission.client_key(request.remote, request.headers.get(self._key_header))
               if self._key_header else request.client)
        refused = admission.admit(key)
        if refused is not None:
            shed = refused.status == 503
            self.accounting.admission_refused.labels("shed" if shed else "rate_limit").inc()
            self.accounting.observe_request(refused.status, loop.time() - start)
            self.outcomes.record(refused.status, "shed" if shed else None)
            keep = self._answer(conn, request, error_response(
                refused.status, refused.message, request_id,
                error="overloaded" if shed else None, retry_after=refused.retry_after))
            if entry is not None:
                entry.write(self.config.access_log_format, refused.status,
                            conn.bytes_out - entry.bytes_before, loop.time() - start)
            if span is not None:
                span.end(refused.status, "shed" if shed else None, loop.time() - start)
            return keep
        status = 500
        failure: str | None = None
        try:
            for route in self.local_routes:
                if not route.matches(request):
                    continue
                local = await route.answer(request, request_id)
                if local is not None:
                    answer, failure = local
                    status = answer.status
                    return self._answer(conn, request, answer)
            status, failure, keep = await self._proxy(request, conn, request_id, trace,
                                                      entry, span)
            return keep
        except UpstreamBroke:
            status, failure = 502, "reset"
            return False
        except (ConnectionError, asyncio.CancelledError):
            status, failure = 499, "client_closed"  # nginx's code for a client that hung up
            raise
        finally:
            admission.done(key)
            elapsed = loop.time() - start
            self.accounting.observe_request(status, elapsed)
            self.outcomes.record(status, failure)
            if entry is not None:
                entry.write(self.config.access_log_format, status,
                            conn.bytes_out - entry.bytes_before, elapsed)
            if span is not None:
                span.end(status, failure, elapsed)

    def _logged_target(self, request: Request) -> str:
        """The target as the access log shows it: a queue ticket is a credential."""
        prefix = self.config.maintenance.ticket_path + "/"
        if request.path.startswith(prefix):
            return prefix + "<ticket>"
        return request.target

    def _traced_path(self, request: Request) -> str:
        """The path as a span shows it: no query (it may carry credentials), no ticket."""
        prefix = self.config.maintenance.ticket_path + "/"
        path = request.path
        return prefix + "<ticket>" if path.startswith(prefix) else path

    def _identify(self, request: Request) -> None:
        """Who the client is: the peer, or behind a trusted proxy the address it names."""
        proxies = self.proxies
        if proxies and proxies.trusts(request.remote):
            request.trusted = True
            request.client = proxies.client(request.remote,
                                            request.headers.get("X-Forwarded-For"))

    def _trace(self, request: Request) -> tuple[TraceContext, str]:
        """The request's trace (continued or started) and its id: the client's
        ``X-Request-Id`` if it looks like one, else the trace id (README "Tracing")."""
        trace = continue_or_start(request.headers.get("traceparent"),
                                  request.headers.get("tracestate"), self.sample_ratio)
        given = request.headers.get("X-Request-Id")
        return trace, given if given and _REQUEST_ID.fullmatch(given) else trace.trace_id

    async def upgrade(self, request: Request, conn: ClientConnection, rest: bytes) -> None:
        """A WebSocket upgrade: relayed to a node, the node's own handshake answer back,
        with the same trace context and request id as any request."""
        trace, request_id = self._trace(request)
        self._identify(request)
        status = await self.websockets.tunnel(request, conn, rest, request_id, trace)
        self.accounting.observe_request(status, 0.0)

    def _answer(self, conn: ClientConnection, request: Request, answer: Answer) -> bool:
        keep = conn.keep_alive(request) and not answer.close
        conn.send(answer, keep_alive=keep, head_only=request.method == "HEAD",
                  extra=self._hsts_line)
        return keep

    # -- proxying -------------------------------------------------------------------------

    async def _proxy(self, request: Request, conn: ClientConnection, request_id: str,
                     trace: TraceContext, entry: AccessEntry | None,
                     span: PendingSpan | None) -> tuple[int, str | None, bool]:
        """(status, failure, keep the connection) of a proxied request."""
        length = request.content_length
        body: bytes | None = b""
        source = None
        if request.body is not None:
            if length is not None and length <= self.retry_buffer:
                try:
                    body = await read_whole(request.body, length, self.body_timeout)
                except ClientBodyError as exc:
                    return self._refusal(conn, request, exc.status, str(exc), request_id)
            else:
                body = None
                source = _StreamedBody(request.body, self.body_timeout)
        ex = Exchange(request_id, request.method, request.target,
                      with_trace(request.raw_headers, trace),
                      request.remote, request.scheme, body, length, request.chunked,
                      self.router.idempotent(request.method, "Idempotency-Key" in request.headers),
                      source=source, trusted=request.trusted)
        if span is not None:
            span.tried = ex.tried
        sent_at = time.monotonic() if entry is not None else 0.0  # for the access log only
        try:
            up, node = await self.router.send(ex)
        except TryTimeout as exc:
            return self._failed(conn, request, ex, "timeout", exc, error_response(
                504, exc.public, request_id))
        except TimeoutError as exc:
            return self._failed(conn, request, ex, "timeout", exc, error_response(
                504, f"no answer from a node within {self.request_timeout:g}s", request_id))
        except NoNode as exc:
            return self._failed(conn, request, ex, "no_node", exc, error_response(
                503, "no node is available to take the request", request_id, retry_after=1))
        except BadHeader as exc:
            return self._refusal(conn, request, 400, str(exc), request_id)
        except BodyTooLarge:
            return self._refusal(conn, request, 413, f"request body exceeds {self.max_body} "
                                                     "bytes", request_id)
        except ClientBodyError as exc:
            return self._refusal(conn, request, exc.status, str(exc), request_id)
        except UpstreamError as exc:
            # The public answer names no node, address or count; the log has the detail.
            if exc.kind == "overflow":
                answer = error_response(503, "the nodes are at capacity", request_id,
                                        retry_after=1)
            elif not exc.sent:
                # Nothing reached a node (every try failed to connect): a 503 with
                # Retry-After tells the client that retrying later is safe, even for a
                # write.
                answer = error_response(503, "no node could be reached", request_id,
                                        retry_after=1)
            else:  # what broke, in the connection's words, which name no node
                answer = error_response(502, str(exc), request_id)
            return self._failed(conn, request, ex, "upstream", exc, answer, reason=exc.kind)
        if entry is not None:
            entry.upstream_node = node.name
            entry.upstream_seconds = time.monotonic() - sent_at
            entry.attempts = len(ex.tried)
        if span is not None:
            span.node = node.name
        status, keep = await self.responder.respond(ex, request, conn, up, node,
                                                    self._extra_lines, self._extra_names)
        return status, None, keep

    def _failed(self, conn: ClientConnection, request: Request, ex: Exchange, failure: str,
                error: Exception, answer: Answer,
                reason: str | None = None) -> tuple[int, str | None, bool]:
        """The gateway answers for a node that did not: counted against the SLO. The
        client's answer says what kind of failure it was; the log says which node."""
        log.info("request %s: %d: %s (tried %s)", ex.request_id, answer.status,
                 str(error) or type(error).__name__,
                 ", ".join(node.name for node in ex.tried) or "no node")
        ex.failure = failure
        self.accounting.gateway_errors.labels(reason or failure).inc()
        return answer.status, failure, self._answer(conn, request, answer)

    def _refusal(self, conn: ClientConnection, request: Request, status: int, message: str,
                 request_id: str) -> tuple[int, str | None, bool]:
        """The client's own fault (a body too large, too slow, malformed): never charged
        to the SLO, and the connection closes (the rest of the body is not read)."""
        self._answer(conn, request, error_response(status, message, request_id, close=True))
        return status, None, False
