"""Each request the traffic listener answers, exported as an OTLP span to a collector
(``tracing.otlp_endpoint``; README "Logs, access log and tracing").

The gateway's span is the one its TraceContext already names: the trace id, the span id
the node got as its parent in ``traceparent``, and the caller's span (if any) as the
parent. So the span is built whole once the request is answered, as an
``opentelemetry.sdk.trace.ReadableSpan``, not through the tracer API: that one would mint
ids of its own (which the node never saw) and pay for context variables and a live span
on every request. Only sampled traces are exported (``tracing.sample_ratio`` decides for
the traces the gateway starts, the caller's flag for the others).

A BatchSpanProcessor sends the spans from a thread of its own, at least every
``tracing.flush_interval``; the event loop only appends to its queue. A collector that is
slow or down costs spans, never traffic: beyond MAX_QUEUED spans waiting, new ones are
dropped, and every span's fate is counted (``hagw_trace_spans_total``). Each process that
serves traffic (the single process, or each worker) exports its own spans and flushes them
when it stops, for at most ``tracing.export_timeout``.

OpenTelemetry is imported by this module only, and only when an export starts (a
SpanExport is made): without ``tracing.otlp_endpoint`` none of it is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from prometheus_client import Counter

from gateway import __version__
from gateway.config.redact import shown_url
from gateway.config.schema import TracingConfig
from gateway.node import Node
from gateway.request import Request
from gateway.trace import TraceContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanContext, Status

log = logging.getLogger("hagw.tracing")

#: Spans waiting for the collector (queued or in the batch being sent); more are dropped.
MAX_QUEUED = 2048
#: Spans sent in one export request (the SDK's default).
BATCH_SIZE = 512
#: HTTP methods as OpenTelemetry's semantic conventions know them; others are "_OTHER".
KNOWN_METHODS = frozenset(("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST",
                           "PUT", "TRACE"))


class PendingSpan:
    """A sampled request's span while it is handled: what is known when it arrives, and
    what the proxy learns (the node that answered, the tries). ``end`` hands it over."""

    __slots__ = ("export", "node", "path", "request", "request_id", "start_ns", "trace",
                 "tried")

    def __init__(self, export: SpanExport, trace: TraceContext, request: Request,
                 request_id: str, path: str) -> None:
        self.export = export
        self.trace = trace
        self.request = request
        self.request_id = request_id
        #: ``url.path``: the path without the query (which may carry credentials).
        self.path = path
        self.start_ns = time.time_ns()
        #: The node whose answer the client got, and the nodes tried (the router's list,
        #: which grows as it tries).
        self.node: str | None = None
        self.tried: Sequence[Node] | None = None

    def end(self, status: int, failure: str | None, seconds: float) -> None:
        """The request was answered with ``status`` after ``seconds``."""
        self.export.finish(self, status, failure, seconds)

    def __repr__(self) -> str:
        return f"<PendingSpan {self.trace.traceparent} {self.request.method} {self.path}>"


class _CountedExporter:
    """The OTLP/HTTP exporter with every span's fate counted: a SpanExporter to the
    processor (which calls ``export`` and ``shutdown``). Called from the processor's thread
    only (its exports hold one lock), so ``done`` has one writer."""

    def __init__(self, exporter: SpanExporter, success: SpanExportResult, exported: Counter,
                 failed: Counter) -> None:
        self._exporter = exporter
        self._success = success
        self._exported = exported
        self._failed = failed
        #: Spans the exporter has finished with, sent or not.
        self.done = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult | None:
        result = None
        try:
            result = self._exporter.export(spans)
        finally:
            self.done += len(spans)
            (self._exported if result is self._success else self._failed).inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


class SpanExport:
    """One process's span export: a span per answered request (``begin``, then the
    PendingSpan's ``end``), batched to the collector from the processor's thread."""

    def __init__(self, config: TracingConfig, counter: Counter) -> None:
        # OpenTelemetry is loaded here, once an export starts, and never before.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        url = config.traces_url
        assert url is not None, "SpanExport needs tracing.otlp_endpoint"
        self.config = config
        self.url = url
        self._readable = ReadableSpan
        self._context = SpanContext
        self._flags = TraceFlags
        self._server = SpanKind.SERVER
        self._unset: Status = Status(StatusCode.UNSET)
        self._error: Status = Status(StatusCode.ERROR)
        self._dropped = counter.labels("dropped")
        self._exporter = _CountedExporter(
            OTLPSpanExporter(endpoint=url, headers=dict(config.headers),
                             timeout=config.export_timeout),
            SpanExportResult.SUCCESS, counter.labels("exported"), counter.labels("failed"))
        # The processor's own queue never fills: this one drops first (and counts it).
        self._processor = BatchSpanProcessor(
            cast(SpanExporter, self._exporter), max_queue_size=MAX_QUEUED + BATCH_SIZE,
            schedule_delay_millis=config.flush_interval * 1000,
            max_export_batch_size=BATCH_SIZE)
        #: Spans handed to the processor (the loop is the only writer).
        self.queued = 0
        self.resource = Resource.create({
            "service.name": config.service_name,
            "service.version": __version__,
            "service.instance.id": str(uuid.uuid4()),
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        })
        self.scope = InstrumentationScope("hagw", __version__)
        self._closed = False

    def __repr__(self) -> str:
        return (f"<SpanExport to {shown_url(self.url)} waiting={self.waiting} "
                f"pid={self.resource.attributes.get('process.pid')}>")

    @property
    def waiting(self) -> int:
        """Spans handed over that the exporter has not finished with yet."""
        return self.queued - self._exporter.done

    def begin(self, trace: TraceContext, request: Request, request_id: str,
              path: str) -> PendingSpan | None:
        """A span for this request if its trace is sampled (None: nothing more to do)."""
        if not trace.sampled or self._closed:
            return None
        return PendingSpan(self, trace, request, request_id, path)

    def finish(self, span: PendingSpan, status: int, failure: str | None,
               seconds: float) -> None:
        if self.waiting >= MAX_QUEUED or self._closed:  # closed: replaced by a reload
            self._dropped.inc()
            return
        self.queued += 1
        self._processor.on_end(self.readable(span, status, failure, seconds))

    def readable(self, span: PendingSpan, status: int, failure: str | None,
                 seconds: float) -> ReadableSpan:
        """The span as the SDK exports it, with OpenTelemetry's HTTP server conventions."""
        trace = span.trace
        request = span.request
        flags = self._flags(int(trace.flags, 16))
        method = request.method if request.method in KNOWN_METHODS else "_OTHER"
        # Each attribute costs the exporter's encoding some microseconds a span: the
        # redundant ones (the client is the peer, the request id is the trace id) are left out.
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": span.path,
            "url.scheme": request.scheme,
            "http.response.status_code": status,
            "network.protocol.version": request.version,
            "network.peer.address": request.remote,
        }
        if request.client != request.remote:
            attributes["client.address"] = request.client
        if span.request_id != trace.trace_id:
            attributes["hagw.request_id"] = span.request_id
        if method == "_OTHER":
            attributes["http.request.method_original"] = request.method
        host = request.headers.get("Host")
        if host:
            attributes["server.address"] = _host_name(host)
        agent = request.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
        if span.node is not None:
            attributes["hagw.upstream.node"] = span.node
        if span.tried is not None:
            attributes["hagw.attempts"] = len(span.tried)
        if failure is not None:
            attributes["error.type"] = failure
        elif status >= 500:
            attributes["error.type"] = str(status)
        trace_id = int(trace.trace_id, 16)
        parent: SpanContext | None = (
            None if trace.parent_id is None else
            self._context(trace_id, int(trace.parent_id, 16), is_remote=True, trace_flags=flags))
        return self._readable(
            "HTTP" if method == "_OTHER" else method,
            context=self._context(trace_id, int(trace.span_id, 16), is_remote=False,
                                  trace_flags=flags),
            parent=parent, resource=self.resource, attributes=attributes,
            kind=self._server, status=self._error if status >= 500 else self._unset,
            start_time=span.start_ns, end_time=span.start_ns + int(seconds * 1e9),
            instrumentation_scope=self.scope)

    # -- stopping ---------------------------------------------------------------------------

    def shut_down(self) -> threading.Event:
        """Send what is queued and stop, in a thread of its own (an export may wait on the
        collector for up to ``export_timeout``); the event is set once done. Spans of
        requests still in flight are not exported."""
        self._closed = True
        done = threading.Event()

        def run() -> None:
            try:
                self._processor.shutdown()  # type: ignore[no-untyped-call]
            finally:
                done.set()

        threading.Thread(target=run, name="hagw-span-flush", daemon=True).start()
        return done

    async def close(self) -> bool:
        """``shut_down``, waiting at most ``export_timeout`` (and a second); False if the
        collector did not take the last spans by then (they are lost)."""
        waiting = self.waiting
        done = self.shut_down()
        timeout = self.config.export_timeout + 1.0
        if await asyncio.to_thread(done.wait, timeout):
            return True
        log.warning("span export: the collector at %s did not take the last %d span(s) "
                    "within %gs; they are lost", shown_url(self.url), waiting, timeout)
        return False


def _host_name(host: str) -> str:
    """``server.address`` from a Host header: the name without its port."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
