"""The data plane's counters: what the traffic listener and the router count.

The series touched on every request (requests and latency, per class and per node)
are plain integers and bucket arrays bound once per node, exported by a collector at
scrape time: no ``.labels()`` lookup and no lock per request. The event loop is the
only writer and the scrape runs on it, so nothing can tear. The rarer counters
(retries, hedges, stalls, refusals) are ordinary prometheus_client counters, on the
registry the composition root hands in.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: 1 ms to 10 s: a proxy's answers live at the low end, its timeouts at the high end.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: Finer bounds (seconds) for judging one node's latency: the warning detector's p95 is
#: interpolated within them, and workers batch every try's latency by them.
TRY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4,
              0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
TRY_BUCKETS = len(TRY_BOUNDS) + 1


def try_bucket(seconds: float) -> int:
    """The TRY_BOUNDS bucket a try's latency falls in."""
    return bisect_left(TRY_BOUNDS, seconds)


def class_index(status: int) -> int:
    return status // 100 - 1 if 100 <= status < 600 else 4


class HotHistogram:
    """A latency histogram as a bucket array: observe() is a bisect and two adds."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class NodeMetrics:
    """The per-node series the proxy touches on every request, bound once."""

    __slots__ = ("by_class", "duration", "errors", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_class = [0] * len(CODE_CLASSES)
        self.errors = 0
        self.duration = HotHistogram()

    def observe(self, status: int, seconds: float) -> None:
        self.by_class[class_index(status)] += 1
        self.duration.observe(seconds)

    def error(self) -> None:
        """An attempt that got no answer at all."""
        self.errors += 1


class HotSeries(Collector):
    """Exports the hot-path counters and histograms at scrape time."""

    def __init__(self, accounting: Accounting) -> None:
        self._m = accounting

    def collect(self) -> Iterator[Metric]:
        m = self._m
        requests = CounterMetricFamily("hagw_requests", "Client requests answered, by status "
                                       "class", labels=["code_class"])
        for cls, count in zip(CODE_CLASSES, m.by_class, strict=True):
            requests.add_metric([cls], float(count))
        yield requests
        duration = HistogramMetricFamily(
            "hagw_request_duration_seconds", "Time from a client request to its response headers")
        duration.add_metric([], m.duration.buckets(), m.duration.total)
        yield duration
        upstream = CounterMetricFamily(
            "hagw_upstream_requests", "Requests sent to nodes, by node and status class "
            "(class 'error' when no answer came)", labels=["node", "code_class"])
        upstream_duration = HistogramMetricFamily(
            "hagw_upstream_request_duration_seconds", "Time a node took to send response "
            "headers", labels=["node"])
        for name, node in m.nodes.items():
            for cls, count in zip(CODE_CLASSES, node.by_class, strict=True):
                upstream.add_metric([name, cls], float(count))
            upstream.add_metric([name, "error"], float(node.errors))
            upstream_duration.add_metric([name], node.duration.buckets(), node.duration.total)
        yield upstream
        yield upstream_duration

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Accounting:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_class = [0] * len(CODE_CLASSES)
        self.duration = HotHistogram()
        self.nodes: dict[str, NodeMetrics] = {}
        registry.register(HotSeries(self))
        self.retries = Counter("hagw_upstream_retries", "Retries, by the node that failed and why",
                               ["node", "reason"], registry=registry)
        self.stalls = Counter(
            "hagw_upstream_stalls", "Nodes declared stalled by stall detection (no answer "
            "long past their own latency while other nodes answered)", ["node"],
            registry=registry)
        self.hedges = Counter(
            "hagw_upstream_hedges", "Idempotent requests also sent to a second node, by the "
            "node that held them and why (stall, per_try_timeout)", ["node", "reason"],
            registry=registry)
        self.gateway_errors = Counter(
            "hagw_gateway_errors", "Answers the gateway produced itself, by reason",
            ["reason"], registry=registry)
        self.admission_refused = Counter(
            "hagw_admission_refused", "Requests refused at the door: rate_limit (429) or shed "
            "(503, the gateway's concurrency limit)", ["reason"], registry=registry)
        self.retry_budget_exhausted = Counter(
            "hagw_retry_budget_exhausted", "Retries skipped because the retry budget was spent",
            registry=registry)
        self.trace_spans = Counter(
            "hagw_trace_spans", "Spans of sampled requests for the OTLP collector "
            "(tracing.otlp_endpoint), by fate: exported, failed (the collector refused them "
            "or could not be reached in time) or dropped (too many waiting)", ["result"],
            registry=registry)

    def node(self, name: str) -> NodeMetrics:
        bound = self.nodes.get(name)
        if bound is None:
            bound = self.nodes[name] = NodeMetrics(name)
        return bound

    def observe_request(self, status: int, seconds: float) -> None:
        self.by_class[class_index(status)] += 1
        self.duration.observe(seconds)

    def __repr__(self) -> str:
        return f"<Accounting {sum(self.by_class)} requests, {len(self.nodes)} nodes>"
