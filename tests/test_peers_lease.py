"""Leader election and fencing against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.clock import SYSTEM_CLOCK, Clock, FakeClock
from gateway.events import EventBus
from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.fence import StaleLeader
from monitor.peers.lease import LeaderElection, LeadershipChanged
from monitor.peers.records import SharedStore
from tests.conftest import wait_for
from tests.fakes import Recorder, Spawner
from tests.redis_server import RedisServer

FAST = {"lease_ttl": "600ms", "renew_every": "100ms", "timeout": "200ms"}


def election(peer_link: Callable[..., PeerLink], name: str, spawn: Spawner,
             clock: Clock = SYSTEM_CLOCK, bus: EventBus | None = None,
             **keys: object) -> LeaderElection:
    link = peer_link(name, clock=clock, **{**FAST, **keys})
    return LeaderElection(link, clock=link.clock, spawn=spawn, events=bus)


async def test_two_elections_one_leader(peer_link: Callable[..., PeerLink],
                                        spawner: Spawner) -> None:
    bus = EventBus()
    seen = Recorder(bus)
    a = election(peer_link, "gw-a", spawner, bus=bus)
    b = election(peer_link, "gw-b", spawner)
    await a.step()
    await b.step()
    assert a.leading and not b.leading
    assert a.epoch == 1 and b.epoch is None
    assert a.leader == b.leader == "gw-a"
    assert b.status().reason == "gw-a leads (epoch 1)"
    assert b.status().epoch == 1 and not b.status().leading
    assert seen.of(LeadershipChanged) == [LeadershipChanged("gw-a", True, 1,
                                                            "acquired the lease at epoch 1")]
    # Renewing keeps it; the follower keeps following.
    await a.step()
    await b.step()
    assert a.leading and not b.leading and a.epoch == 1


async def test_the_other_takes_over_when_renewals_stop(peer_link: Callable[..., PeerLink],
                                                       spawner: Spawner) -> None:
    a = election(peer_link, "gw-a", spawner)
    b = election(peer_link, "gw-b", spawner)
    await a.start()
    await wait_for(lambda: a.leading, 5.0)
    await b.start()
    await asyncio.sleep(0.3)
    assert a.leading and not b.leading
    first = a.epoch
    assert first is not None
    assert a._task is not None
    a._task.cancel()  # its renewals stop (the process carries on)
    # The lease runs out within its ttl (600ms); generous bound for a loaded machine.
    await wait_for(lambda: b.leading, 5.0, "gw-b took over")
    assert b.epoch is not None and b.epoch > first
    assert not a.leading  # its own deadline passed meanwhile: it stepped down by itself


async def test_a_paused_leader_is_fenced_off(peer_link: Callable[..., PeerLink],
                                             spawner: Spawner) -> None:
    frozen = FakeClock()  # gw-a's clock stands still: a process paused mid-leadership
    a = election(peer_link, "gw-a", spawner, clock=frozen)
    b = election(peer_link, "gw-b", spawner)
    await a.step()
    assert a.leading and a.epoch == 1
    old = a.fence()
    assert await a.fenced([("SET", "hagw:deploy:lock", "gw-a")], ["hagw:deploy:lock"]) == [b"OK"]

    # No renewals while "paused": the lease expires in Redis, and gw-b takes it.
    async with asyncio.timeout(5.0):
        while not b.leading:
            await asyncio.sleep(0.05)
            await b.step()
    assert b.epoch == 2

    # gw-a wakes up still believing it leads (its clock says its deadline is not due)...
    assert a.leading and a.fence() == old
    # ...and its writes are refused by Redis, atomically with the check.
    with pytest.raises(StaleLeader, match="held by gw-b:2 at epoch 2, not by gw-a:1"):
        await a.fenced([("SET", "hagw:deploy:lock", "gw-a")], ["hagw:deploy:lock"])
    assert not a.leading  # the refusal ends its leadership
    records = SharedStore(a.link, spawn=spawner)
    with pytest.raises(StaleLeader):
        await records.put("drains", "node-1", {"by": "gw-a"}, epoch=old.epoch)
    async with a.link.io("reading") as redis:
        assert await redis.get("hagw:deploy:lock") == b"gw-a"  # from its epoch, untouched
        assert await redis.hget("hagw:ns:drains", "node-1") is None
    # The current leader's writes go through.
    assert await b.fenced([("SET", "hagw:deploy:lock", "gw-b")]) == [b"OK"]
    await SharedStore(b.link, spawn=spawner).put("drains", "node-1", {"by": "gw-b"},
                                                 epoch=b.epoch)


async def test_a_fenced_write_needs_the_lease(peer_link: Callable[..., PeerLink],
                                              spawner: Spawner) -> None:
    a = election(peer_link, "gw-a", spawner)
    with pytest.raises(StaleLeader, match="not the leader"):
        await a.fenced([("SET", "k", "v")])
    # A lease that merely expired (nobody took it) refuses too.
    frozen = FakeClock()
    c = election(peer_link, "gw-c", spawner, clock=frozen)
    await c.step()
    await asyncio.sleep(0.8)  # past the 600ms ttl in Redis
    with pytest.raises(StaleLeader, match="held by nobody"):
        await c.fenced([("SET", "k", "v")])


async def test_closing_hands_over_at_once(peer_link: Callable[..., PeerLink],
                                          spawner: Spawner) -> None:
    a = election(peer_link, "gw-a", spawner, lease_ttl="30s", renew_every="100ms")
    b = election(peer_link, "gw-b", spawner, lease_ttl="30s", renew_every="100ms")
    await a.step()
    await b.step()
    await b.start()
    await a.close()  # releases the lease: gw-b need not wait 30s
    await wait_for(lambda: b.leading, 5.0, "gw-b took over after gw-a resigned")
    assert b.epoch == 2


async def test_a_leader_steps_down_while_redis_is_down(redis_server: RedisServer,
                                                       peer_link: Callable[..., PeerLink],
                                                       spawner: Spawner) -> None:
    bus = EventBus()
    seen = Recorder(bus)
    a = election(peer_link, "gw-a", spawner, bus=bus)
    await a.start()
    await wait_for(lambda: a.leading, 5.0)
    redis_server.kill()
    await wait_for(lambda: not a.leading, 5.0, "gw-a stepped down without Redis")
    assert seen.of(LeadershipChanged)[-1].reason == "the lease was not renewed in time"
    with pytest.raises(StaleLeader):
        a.fence()
    await wait_for(lambda: "Redis is unreachable" in a.status().reason, 5.0)
    assert not a.link.connected
    redis_server.start()  # the AOF kept the epoch: leading again takes a new one
    await wait_for(lambda: a.leading, 10.0, "gw-a leads again")
    assert a.epoch == 2
    assert a.link.connected


async def test_a_lease_without_enough_replicas_is_given_back(
        peer_link: Callable[..., PeerLink], spawner: Spawner) -> None:
    a = election(peer_link, "gw-a", spawner, write_replicas=1, wait_timeout="100ms")
    await a.step()
    assert not a.leading
    assert a.status().reason == "the lease reached 0 of 1 replicas in time"
    async with a.link.io("reading") as redis:
        assert await redis.get("hagw:leader") is None


async def test_fenced_writes_need_redis(redis_server: RedisServer,
                                        peer_link: Callable[..., PeerLink],
                                        spawner: Spawner) -> None:
    a = election(peer_link, "gw-a", spawner, clock=FakeClock())
    await a.step()
    redis_server.kill()
    with pytest.raises(PeersUnavailable, match="a leader's write"):
        await a.fenced([("SET", "k", "v")])
