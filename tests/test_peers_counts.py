"""Fleet-wide SLO counts and rate-limit counts, against a real redis-server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.app.fleet_budget import FleetBudget
from gateway.clock import FakeClock
from gateway.config.schema import SloConfig
from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.counts import FleetRateLimit, FleetSlo
from monitor.slo import BAD, EXCLUDED, GOOD, HOUR, MINUTE, Counts, SloTracker
from tests.conftest import wait_for
from tests.fakes import Spawner
from tests.redis_server import RedisServer

FAST = {"timeout": "300ms", "lease_ttl": "1s"}


def slo(link: PeerLink, clock: FakeClock) -> FleetSlo:
    return FleetSlo(link, SloConfig(), clock=clock)


async def test_slo_counts_add_up_across_instances(peer_link: Callable[..., PeerLink]) -> None:
    clock = FakeClock(start=1_800_000_000.0)  # a minute boundary
    a = slo(peer_link("gw-a", clock=clock, **FAST), clock)
    b = slo(peer_link("gw-b", clock=clock, **FAST), clock)
    a.add(GOOD, 90)
    a.add(BAD, 2)
    b.add(GOOD, 8)
    b.add(EXCLUDED, 5)
    assert a.unflushed == Counts(90, 2, 0)
    assert await a.window(300) == Counts(90, 2, 0)  # its own unflushed deltas count
    assert await a.flush() == 1
    assert await b.flush() == 1
    assert await a.flush() == 0
    assert await b.window(300) == Counts(98, 2, 5)

    clock.advance(10 * MINUTE)
    a.add_counts(Counts(good=10, bad=1))
    await a.flush()
    assert await b.window(5 * MINUTE) == Counts(10, 1, 0)  # the old minute is outside
    assert await b.window(HOUR) == Counts(108, 3, 5)
    assert await a.window(7 * 86400.0) == Counts(108, 3, 5)  # hour buckets beyond 3 days

    async with a.link.io("reading") as redis:
        minute_key = f"hagw:slo:m:{1_800_000_000}"
        assert await redis.hgetall(minute_key) == {b"good": b"98", b"bad": b"2",
                                                   b"excluded": b"5"}
        ttl = await redis.ttl(minute_key)
        assert 3 * 86400 < ttl <= 3 * 86400 + HOUR  # kept as long as a window reads it


async def test_slo_deltas_wait_for_redis(redis_server: RedisServer,
                                         peer_link: Callable[..., PeerLink]) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    a = slo(peer_link("gw-a", clock=clock, **FAST), clock)
    a.add(GOOD, 3)
    redis_server.kill()
    with pytest.raises(PeersUnavailable, match="adding SLO counts"):
        await a.flush()
    a.add(BAD, 1)
    assert a.unflushed == Counts(3, 1, 0)  # kept, the new one merged in
    redis_server.start()
    await a.flush()
    assert a.unflushed == Counts()
    assert await a.window(MINUTE) == Counts(3, 1, 0)


async def test_rate_limit_counts_are_fleet_wide_per_second(
        peer_link: Callable[..., PeerLink]) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    a = FleetRateLimit(peer_link("gw-a", **FAST), clock=clock)
    b = FleetRateLimit(peer_link("gw-b", **FAST), clock=clock)
    assert await a.hit({}) == {}
    assert await a.hit({"10.0.0.1": 3, "10.0.0.2": 1}) == {"10.0.0.1": 3, "10.0.0.2": 1}
    assert await b.hit({"10.0.0.1": 2, "tenant:acme": 7}) == {"10.0.0.1": 5, "tenant:acme": 7}
    assert await a.hit({"10.0.0.1": 0}) == {"10.0.0.1": 5}  # 0 only reads
    async with a.link.io("reading") as redis:
        assert 0 < await redis.ttl("hagw:rl:1800000000:10.0.0.1") <= 2
    clock.advance(1.0)  # a new window
    assert await b.hit({"10.0.0.1": 1}) == {"10.0.0.1": 1}
    many = {f"client-{i}": i for i in range(1, 501)}  # one round trip for a batch
    assert await a.hit(many) == many


async def test_slo_counts_flush_in_the_background(peer_link: Callable[..., PeerLink],
                                                  spawner: Spawner) -> None:
    """The fleet budget's loop sends this instance's counts (and reads the fleet's back);
    closing it sends what is left."""
    clock = FakeClock(start=1_800_000_000.0)
    link = peer_link("gw-a", clock=clock, **FAST)
    counts = slo(link, clock)
    budget = FleetBudget(SloTracker(SloConfig(), clock), counts, clock=clock, spawn=spawner,
                         every=0.05)
    budget.start()
    budget.record(200, count=4)
    await wait_for(lambda: counts.unflushed == Counts(), 5.0, "flushed")
    await wait_for(lambda: budget.scope == "fleet", 5.0, "the fleet's figures read back")
    assert budget.window(MINUTE) == Counts(4, 0, 0)
    budget.record(503)
    await budget.close()  # flushes what is left
    other = slo(peer_link("gw-b", clock=clock, **FAST), clock)
    assert await other.window(MINUTE) == Counts(4, 1, 0)


async def test_rate_limit_exchange_returns_the_others_spending(
        peer_link: Callable[..., PeerLink]) -> None:
    """Each instance learns what the rest of the fleet spent on its clients since its
    last exchange, never its own spending, nor the same spending twice."""
    clock = FakeClock(start=1_800_000_000.0)
    a = FleetRateLimit(peer_link("gw-a", **FAST), clock=clock)
    b = FleetRateLimit(peer_link("gw-b", **FAST), clock=clock)
    assert await a.exchange({"c": 5}) == {}
    assert await b.exchange({"c": 3, "d": 1}) == {"c": 5}
    assert await a.exchange({"c": 1}) == {"c": 3}  # B's 3, not A's own 5 again
    assert await b.exchange({"c": 1}) == {"c": 1}  # A's 1 since B's last look
    assert await a.exchange({"d": 2}) == {"d": 1}
    clock.advance(0.4)  # the same second
    assert await a.exchange({"c": 1}) == {"c": 1}  # B's last one
    clock.advance(1.0)  # a new window: the last one's tail is still seen, once
    assert await b.exchange({"c": 2}) == {"c": 1}  # A's last one, in the window before
    assert await a.exchange({"c": 1}) == {"c": 2}
    assert await a.exchange({"c": 1}) == {}
    clock.advance(2.0)  # windows two seconds old are over
    assert await b.exchange({"c": 1}) == {}
    assert "clients=1" in repr(b)
