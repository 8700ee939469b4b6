"""What a worker tells the supervisor, batched: every request's outcome (SLO accounting),
every try's (the warning detector), what is in flight on each node, what each client spent
of its rate limit, and the data plane's counters. A worker collects (``Outcomes``,
``Tries``) and sends ``build_report``; the supervisor applies it (gateway.app.tally).

A worker imports only the data plane: nothing here reaches the control plane."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.accounting import TRY_BUCKETS, try_bucket
from gateway.admission import Admission
from gateway.cluster import Cluster


class Outcomes:
    """The listener's OutcomeSink in a worker: counts by (status, failure)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, str | None]] = Counter()

    def record(self, status: int, failure: str | None) -> None:
        self.counts[(status, failure)] += 1

    def take(self) -> list[list[Any]]:
        out = [[status, failure, n] for (status, failure), n in self.counts.items()]
        self.counts.clear()
        return out


class Tries:
    """The router's PassiveObserver in a worker: per node, a latency histogram (the warning
    detector's buckets) and the failures."""

    __slots__ = ("nodes",)

    def __init__(self) -> None:
        self.nodes: dict[str, list[int]] = {}

    def record(self, node: str, seconds: float, error: bool) -> None:
        counts = self.nodes.get(node)
        if counts is None:
            counts = self.nodes[node] = [0] * (TRY_BUCKETS + 1)
        counts[try_bucket(seconds)] += 1
        if error:
            counts[TRY_BUCKETS] += 1

    def take(self) -> dict[str, list[int]]:
        out, self.nodes = self.nodes, {}
        return out


def dump_metrics(registry: CollectorRegistry) -> list[list[Any]]:
    """Every family of a worker's registry, cumulative: [name, type, help, samples]."""
    families = []
    for metric in registry.collect():
        samples = [[s.name, dict(s.labels), s.value] for s in metric.samples
                   if not s.name.endswith("_created")]
        families.append([metric.name, metric.type, metric.documentation, samples])
    return families


def build_report(outcomes: Outcomes, tries: Tries, cluster: Cluster, admission: Admission,
                 registry: CollectorRegistry) -> dict[str, Any]:
    report = {"type": "report", "outcomes": outcomes.take(), "tries": tries.take(),
              "in_flight": {n.name: n.in_flight for n in cluster},
              "metrics": dump_metrics(registry)}
    if admission.limits.enabled:
        report["spent"] = admission.take_spent()
        report["busy"] = admission.busy()
    return report
