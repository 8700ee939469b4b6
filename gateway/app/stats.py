"""Per-node stats, like HAProxy's stats page: request rate, error ratio, p99 latency,
in-flight, retries and ejections. Read from the gateway's own registry (so they are the
totals over every worker, as ``/metrics`` is), sampled when someone looks (the status page,
``GET /nodes``, ``hagw nodes --watch``), and turned into rates over the last minute."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

#: Rates are over at most this much history, and at least MIN_SPAN (else: no rate yet).
WINDOW = 60.0
MIN_SPAN = 0.5
_SAMPLES = ("hagw_upstream_requests_total", "hagw_upstream_request_duration_seconds_bucket",
            "hagw_upstream_retries_total", "hagw_upstream_ejections_total")


@dataclass
class Totals:
    """One node's cumulative counters at one instant."""

    requests: float = 0.0
    errors: float = 0.0
    retries: float = 0.0
    ejections: float = 0.0
    #: Cumulative histogram buckets: upper bound -> count.
    buckets: dict[float, float] = field(default_factory=dict)


def read(registry: CollectorRegistry) -> dict[str, Totals]:
    nodes: dict[str, Totals] = {}
    for metric in registry.restricted_registry(list(_SAMPLES)).collect():
        for s in metric.samples:
            node = s.labels.get("node")
            if node is None or s.name not in _SAMPLES:
                continue
            totals = nodes.setdefault(node, Totals())
            if s.name == "hagw_upstream_requests_total":
                totals.requests += s.value
                if s.labels.get("code_class") in ("5xx", "error"):
                    totals.errors += s.value
            elif s.name == "hagw_upstream_retries_total":
                totals.retries += s.value
            elif s.name == "hagw_upstream_ejections_total":
                totals.ejections += s.value
            else:
                bound = float(s.labels["le"])
                totals.buckets[bound] = totals.buckets.get(bound, 0.0) + s.value
    return nodes


def p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound of the bucket holding the 99th percentile of what was observed
    between two cumulative histograms (None without observations)."""
    bounds = sorted(after)
    if not bounds:
        return None
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    if total <= 0:
        return None
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= 0.99 * total:
            return None if math.isinf(bound) else bound
    return None


class NodeStats:
    def __init__(self, registry: CollectorRegistry, now: Callable[[], float]) -> None:
        self.registry = registry
        self.now = now
        # Zero at creation: the first look gets the rates since the gateway started.
        self._samples: deque[tuple[float, dict[str, Totals]]] = deque([(now(), {})])

    def __repr__(self) -> str:
        return f"<NodeStats {len(self._samples)} samples>"

    def sample(self) -> dict[str, dict[str, Any]]:
        """Take a sample and return, per node: rate (requests/s), error_ratio, p99_seconds
        (None until two samples span MIN_SPAN), and the retries and ejections totals."""
        now = self.now()
        current = read(self.registry)
        self._samples.append((now, current))
        while len(self._samples) > 2 and self._samples[1][0] <= now - WINDOW:
            self._samples.popleft()
        then, old = self._samples[0]
        span = now - then
        out: dict[str, dict[str, Any]] = {}
        for name, totals in current.items():
            base = old.get(name, Totals())
            stats: dict[str, Any] = {"rate": None, "error_ratio": None, "p99_seconds": None,
                                     "window_seconds": round(span, 3),
                                     "retries": int(totals.retries),
                                     "ejections": int(totals.ejections)}
            if span >= MIN_SPAN:
                requests = totals.requests - base.requests
                stats["rate"] = requests / span
                stats["error_ratio"] = ((totals.errors - base.errors) / requests
                                        if requests > 0 else None)
                stats["p99_seconds"] = p99(base.buckets, totals.buckets)
            out[name] = stats
        return out
