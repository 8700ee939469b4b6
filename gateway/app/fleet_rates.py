"""Rate limits for the whole fleet (``rate_limit: {scope: fleet}`` with ``peers``).

Every ``EXCHANGE_EVERY`` this instance sends what each client spent here (its own
process's buckets, or its workers' reports) to the fleet's per-second counters in Redis
(``monitor.peers.counts.FleetRateLimit``) and gets back what the other instances spent
on the same clients meanwhile, which it charges to its buckets (its workers' too), as
the workers of one instance already charge each other. A client is then held to
``rate`` and ``burst`` across the fleet, give or take what it can spend on each instance
within one exchange. While Redis is away the buckets are each instance's own again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from monitor.peers.connection import PeersUnavailable
from monitor.peers.counts import FleetRateLimit
from monitor.ports import Spawn

log = logging.getLogger("hagw.peers.rates")

#: How often spending is exchanged (the workers report to their supervisor as often).
EXCHANGE_EVERY = 0.1


class FleetRates:
    def __init__(self, counts: FleetRateLimit, *, active: Callable[[], bool],
                 charge: Callable[[dict[str, int]], None], spawn: Spawn,
                 take: Callable[[], dict[str, int]] | None = None) -> None:
        self.counts = counts
        #: Whether the config asks for it now (``rate_limit.enabled`` and scope fleet).
        self.active = active
        #: Charges the rest of the fleet's spending to this instance's buckets.
        self.charge = charge
        #: This process's own spending since the last call (a single process), if any.
        self.take = take
        self.spawn = spawn
        self._spent: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"<FleetRates {'on' if self.active() else 'off'} pending={len(self._spent)}>"

    def add(self, spent: dict[str, int]) -> None:
        """A worker's report: what its clients spent."""
        if spent and self.active():
            self._spent.update(spent)

    async def exchange(self) -> dict[str, int]:
        """One round: returns what the others spent (already charged here)."""
        if self.take is not None:
            self._spent.update(self.take())
        spent, self._spent = dict(self._spent), Counter()
        if not spent or not self.active():
            return {}
        others = await self.counts.exchange(spent)
        if others:
            self.charge(others)
        return others

    def start(self) -> None:
        if self._task is None:
            self._task = self.spawn(self._run(), name="fleet rate limits")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.exchange()
            except PeersUnavailable as exc:  # local buckets until Redis is back
                log.debug("fleet rate limits: %s", exc)
            except Exception:
                log.exception("fleet rate limits failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXCHANGE_EVERY):
                    await self._stop.wait()
