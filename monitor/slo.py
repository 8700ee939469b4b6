"""SLO accounting: every client request counted good, bad or excluded, in time buckets.

The gateway keeps its own record (not only Prometheus's) so the status page, the
deploy gate and incidents can read availability, error budget and burn rate
directly, and so a restart does not wipe history: buckets are persisted under
``state_dir``. Counts are exact; windows are exact to the bucket (one minute for
windows up to three days, one hour beyond, one day for the 90-day history).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config.schema import SloConfig

GOOD, BAD, EXCLUDED = 0, 1, 2
MINUTE, HOUR, DAY = 60, 3600, 86400
#: Minute buckets cover windows up to this long; longer windows use hour buckets.
MINUTE_SPAN = 3 * DAY
DAILY_HISTORY = 90
#: Windows reported as hagw_sli_availability_ratio and hagw_burn_rate.
AVAILABILITY_WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
BURN_WINDOWS = {"5m": 5 * MINUTE, "30m": 30 * MINUTE, "1h": HOUR, "6h": 6 * HOUR, "1d": DAY,
                "3d": 3 * DAY}

#: Why the gateway answered a request itself; see Proxy. "client_closed": the client left.
CHARGED_FAILURES = frozenset({"reset", "timeout", "no_node", "upstream", "shed"})


@dataclass(frozen=True, slots=True)
class Counts:
    good: int = 0
    bad: int = 0
    excluded: int = 0

    @property
    def total(self) -> int:
        """Requests that count for the SLI (excluded ones do not)."""
        return self.good + self.bad

    @property
    def availability(self) -> float:
        return self.good / self.total if self.total else 1.0


Row = tuple[int, int, int, int]  # (bucket start, good, bad, excluded)


class _Buckets:
    """Counts per fixed-size time bucket, keyed by the bucket's start (Unix seconds)."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self.data: dict[int, list[int]] = {}
        self.dirty: set[int] = set()

    def add(self, at: float, counts: list[int]) -> None:
        start = int(at // self.size) * self.size
        bucket = self.data.get(start)
        if bucket is None:
            bucket = self.data[start] = [0, 0, 0]
        for i in range(3):
            bucket[i] += counts[i]
        self.dirty.add(start)

    def load(self, rows: Iterable[Row]) -> None:
        for start, good, bad, excluded in rows:
            self.data[start] = [good, bad, excluded]

    def sum(self, since: float, now: float) -> list[int]:
        out = [0, 0, 0]
        first = int(since // self.size) * self.size
        for start, bucket in self.data.items():
            if first <= start <= now:
                for i in range(3):
                    out[i] += bucket[i]
        return out

    def prune(self, now: float) -> list[int]:
        cutoff = now - self.keep
        old = [s for s in self.data if s + self.size < cutoff]
        for start in old:
            del self.data[start]
            self.dirty.discard(start)
        return old

    def take_dirty(self) -> list[Row]:
        rows = [(s, *self.data[s]) for s in sorted(self.dirty) if s in self.data]
        self.dirty.clear()
        return rows  # type: ignore[return-value]


class SloTracker:
    """Synchronous and I/O-free; the runtime persists ``take_dirty()`` periodically."""

    def __init__(self, config: SloConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.minutes = _Buckets(MINUTE, MINUTE_SPAN + HOUR)
        self.hours = _Buckets(HOUR, int(max(config.window, 30 * DAY)) + DAY)
        self.days = _Buckets(DAY, (DAILY_HISTORY + 1) * DAY)
        #: Since this process started, for the hagw_slo_requests_total counter.
        self.totals = [0, 0, 0]
        self._pending = [0, 0, 0]
        self._pending_minute = -1

    # -- hot path ------------------------------------------------------------------------

    def classify(self, status: int, failure: str | None) -> int:
        if failure == "maintenance":
            return BAD if self.config.count_maintenance and status >= 500 else EXCLUDED
        if failure == "client_closed":
            return EXCLUDED
        if status >= 500 or failure in CHARGED_FAILURES or status in self.config.bad_statuses:
            return BAD
        return GOOD

    def record(self, status: int, failure: str | None = None, count: int = 1) -> int:
        """``count`` requests answered ``status`` (a worker reports them in batches)."""
        kind = self.classify(status, failure)
        self.totals[kind] += count
        minute = int(self.clock.time() // MINUTE)
        if minute != self._pending_minute:
            self._fold()
            self._pending_minute = minute
        self._pending[kind] += count
        return kind

    def _fold(self) -> None:
        """Move the current minute's counts into the buckets (cheap, once a minute)."""
        pending = self._pending
        if pending == [0, 0, 0]:
            return
        at = self._pending_minute * MINUTE
        self.minutes.add(at, pending)
        self.hours.add(at, pending)
        self.days.add(at, pending)
        self._pending = [0, 0, 0]

    # -- reading -------------------------------------------------------------------------

    def window(self, seconds: float) -> Counts:
        self._fold()
        now = self.clock.time()
        since = now - seconds
        buckets = self.minutes if seconds <= MINUTE_SPAN else self.hours
        good, bad, excluded = buckets.sum(since, now)
        return Counts(good, bad, excluded)

    def availability(self, seconds: float) -> float:
        return self.window(seconds).availability

    def burn_rate(self, seconds: float) -> float:
        return self.burn(self.window(seconds))

    def burn(self, counts: Counts) -> float:
        """How fast the budget burns: 1.0 spends exactly the budget over the SLO window."""
        if not counts.total:
            return 0.0
        return (counts.bad / counts.total) / self.allowed_error

    @property
    def allowed_error(self) -> float:
        return max(1e-12, 1.0 - self.config.target)

    def budget_remaining(self) -> float:
        return self.budget_left(self.window(self.config.window))

    def budget_left(self, counts: Counts) -> float:
        """Share of the error budget ``counts`` (the SLO window's) leave (negative once
        overspent)."""
        if not counts.total:
            return 1.0
        return 1.0 - counts.bad / (counts.total * self.allowed_error)

    def daily(self, days: int = DAILY_HISTORY) -> list[tuple[int, Counts]]:
        """One entry per UTC day, oldest first, days without traffic included."""
        self._fold()
        today = int(self.clock.time() // DAY) * DAY
        out = []
        for i in range(days - 1, -1, -1):
            start = today - i * DAY
            bucket = self.days.data.get(start, [0, 0, 0])
            out.append((start, Counts(*bucket)))
        return out

    # -- persistence ----------------------------------------------------------------------

    def load(self, minutes: Iterable[Row], hours: Iterable[Row], days: Iterable[Row]) -> None:
        self.minutes.load(minutes)
        self.hours.load(hours)
        self.days.load(days)

    def take_dirty(self) -> tuple[list[Row], list[Row], list[Row], float]:
        """Changed buckets to write, and the time before which rows may be deleted."""
        self._fold()
        now = self.clock.time()
        for buckets in (self.minutes, self.hours, self.days):
            buckets.prune(now)
        return (self.minutes.take_dirty(), self.hours.take_dirty(), self.days.take_dirty(), now)
