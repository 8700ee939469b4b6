"""Counts of the whole fleet: SLO buckets, and per-client request counts for rate limits.

``FleetSlo``: each instance adds its good/bad/excluded deltas locally (synchronous, on
the hot path) and ``flush()`` adds them, in one MULTI/EXEC, to per-minute and per-hour
hashes (``HINCRBY {prefix}:slo:m:<start> good N ...``) that expire once no window reads
them (minutes three days and an hour after they start, hours the SLO window and a day
after, as ``monitor.slo.SloTracker`` keeps them). ``window(seconds)`` sums the fleet's buckets
server-side, minute buckets up to three days and hour buckets beyond, plus this
instance's deltas not flushed yet. Deltas that could not be flushed (Redis down) are
kept and sent later into the buckets of the minute they happened in. A flush whose
answer was lost after Redis applied it is sent again: counts are then at least once.

``FleetRateLimit``: Envoy's ratelimit service's fixed windows. For each client key, in
one pipelined round trip for a whole batch of clients: ``INCRBY {prefix}:rl:<second>:
<client> N`` and ``EXPIRE`` two seconds; the replies are the fleet-wide counts of the
current one-second window. The window is the wall-clock second, so the instances'
clocks must agree (NTP); a client whose counts straddle instances sees at worst one
window's skew.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from gateway.clock import Clock
from gateway.config.schema import SloConfig
from monitor.peers.connection import PeerLink
from monitor.slo import BAD, DAY, EXCLUDED, GOOD, HOUR, MINUTE, MINUTE_SPAN, Counts

log = logging.getLogger("hagw.peers.counts")

FIELDS = ("good", "bad", "excluded")
#: A rate-limit window's key outlives its second by this much (clock skew, late readers).
RATE_KEY_TTL = 2

#: KEYS: none. ARGV: key prefix, first bucket start, last bucket start, bucket size.
#: Returns {good, bad, excluded} summed over the buckets in between.
SUM = """
local good, bad, excluded = 0, 0, 0
for start = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]) do
  local v = redis.call('HMGET', ARGV[1] .. start, 'good', 'bad', 'excluded')
  good = good + (tonumber(v[1]) or 0)
  bad = bad + (tonumber(v[2]) or 0)
  excluded = excluded + (tonumber(v[3]) or 0)
end
return {good, bad, excluded}
"""


class FleetSlo:
    """SLO counts shared by the fleet (see the module's docstring)."""

    def __init__(self, link: PeerLink, slo: SloConfig, *, clock: Clock) -> None:
        self.link = link
        self.keys = link.keys
        self.clock = clock
        self.minute_keep = MINUTE_SPAN + HOUR
        self.hour_keep = int(max(slo.window, 30 * DAY)) + DAY
        #: minute start -> [good, bad, excluded] not yet in Redis.
        self._pending: dict[int, list[int]] = {}
        self._sum = link.redis.register_script(SUM)

    def __repr__(self) -> str:
        return f"<FleetSlo {self.keys.prefix} unflushed_minutes={len(self._pending)}>"

    # -- this instance's deltas --------------------------------------------------------------

    def add(self, kind: int, n: int = 1, at: float | None = None) -> None:
        """Count ``n`` requests of ``kind`` (monitor.slo GOOD, BAD or EXCLUDED)."""
        moment = self.clock.time() if at is None else at
        minute = int(moment // MINUTE) * MINUTE
        bucket = self._pending.get(minute)
        if bucket is None:
            bucket = self._pending[minute] = [0, 0, 0]
        bucket[kind] += n

    def add_counts(self, counts: Counts, at: float | None = None) -> None:
        for kind, n in ((GOOD, counts.good), (BAD, counts.bad), (EXCLUDED, counts.excluded)):
            if n:
                self.add(kind, n, at)

    @property
    def unflushed(self) -> Counts:
        totals = [sum(b[i] for b in self._pending.values()) for i in range(3)]
        return Counts(*totals)

    async def flush(self) -> int:
        """Add the deltas to the fleet's buckets; returns how many minutes were sent. On
        PeersUnavailable they are kept for the next flush."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        now = self.clock.time()
        hours: dict[int, list[int]] = {}
        for minute, counts in pending.items():
            hour = hours.setdefault(minute // HOUR * HOUR, [0, 0, 0])
            for i in range(3):
                hour[i] += counts[i]
        try:
            async with self.link.io("adding SLO counts") as redis:
                pipe = redis.pipeline(transaction=True)
                for size, buckets, keep in (("m", pending, self.minute_keep),
                                            ("h", hours, self.hour_keep)):
                    for start, counts in buckets.items():
                        if start + keep <= now:
                            continue  # too old for any window
                        key = self.keys.slo(size, start)
                        for name, n in zip(FIELDS, counts, strict=True):
                            if n:
                                pipe.hincrby(key, name, n)
                        # Relative to our clock, so a skewed server clock does not matter.
                        pipe.expire(key, max(1, int(start + keep - now)))
                await pipe.execute()
        except BaseException:  # PeersUnavailable, or cancelled: keep them for the next one
            for minute, counts in pending.items():  # merged with newer deltas
                bucket = self._pending.setdefault(minute, [0, 0, 0])
                for i in range(3):
                    bucket[i] += counts[i]
            raise
        return len(pending)

    # -- the fleet's windows -----------------------------------------------------------------

    async def window(self, seconds: float) -> Counts:
        """The fleet's counts over the last ``seconds`` (exact to the bucket, as
        ``SloTracker.window``), this instance's unflushed deltas included."""
        now = self.clock.time()
        size, tag = (MINUTE, "m") if seconds <= MINUTE_SPAN else (HOUR, "h")
        first = int((now - seconds) // size) * size
        last = int(now // size) * size
        async with self.link.io("reading SLO counts") as redis:
            good, bad, excluded = await self._sum(
                args=[self.keys.slo_prefix(tag), first, last, size], client=redis)
        for minute, counts in self._pending.items():
            if first <= minute // size * size <= now:
                good, bad, excluded = good + counts[0], bad + counts[1], excluded + counts[2]
        return Counts(int(good), int(bad), int(excluded))


class FleetRateLimit:
    """Fleet-wide per-client request counts in fixed one-second windows."""

    def __init__(self, link: PeerLink, *, clock: Clock) -> None:
        self.link = link
        self.keys = link.keys
        self.clock = clock
        #: client -> {second: the fleet's count in it, as of this instance's last look}.
        self._seen: dict[str, dict[int, int]] = {}

    def __repr__(self) -> str:
        return f"<FleetRateLimit {self.keys.prefix} clients={len(self._seen)}>"

    async def exchange(self, spent: Mapping[str, int]) -> dict[str, int]:
        """Add what each client spent here since the last exchange; returns what the rest
        of the fleet spent on them since this instance last looked, in this second's
        window and the one before (so a second ending in between loses nothing)."""
        if not spent:
            return {}
        second = int(self.clock.time())
        now, before = await self._count(spent, second, "exchanging rate-limit counts",
                                        previous=True)
        return self.others(spent, now, before, second)

    def others(self, spent: Mapping[str, int], now: Mapping[str, int],
               before: Mapping[str, int], second: int) -> dict[str, int]:
        """The bookkeeping of ``exchange`` (synchronous): the fleet's counts in this
        second and the one before, less this instance's own hits and what it saw."""
        out: dict[str, int] = {}
        for client, total in now.items():
            seen = self._seen.get(client, {})
            extra = (total - spent.get(client, 0) - seen.get(second, 0)
                     + max(0, before.get(client, 0) - seen.get(second - 1, 0)))
            if extra > 0:
                out[client] = extra
            self._seen[client] = {second: total, second - 1: before.get(client, 0)}
        # Only this second and the one before are of use again.
        self._seen = {c: s for c, s in self._seen.items() if max(s) >= second - 1}
        return out

    async def hit(self, hits: Mapping[str, int]) -> dict[str, int]:
        """Add ``hits`` (client key -> requests) to the current second's windows and
        return each client's fleet-wide count in it, in one round trip. A count of 0
        only reads. Raises PeersUnavailable when Redis does not answer (the caller falls
        back to its local limit)."""
        if not hits:
            return {}
        now, _ = await self._count(hits, int(self.clock.time()),
                                   "counting requests for rate limits")
        return now

    async def _count(self, hits: Mapping[str, int], second: int, what: str, *,
                     previous: bool = False) -> tuple[dict[str, int], dict[str, int]]:
        """One round trip: ``INCRBY`` each client's counter of ``second`` (and ``EXPIRE``
        it); with ``previous``, read the second before's too. Returns both counts."""
        clients = list(hits)
        step = 3 if previous else 2
        async with self.link.io(what) as redis:
            pipe = redis.pipeline(transaction=False)
            for client in clients:
                key = self.keys.rate(second, client)
                pipe.incrby(key, hits[client])
                pipe.expire(key, RATE_KEY_TTL)
                if previous:
                    pipe.get(self.keys.rate(second - 1, client))
            replies = await pipe.execute()
        now = {c: int(replies[step * i]) for i, c in enumerate(clients)}
        before = ({c: int(replies[step * i + 2] or 0) for i, c in enumerate(clients)}
                  if previous else {})
        return now, before
