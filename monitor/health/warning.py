"""Warning signs: is a node degrading before it fails?

Three sources, any one of which makes a node WARNING: the node says so in its
health answer, its live traffic degrades over a sliding window (p95 latency or
error rate), or its probe latency trends up. A sign clears only once the metric
is well below its threshold (``CLEAR_FACTOR``): that gap, together with the
node's ``recover_after`` delay, keeps a node at the edge from flapping.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from gateway.accounting import TRY_BOUNDS, try_bucket
from gateway.clock import Clock
from gateway.config.schema import WarningConfig

#: A sign clears below this share of its threshold (hysteresis).
CLEAR_FACTOR = 0.8
#: Latency histogram bucket bounds in seconds; p95 is interpolated within a bucket.
_BOUNDS = TRY_BOUNDS


class _Second:
    __slots__ = ("count", "errors", "hist", "second")

    def __init__(self) -> None:
        self.second = -1
        self.count = 0
        self.errors = 0
        self.hist = [0] * (len(_BOUNDS) + 1)


class TrafficWindow:
    """One node's live traffic over the last ``window`` seconds, in one-second slots."""

    __slots__ = ("_slots", "clock")

    def __init__(self, window: float, clock: Clock) -> None:
        self.clock = clock
        self._slots = [_Second() for _ in range(max(1, int(window)))]

    def _slot(self) -> _Second:
        """This second's slot, emptied first if it last held an older second."""
        now = int(self.clock.monotonic())
        slot = self._slots[now % len(self._slots)]
        if slot.second != now:
            slot.second = now
            slot.count = slot.errors = 0
            slot.hist = [0] * (len(_BOUNDS) + 1)
        return slot

    def record(self, seconds: float, error: bool) -> None:
        slot = self._slot()
        slot.count += 1
        if error:
            slot.errors += 1
        slot.hist[try_bucket(seconds)] += 1

    def record_counts(self, hist: list[int], errors: int) -> None:
        """A batch of outcomes, bucketed by ``try_bucket`` (a worker's report)."""
        slot = self._slot()
        slot.count += sum(hist)
        slot.errors += errors
        for i, n in enumerate(hist):
            slot.hist[i] += n

    def reset(self) -> None:
        for slot in self._slots:
            slot.second = -1

    def totals(self) -> tuple[int, int, list[int]]:
        now = int(self.clock.monotonic())
        oldest = now - len(self._slots) + 1
        count = errors = 0
        hist = [0] * (len(_BOUNDS) + 1)
        for slot in self._slots:
            if oldest <= slot.second <= now:
                count += slot.count
                errors += slot.errors
                for i, n in enumerate(slot.hist):
                    hist[i] += n
        return count, errors, hist


def percentile(hist: list[int], q: float) -> float:
    """The q-quantile of a bucketed histogram, interpolated linearly inside its bucket."""
    total = sum(hist)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= rank:
            low = _BOUNDS[i - 1] if i > 0 else 0.0
            high = _BOUNDS[i] if i < len(_BOUNDS) else _BOUNDS[-1] * 2
            return low + (high - low) * ((rank - seen) / n)
        seen += n
    return _BOUNDS[-1]


@dataclass(frozen=True, slots=True)
class Verdict:
    sign: str | None
    clear: bool


class WarningDetector:
    """Per node: the traffic window, recent probe latencies and the last self-report."""

    def __init__(self, config: WarningConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.windows: dict[str, TrafficWindow] = {}
        self._probe_latency: dict[str, deque[float]] = {}
        self._self_report: dict[str, str | None] = {}

    def window(self, node: str) -> TrafficWindow:
        window = self.windows.get(node)
        if window is None:
            window = self.windows[node] = TrafficWindow(self.config.window, self.clock)
        return window

    def record(self, node: str, seconds: float, error: bool) -> None:
        """One try's outcome on ``node`` (the router's PassiveObserver)."""
        self.window(node).record(seconds, error)

    def forget(self, node: str) -> None:
        self.windows.pop(node, None)
        self._probe_latency.pop(node, None)
        self._self_report.pop(node, None)

    def reset(self, node: str) -> None:
        """Forget old evidence, e.g. when a node is readmitted after a redeploy."""
        if node in self.windows:
            self.windows[node].reset()
        self._probe_latency.pop(node, None)

    def observe_probe(self, node: str, latency: float, warn: str | None) -> None:
        samples = self._probe_latency.get(node)
        if samples is None:
            samples = self._probe_latency[node] = deque(maxlen=self.config.probe_samples)
        samples.append(latency)
        self._self_report[node] = warn

    def evaluate(self, node: str) -> Verdict:
        cfg = self.config
        signs: list[str] = []
        clear = True
        report = self._self_report.get(node)
        if report:
            signs.append(report)
        count, errors, hist = self.window(node).totals()
        if count >= cfg.min_requests:
            p95 = percentile(hist, 0.95)
            rate = errors / count
            if p95 > cfg.latency_p95:
                signs.append(f"p95 latency {p95 * 1000:.0f}ms > {cfg.latency_p95 * 1000:.0f}ms "
                             f"over {count} requests")
            elif p95 >= cfg.latency_p95 * CLEAR_FACTOR:
                clear = False
            if rate > cfg.error_rate:
                signs.append(f"error rate {rate:.1%} > {cfg.error_rate:.1%} over {count} requests")
            elif rate >= cfg.error_rate * CLEAR_FACTOR and rate > 0:
                clear = False
        samples = self._probe_latency.get(node)
        if samples and len(samples) >= min(3, cfg.probe_samples):
            median = statistics.median(samples)
            if median > cfg.probe_latency:
                signs.append(f"probe latency median {median * 1000:.0f}ms > "
                             f"{cfg.probe_latency * 1000:.0f}ms")
            elif median >= cfg.probe_latency * CLEAR_FACTOR:
                clear = False
        if signs:
            return Verdict("; ".join(signs), False)
        return Verdict(None, clear)
