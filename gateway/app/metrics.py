"""Prometheus metrics of the whole process: one CollectorRegistry per gateway, never the
global one. The data plane's counters are gateway.accounting's; this module adds what
the composition root counts (transitions, drain refusals, ejections, reloads) and the
gauges computed at scrape time from the cluster and the SLO accounting."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.app.processes import register_process_metrics
from gateway.node import NodeState
from monitor.slo import AVAILABILITY_WINDOWS, BURN_WINDOWS, SloTracker
from monitor.uptime import NodeUptime

# No *_created series: a gauge per counter that dashboards never use (README "Metrics").
disable_created_metrics()  # type: ignore[no-untyped-call]


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


class ControlMetrics:
    """The series the composition root keeps, from events on the bus (gateway.app.reactions)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ejections = Counter("hagw_upstream_ejections", "Outlier-detection ejections",
                                 ["node"], registry=registry)
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
        register_process_metrics(registry)

    def watch(self, nodes: Callable[[], Iterator[object]], floor: Callable[[], int],
              uptime: NodeUptime, slo: SloTracker) -> None:
        self.registry.register(NodeGauges(nodes, floor, uptime))
        self.registry.register(SloGauges(slo))
