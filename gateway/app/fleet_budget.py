"""The SLO as the fleet counts it (``peers``): what the deploy gate, the incident watch
and the status page read.

Every instance keeps its own ``SloTracker`` (persisted in its state_dir, behind its
``hagw_slo_*`` metrics, which Prometheus sums across instances itself). ``FleetBudget``
adds each request it counts to the fleet's per-minute and per-hour buckets in Redis
(``monitor.peers.counts.FleetSlo``, flushed every ``FLUSH_EVERY``) and, after each
flush, reads back the fleet's windows that its readers ask for. Reads are synchronous,
from that copy, so the figures are at most one flush old; a window nobody reads
regularly, or any window while Redis has not answered for ``STALE_AFTER`` rounds, is this
instance's own (the figures on the status page say which: ``scope``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from gateway.clock import Clock
from gateway.config.schema import SloConfig
from monitor.peers.connection import PeersUnavailable
from monitor.peers.counts import FleetSlo
from monitor.ports import Spawn
from monitor.slo import AVAILABILITY_WINDOWS, BURN_WINDOWS, DAILY_HISTORY, Counts, SloTracker

log = logging.getLogger("hagw.peers.slo")

#: How often this instance's counts go to Redis and the fleet's come back.
FLUSH_EVERY = 5.0
#: Fleet figures older than this many rounds are not used (Redis away): this instance's
#: instead.
STALE_AFTER = 3


class FleetBudget:
    """``ErrorBudget`` (and the outcome sink) over this instance's tracker and the
    fleet's buckets."""

    def __init__(self, local: SloTracker, shared: FleetSlo, *, clock: Clock, spawn: Spawn,
                 windows: Iterable[float] = (), every: float = FLUSH_EVERY) -> None:
        self.local = local
        self.shared = shared
        self.clock = clock
        self.spawn = spawn
        #: How often the counts go to Redis and the fleet's come back.
        self.every = every
        #: The windows read back after each flush (the SLO window and the status page's).
        self.windows = sorted({*AVAILABILITY_WINDOWS.values(), *BURN_WINDOWS.values(),
                               local.config.window, *windows})
        self._fleet: dict[float, Counts] = {}
        self._read_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"<FleetBudget {self.scope} windows={len(self._fleet)}>"

    @property
    def config(self) -> SloConfig:
        return self.local.config

    @property
    def scope(self) -> str:
        """"fleet" while the fleet's figures are fresh, else "instance"."""
        fresh = (self._read_at is not None
                 and self.clock.monotonic() - self._read_at <= STALE_AFTER * self.every)
        return "fleet" if fresh else "instance"

    # -- counting (the hot path: synchronous, no I/O) ------------------------------------------

    def record(self, status: int, failure: str | None = None, count: int = 1) -> int:
        kind = self.local.record(status, failure, count)
        self.shared.add(kind, count)
        return kind

    def classify(self, status: int, failure: str | None) -> int:
        return self.local.classify(status, failure)

    # -- reading ----------------------------------------------------------------------------

    @property
    def totals(self) -> list[int]:
        """This instance's since it started (deltas over a deploy's bake are the
        leader's own traffic; the budget it is gated on is the fleet's)."""
        return self.local.totals

    def window(self, seconds: float) -> Counts:
        if self.scope == "fleet":
            counts = self._fleet.get(seconds)
            if counts is not None:
                return counts
        return self.local.window(seconds)

    def availability(self, seconds: float) -> float:
        return self.window(seconds).availability

    def burn_rate(self, seconds: float) -> float:
        return self.local.burn(self.window(seconds))

    def burn(self, counts: Counts) -> float:
        return self.local.burn(counts)

    def budget_remaining(self) -> float:
        return self.local.budget_left(self.window(self.local.config.window))

    def budget_left(self, counts: Counts) -> float:
        return self.local.budget_left(counts)

    def daily(self, days: int = DAILY_HISTORY) -> list[tuple[int, Counts]]:
        """This instance's days (the fleet keeps minute and hour buckets only)."""
        return self.local.daily(days)

    # -- the flush and read loop -------------------------------------------------------------

    async def refresh(self) -> None:
        """Send this instance's counts, then read the fleet's windows back (PeersUnavailable
        keeps the counts for the next round)."""
        await self.shared.flush()
        fleet = {seconds: await self.shared.window(seconds) for seconds in self.windows}
        self._fleet = fleet
        self._read_at = self.clock.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = self.spawn(self._run(), name="fleet SLO counts")

    async def close(self) -> None:
        """Stop the loop and send what is left, if Redis answers."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(PeersUnavailable):
            await self.shared.flush()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.refresh()
            except PeersUnavailable as exc:
                log.debug("fleet SLO counts: %s", exc)
            except Exception:
                log.exception("fleet SLO counts failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self._stop.wait()
