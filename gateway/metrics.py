"""Prometheus metrics: one CollectorRegistry per gateway, never the global one.

Hot-path series are bound once per node (``NodeMetrics``) instead of calling
``.labels()`` per request. Node gauges are read from the cluster at scrape
time, so they cost nothing per request and vanish with removed nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.node import NodeState

#: 1 ms to 10 s: a proxy's answers live at the low end, its timeouts at the high end.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def code_class(status: int) -> str:
    return CODE_CLASSES[status // 100 - 1] if 100 <= status < 600 else "5xx"


class NodeMetrics:
    """The per-node series the proxy touches on every request, bound once."""

    __slots__ = ("by_class", "duration", "error", "name")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self.by_class = {cls: metrics.upstream_requests.labels(name, cls) for cls in CODE_CLASSES}
        self.error = metrics.upstream_requests.labels(name, "error")
        self.duration = metrics.upstream_duration.labels(name)

    def observe(self, status: int, seconds: float) -> None:
        self.by_class[code_class(status)].inc()
        self.duration.observe(seconds)


class NodeGauges(Collector):
    """hagw_node_* gauges, computed from the cluster when Prometheus scrapes."""

    def __init__(self, nodes: Callable[[], Iterator[object]]) -> None:
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("hagw_node_state", "1 for the state each node is in, 0 for "
                                  "the others", labels=["node", "state"])
        up = GaugeMetricFamily("hagw_node_up", "1 if the node takes new requests", labels=["node"])
        in_flight = GaugeMetricFamily("hagw_node_in_flight", "Requests in flight to the node",
                                      labels=["node"])
        weight = GaugeMetricFamily("hagw_node_weight", "The node's effective balancing weight "
                                   "(slow start and warning cuts included)", labels=["node"])
        for node in self._nodes():
            snap = node.snapshot(public=True)  # type: ignore[attr-defined]
            name = snap["name"]
            for s in NodeState:
                state.add_metric([name, s.value], 1.0 if snap["state"] == s.value else 0.0)
            up.add_metric([name], 1.0 if snap["serving"] else 0.0)
            in_flight.add_metric([name], float(snap["in_flight"]))
            weight.add_metric([name], float(snap["effective_weight"]))
        yield from (state, up, in_flight, weight)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("hagw_requests", "Client requests answered, by status class",
                                ["code_class"], registry=registry)
        self.request_duration = Histogram(
            "hagw_request_duration_seconds", "Time from a client request to its response headers",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_requests = Counter(
            "hagw_upstream_requests", "Requests sent to nodes, by node and status class "
            "(class 'error' when no answer came)", ["node", "code_class"], registry=registry)
        self.upstream_duration = Histogram(
            "hagw_upstream_request_duration_seconds", "Time a node took to send response headers",
            ["node"], buckets=LATENCY_BUCKETS, registry=registry)
        self.retries = Counter("hagw_upstream_retries", "Retries, by the node that failed and why",
                               ["node", "reason"], registry=registry)
        self.ejections = Counter("hagw_upstream_ejections", "Outlier-detection ejections",
                                 ["node"], registry=registry)
        self.health_checks = Counter("hagw_health_checks", "Active health checks, by result",
                                     ["node", "result"], registry=registry)
        self.reloads = Counter("hagw_config_reload", "Config reloads, by result", ["result"],
                               registry=registry)
        self.build_info = Gauge("hagw_build_info", "Always 1; the version label says which build",
                                ["version"], registry=registry)
        self.build_info.labels(__version__).set(1)
        self.gateway_errors = Counter(
            "hagw_gateway_errors", "Answers the gateway produced itself, by reason",
            ["reason"], registry=registry)
        self.retry_budget_exhausted = Counter(
            "hagw_retry_budget_exhausted", "Retries skipped because the retry budget was spent",
            registry=registry)
        self._by_class = {cls: self.requests.labels(cls) for cls in CODE_CLASSES}
        self._nodes: dict[str, NodeMetrics] = {}

    def node(self, name: str) -> NodeMetrics:
        bound = self._nodes.get(name)
        if bound is None:
            bound = self._nodes[name] = NodeMetrics(self, name)
        return bound

    def observe_request(self, status: int, seconds: float) -> None:
        self._by_class[code_class(status)].inc()
        self.request_duration.observe(seconds)

    def watch_nodes(self, nodes: Callable[[], Iterator[object]]) -> None:
        self.registry.register(NodeGauges(nodes))
