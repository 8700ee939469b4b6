"""What workers tell the supervisor, batched: every request's outcome (SLO accounting),
every try's (the warning detector), what is in flight on each node, and the data plane's
counters. A worker collects (``Outcomes``, ``Tries``); the supervisor applies
(``apply_report``) and exports the counters summed over workers (``WorkerMetrics``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.admission import Admission
from gateway.cluster import Cluster
from monitor.health.warning import BUCKETS, WarningDetector, bucket_of
from monitor.slo import SloTracker


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
            counts = self.nodes[node] = [0] * (BUCKETS + 1)
        counts[bucket_of(seconds)] += 1
        if error:
            counts[BUCKETS] += 1

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


class ClientLimits:
    """The supervisor's view of each worker's rate-limit use, to keep the workers' token
    buckets in step (gateway.admission): what one worker's clients spent is charged to
    every other worker, and each is told what the others have in flight."""

    def __init__(self) -> None:
        self.busy: dict[str, dict[str, int]] = {}

    def reported(self, worker: str, report: dict[str, Any],
                 others: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(worker, message) for every other worker, after ``worker`` reported."""
        if "spent" not in report:
            return
        spent = report["spent"]
        changed = self.busy.get(worker, {}) != report["busy"]
        self.busy[worker] = report["busy"]
        for other in others:
            if other == worker or not (spent or changed):
                continue
            message: dict[str, Any] = {"type": "clients", "spent": spent}
            if changed:
                message["busy"] = self.busy_elsewhere(other)
            yield other, message

    def busy_elsewhere(self, worker: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for name, busy in self.busy.items():
            if name != worker:
                for key, count in busy.items():
                    totals[key] = totals.get(key, 0) + count
        return totals

    def forget(self, worker: str) -> None:
        self.busy.pop(worker, None)


def apply_report(report: dict[str, Any], slo: SloTracker, detector: WarningDetector) -> None:
    """A worker's batch into the supervisor's SLO accounting and warning detector (the
    in-flight counts and metrics are the hub's: they are per worker)."""
    for status, failure, count in report.get("outcomes", ()):
        slo.record(int(status), failure, int(count))
    for node, counts in report.get("tries", {}).items():
        detector.window(node).record_counts(counts[:BUCKETS], counts[BUCKETS])


Key = tuple[str, str, tuple[tuple[str, str], ...]]  # (family, sample, labels)


class WorkerMetrics(Collector):
    """The data plane's series, summed over every worker (those gone included, from their
    last report), so /metrics has one series per name and labels, never one per pid."""

    def __init__(self) -> None:
        self.live: dict[str, list[list[Any]]] = {}
        #: What workers that exited had counted, kept so totals never go down.
        self.retired: dict[Key, float] = {}
        self._families: dict[str, tuple[str, str]] = {}

    def update(self, worker: str, families: list[list[Any]]) -> None:
        self.live[worker] = families
        for name, kind, doc, _samples in families:
            self._families[name] = (kind, doc)

    def count(self, worker: str, family: str) -> float:
        """The sum of counter ``family``'s samples, as worker ``worker`` last reported."""
        return sum(float(value) for name, _kind, _doc, samples in self.live.get(worker, ())
                   if name == family
                   for sample, _labels, value in samples if sample == f"{family}_total")

    def retire(self, worker: str) -> None:
        for name, kind, _doc, samples in self.live.pop(worker, None) or ():
            if kind == "gauge":
                continue  # a gauge of a process that is gone is gone with it
            for sample, labels, value in samples:
                key = (name, sample, tuple(sorted(labels.items())))
                self.retired[key] = self.retired.get(key, 0.0) + value

    def collect(self) -> Iterator[Metric]:
        # Samples keep the order a worker's registry gave them (histogram buckets by le).
        totals: dict[Key, float] = {}
        for families in self.live.values():
            for name, _kind, _doc, samples in families:
                for sample, labels, value in samples:
                    key = (name, sample, tuple(sorted(labels.items())))
                    totals[key] = totals.get(key, 0.0) + value
        for key, value in self.retired.items():
            totals[key] = totals.get(key, 0.0) + value
        by_family: dict[str, list[tuple[str, dict[str, str], float]]] = {}
        for (name, sample, labels), value in totals.items():
            by_family.setdefault(name, []).append((sample, dict(labels), value))
        for name, samples in by_family.items():
            kind, doc = self._families.get(name, ("untyped", ""))
            metric = Metric(name, doc, kind)
            for sample, labels, value in samples:
                metric.add_sample(sample, labels, value)
            yield metric

    def describe(self) -> Iterable[Metric]:
        return iter(())
