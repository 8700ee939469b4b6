"""Prometheus metrics: one CollectorRegistry per gateway, never the global one.

The series touched on every request (requests and latency, per class and per
node) are plain integers and bucket arrays bound once per node, exported by a
collector at scrape time: no ``.labels()`` lookup and no lock per request. The
event loop is the only writer and the scrape runs on it, so nothing can tear.
Node gauges are read from the cluster at scrape time too.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.node import NodeState
from gateway.slo import AVAILABILITY_WINDOWS, BURN_WINDOWS, SloTracker
from gateway.uptime import NodeUptime

#: 1 ms to 10 s: a proxy's answers live at the low end, its timeouts at the high end.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


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

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

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


class NodeGauges(Collector):
    """hagw_node_* and hagw_cluster_* gauges, computed from the cluster at scrape time."""

    def __init__(self, nodes: Callable[[], Iterator[object]], floor: Callable[[], int],
                 uptime: NodeUptime) -> None:
        self._nodes = nodes
        self._floor = floor
        self._uptime = uptime

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("hagw_node_state", "1 for the state each node is in, 0 for "
                                  "the others", labels=["node", "state"])
        up = GaugeMetricFamily("hagw_node_up", "1 if the node takes new requests", labels=["node"])
        in_flight = GaugeMetricFamily("hagw_node_in_flight", "Requests in flight to the node",
                                      labels=["node"])
        weight = GaugeMetricFamily("hagw_node_weight", "The node's effective balancing weight "
                                   "(slow start and warning cuts included)", labels=["node"])
        total = serving = 0
        for node in self._nodes():
            snap = node.snapshot(public=True)  # type: ignore[attr-defined]
            name = snap["name"]
            for s in NodeState:
                state.add_metric([name, s.value], 1.0 if snap["state"] == s.value else 0.0)
            up.add_metric([name], 1.0 if snap["serving"] else 0.0)
            in_flight.add_metric([name], float(snap["in_flight"]))
            weight.add_metric([name], float(snap["effective_weight"]))
            total += 1
            serving += bool(snap["serving"])
        yield from (state, up, in_flight, weight)
        rotation = CounterMetricFamily(
            "hagw_node_rotation_seconds", "Time each node spent serving, or out of rotation "
            "for planned or unplanned reasons", labels=["node", "status"])
        for name, cats in self._uptime.totals().items():
            for category, seconds in cats.items():
                rotation.add_metric([name, category], seconds)
        yield rotation
        in_state = CounterMetricFamily("hagw_node_state_seconds", "Time each node spent in "
                                       "each state since the gateway started",
                                       labels=["node", "state"])
        for name, states in self._uptime.states().items():
            for state_name, seconds in states.items():
                in_state.add_metric([name, state_name], seconds)
        yield in_state
        yield GaugeMetricFamily("hagw_cluster_nodes", "Nodes in the config", value=total)
        yield GaugeMetricFamily("hagw_cluster_serving_nodes", "Nodes taking new requests",
                                value=serving)
        yield GaugeMetricFamily("hagw_cluster_min_healthy_nodes",
                                "The min_healthy floor, in nodes", value=self._floor())

    def describe(self) -> Iterator[Metric]:
        return iter(())


class SloGauges(Collector):
    """The gateway's own SLO accounting, read at scrape time."""

    def __init__(self, tracker: SloTracker) -> None:
        self._tracker = tracker

    def collect(self) -> Iterator[Metric]:
        slo = self._tracker
        # One scan per distinct window length (1h and 30d serve two gauges each).
        counts = {seconds: slo.window(seconds) for seconds in
                  {*AVAILABILITY_WINDOWS.values(), *BURN_WINDOWS.values(), slo.config.window}}
        requests = CounterMetricFamily(
            "hagw_slo_requests", "Client requests by how they count for the SLO (excluded: "
            "planned maintenance, clients that hung up)", labels=["result"])
        for result, value in zip(("good", "bad", "excluded"), slo.totals, strict=True):
            requests.add_metric([result], float(value))
        yield requests
        yield GaugeMetricFamily("hagw_slo_target_ratio", "The availability objective",
                                value=slo.config.target)
        availability = GaugeMetricFamily("hagw_sli_availability_ratio",
                                         "Good / (good + bad) over the window", labels=["window"])
        for name, seconds in AVAILABILITY_WINDOWS.items():
            availability.add_metric([name], counts[seconds].availability)
        yield availability
        yield GaugeMetricFamily("hagw_error_budget_remaining_ratio",
                                "Share of the SLO window's error budget left",
                                value=slo.budget_left(counts[slo.config.window]))
        burn = GaugeMetricFamily("hagw_burn_rate", "Error ratio over the window divided by the "
                                 "allowed error ratio", labels=["window"])
        for name, seconds in BURN_WINDOWS.items():
            burn.add_metric([name], slo.burn(counts[seconds]))
        yield burn

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.by_class = [0] * len(CODE_CLASSES)
        self.duration = HotHistogram()
        self.nodes: dict[str, NodeMetrics] = {}
        registry.register(HotSeries(self))
        self.retries = Counter("hagw_upstream_retries", "Retries, by the node that failed and why",
                               ["node", "reason"], registry=registry)
        self.ejections = Counter("hagw_upstream_ejections", "Outlier-detection ejections",
                                 ["node"], registry=registry)
        self.health_checks = Counter("hagw_health_checks", "Active health checks, by result",
                                     ["node", "result"], registry=registry)
        self.health_check_duration = Histogram(
            "hagw_health_check_duration_seconds", "How long active health checks took",
            ["node"], buckets=LATENCY_BUCKETS, registry=registry)
        self.transitions = Counter(
            "hagw_node_transitions", "Node state changes, by from, to and what caused them",
            ["from_state", "to_state", "reason_class"], registry=registry)
        self.drains_refused = Counter(
            "hagw_drains_refused", "Automatic drains refused because of the min_healthy floor",
            ["node"], registry=registry)
        self.reloads = Counter("hagw_config_reload", "Config reloads, by result", ["result"],
                               registry=registry)
        self.build_info = Gauge("hagw_build_info", "Always 1; the version label says which build",
                                ["version"], registry=registry)
        self.build_info.labels(__version__).set(1)
        self.gateway_errors = Counter(
            "hagw_gateway_errors", "Answers the gateway produced itself, by reason",
            ["reason"], registry=registry)
        self.admission_refused = Counter(
            "hagw_admission_refused", "Requests refused at the door: rate_limit (429) or shed "
            "(503, the gateway's concurrency limit)", ["reason"], registry=registry)
        self.stalls = Counter(
            "hagw_upstream_stalls", "Nodes declared stalled by stall detection (no answer "
            "long past their own latency while other nodes answered)", ["node"],
            registry=registry)
        self.hedges = Counter(
            "hagw_upstream_hedges", "Idempotent requests also sent to a second node, by the "
            "node that held them and why (stall, per_try_timeout)", ["node", "reason"],
            registry=registry)
        self.retry_budget_exhausted = Counter(
            "hagw_retry_budget_exhausted", "Retries skipped because the retry budget was spent",
            registry=registry)
    def node(self, name: str) -> NodeMetrics:
        bound = self.nodes.get(name)
        if bound is None:
            bound = self.nodes[name] = NodeMetrics(name)
        return bound

    def observe_request(self, status: int, seconds: float) -> None:
        self.by_class[class_index(status)] += 1
        self.duration.observe(seconds)

    def watch(self, nodes: Callable[[], Iterator[object]], floor: Callable[[], int],
              uptime: NodeUptime, slo: SloTracker) -> None:
        self.registry.register(NodeGauges(nodes, floor, uptime))
        self.registry.register(SloGauges(slo))
