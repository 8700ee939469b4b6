"""What the supervisor does with its workers' reports (gateway.app.report): outcomes into
the SLO accounting, tries into the warning detector, the data plane's counters summed over
workers into one /metrics (``WorkerMetrics``), and rate-limit spending passed on to the
other workers (``ClientLimits``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.accounting import TRY_BUCKETS
from monitor.health.warning import WarningDetector


class SloCounts(Protocol):
    """Where the requests' outcomes are counted (``SloTracker``, or a fleet's budget)."""

    def record(self, status: int, failure: str | None = None, count: int = 1) -> int: ...


def apply_report(report: dict[str, Any], slo: SloCounts, detector: WarningDetector) -> None:
    """A worker's batch into the supervisor's SLO accounting and warning detector (the
    in-flight counts and metrics are the hub's: they are per worker)."""
    for status, failure, count in report.get("outcomes", ()):
        slo.record(int(status), failure, int(count))
    for node, counts in report.get("tries", {}).items():
        detector.window(node).record_counts(counts[:TRY_BUCKETS], counts[TRY_BUCKETS])


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
