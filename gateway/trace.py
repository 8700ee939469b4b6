"""W3C Trace Context (https://www.w3.org/TR/trace-context/): ``traceparent`` and
``tracestate`` of a proxied request.

A valid incoming ``traceparent`` is continued: same trace id and flags, and the gateway's
hop becomes a span of its own (a new parent id towards the node, the caller's as its
parent). An absent or invalid one starts a new trace (an invalid one's ``tracestate`` is
dropped, as the spec says). Without an ``X-Request-Id`` from the client, the request id is
the trace id, so a log line, an error answer and a trace find each other.

A new trace is sampled with probability ``tracing.sample_ratio``, decided as OpenTelemetry's
TraceIdRatioBased sampler decides (by the trace id's low 64 bits), so every hop that samples
by ratio agrees; a continued trace keeps the caller's sampled flag.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: Sampled: a new trace asks the next hops to record it.
SAMPLED = "01"
NOT_SAMPLED = "00"
#: tracestate: at most 32 members, 512 characters kept (the spec's limits).
_STATE_LIMIT = 512
#: Trace and span ids must be unique and unpredictable enough to not collide, not secret
#: (W3C Trace Context section 3.2.2.3): Python's generator, seeded from os.urandom in
#: every process, without a getrandom() system call per id as SystemRandom makes.
_bits = random.getrandbits


def new_trace_id() -> str:
    while True:
        trace_id = f"{_bits(128):032x}"
        if trace_id != _ZERO_TRACE:
            return trace_id


def new_span_id() -> str:
    while True:
        span_id = f"{_bits(64):016x}"
        if span_id != _ZERO_SPAN:
            return span_id


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    #: The gateway's span: the parent id the node sees.
    span_id: str
    #: The caller's span (None when the gateway started the trace).
    parent_id: str | None
    flags: str
    state: str | None = None

    @property
    def sampled(self) -> bool:
        """The sampled flag (bit 0 of the flags): this trace is recorded."""
        return int(self.flags, 16) & 1 == 1

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def __repr__(self) -> str:
        return f"<TraceContext {self.traceparent} parent={self.parent_id}>"


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid ``traceparent``, else None."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def start_flags(trace_id: str, sample_ratio: float) -> str:
    """The flags of a trace the gateway starts: sampled when the trace id's low 64 bits fall
    below ``sample_ratio`` of 2**64 (OpenTelemetry's TraceIdRatioBased)."""
    if sample_ratio >= 1.0:
        return SAMPLED
    return SAMPLED if int(trace_id[16:], 16) < round(sample_ratio * 2**64) else NOT_SAMPLED


def continue_or_start(traceparent: str | None, tracestate: str | None,
                      sample_ratio: float = 1.0) -> TraceContext:
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        trace_id = new_trace_id()
        flags = SAMPLED if sample_ratio >= 1.0 else start_flags(trace_id, sample_ratio)
        return TraceContext(trace_id, new_span_id(), None, flags)
    trace_id, parent_id, flags = parsed
    state = tracestate.strip()[:_STATE_LIMIT] if tracestate and tracestate.strip() else None
    return TraceContext(trace_id, new_span_id(), parent_id, flags, state)


def with_trace(raw: Sequence[tuple[bytes, bytes]],
               context: TraceContext) -> list[tuple[bytes, bytes]]:
    """The request headers with the caller's trace headers replaced by the gateway's."""
    out = [(n, v) for n, v in raw if n.lower() not in (b"traceparent", b"tracestate")]
    out.append((b"traceparent", context.traceparent.encode("ascii")))
    if context.state is not None:
        out.append((b"tracestate", context.state.encode("latin-1", "replace")))
    return out
