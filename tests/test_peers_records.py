"""Shared records and their change notices, against a real redis-server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.records import Change, Notice, Resync, SharedStore
from tests.conftest import wait_for
from tests.fakes import Spawner
from tests.redis_server import RedisServer

DRAIN = {"reason": "disk replacement", "by": "operator", "at": 1_800_000_000.0}


class Inbox:
    """What one instance's handler received."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def __call__(self, notice: Notice) -> None:
        self.notices.append(notice)

    @property
    def changes(self) -> list[Change]:
        return [n for n in self.notices if isinstance(n, Change)]

    @property
    def resyncs(self) -> list[Resync]:
        return [n for n in self.notices if isinstance(n, Resync)]


async def started(link: PeerLink, spawner: Spawner) -> tuple[SharedStore, Inbox]:
    store = SharedStore(link, spawn=spawner)
    inbox = Inbox()
    store.subscribe(inbox)
    await store.start()
    assert await store.wait_synced(5.0)
    assert inbox.resyncs
    return store, inbox


async def test_the_store_port(peer_link: Callable[..., PeerLink], spawner: Spawner) -> None:
    store = SharedStore(peer_link("gw-a"), spawn=spawner)
    assert await store.get("drains", "node-1") is None
    assert await store.items("drains") == {}
    await store.put("drains", "node-1", DRAIN)
    await store.put("drains", "node-2", {"reason": "ünïcode ☃", "n": 2**60})
    assert await store.get("drains", "node-1") == DRAIN
    assert await store.items("drains") == {"node-1": DRAIN,
                                           "node-2": {"reason": "ünïcode ☃", "n": 2**60}}
    await store.delete("drains", "node-1")
    await store.delete("drains", "never-there")
    assert list(await store.items("drains")) == ["node-2"]
    snapshot = await store.snapshot()
    assert snapshot.records == {"drains": {"node-2": {"reason": "ünïcode ☃", "n": 2**60}}}
    assert snapshot.version == 4
    assert "SharedStore hagw as gw-a" in repr(store)


async def test_changes_reach_the_other_instances(peer_link: Callable[..., PeerLink],
                                                 spawner: Spawner) -> None:
    a, inbox_a = await started(peer_link("gw-a"), spawner)
    b, inbox_b = await started(peer_link("gw-b"), spawner)
    c, inbox_c = await started(peer_link("gw-c"), spawner)

    await a.put("drains", "node-1", DRAIN)
    # "Seen within 1 s" is the promise; the bound here is generous for a loaded machine.
    await wait_for(lambda: bool(inbox_b.changes), 1.0, "B saw A's drain")
    assert inbox_b.changes == [Change("drains", "node-1", DRAIN, False, "gw-a", 1)]
    assert b.known("drains") == {"node-1": DRAIN}
    await wait_for(lambda: bool(c.known("drains")), 5.0)

    await c.delete("drains", "node-1")
    await wait_for(lambda: bool(inbox_a.changes), 1.0, "A saw C's delete")
    assert inbox_a.changes == [Change("drains", "node-1", None, True, "gw-c", 2)]
    assert a.known("drains") == {}
    await wait_for(lambda: len(inbox_b.changes) == 2, 5.0)
    # Nobody is told of its own writes.
    assert [ch.writer for ch in inbox_c.changes] == ["gw-a"]
    assert [ch.writer for ch in inbox_a.changes] == ["gw-c"]


async def test_records_survive_a_redis_crash_and_subscribers_resync(
        redis_server: RedisServer, peer_link: Callable[..., PeerLink],
        spawner: Spawner) -> None:
    a, inbox_a = await started(peer_link("gw-a"), spawner)
    b, inbox_b = await started(peer_link("gw-b"), spawner)
    await a.put("drains", "node-1", DRAIN)
    await a.put("windows", "w1", {"start": 1, "end": 2})
    await wait_for(lambda: len(inbox_b.changes) == 2, 5.0)

    redis_server.kill()
    assert b.known("drains") == {"node-1": DRAIN}  # served on while Redis is away
    with pytest.raises(PeersUnavailable, match="writing drains/node-2"):
        await a.put("drains", "node-2", DRAIN)
    redis_server.start()  # replays its AOF

    await wait_for(lambda: len(inbox_b.resyncs) >= 2, 10.0, "B resynchronised")
    assert inbox_b.resyncs[-1] == Resync({"drains": {"node-1": DRAIN},
                                          "windows": {"w1": {"start": 1, "end": 2}}}, 2)
    await wait_for(lambda: len(inbox_a.resyncs) >= 2, 10.0, "A resynchronised")
    assert await a.get("drains", "node-1") == DRAIN

    # And notices flow again after the resync.
    await a.delete("drains", "node-1")
    await wait_for(lambda: inbox_b.changes[-1].deleted, 5.0)
    assert inbox_b.changes[-1] == Change("drains", "node-1", None, True, "gw-a", 3)


async def test_a_resync_covers_what_was_missed(peer_link: Callable[..., PeerLink],
                                               spawner: Spawner) -> None:
    a = SharedStore(peer_link("gw-a"), spawn=spawner)
    await a.put("drains", "node-1", DRAIN)
    await a.put("drains", "node-2", DRAIN)
    await a.delete("drains", "node-1")
    b, inbox_b = await started(peer_link("gw-b"), spawner)
    assert inbox_b.resyncs == [Resync({"drains": {"node-2": DRAIN}}, 3)]
    assert b.known("drains") == {"node-2": DRAIN}
    assert b.known("nothing") == {}


async def test_a_failing_handler_does_not_stop_the_others(peer_link: Callable[..., PeerLink],
                                                          spawner: Spawner) -> None:
    a = SharedStore(peer_link("gw-a"), spawn=spawner)
    b = SharedStore(peer_link("gw-b"), spawn=spawner)
    inbox = Inbox()

    def broken(notice: Notice) -> None:
        raise RuntimeError("a bug in a handler")

    b.subscribe(broken)
    unsubscribe = b.subscribe(inbox)
    await b.start()
    await wait_for(lambda: bool(inbox.resyncs), 5.0)
    await a.put("drains", "node-1", DRAIN)
    await wait_for(lambda: bool(inbox.changes), 5.0)
    unsubscribe()
    await a.put("drains", "node-2", DRAIN)
    await wait_for(lambda: "node-2" in b.known("drains"), 5.0)
    assert len(inbox.changes) == 1
    await b.close()


async def test_versions_that_go_back_force_a_resync(peer_link: Callable[..., PeerLink],
                                                    spawner: Spawner) -> None:
    a = SharedStore(peer_link("gw-a"), spawn=spawner)
    b, inbox_b = await started(peer_link("gw-b"), spawner)
    await a.put("drains", "node-1", DRAIN)
    await a.put("drains", "node-2", DRAIN)
    await wait_for(lambda: len(inbox_b.changes) == 2, 5.0)
    async with a.link.io("flushing") as redis:
        await redis.flushdb()  # an operator wipes Redis: nobody is disconnected
    await a.put("windows", "w1", {"start": 1})  # version 1 again
    await wait_for(lambda: len(inbox_b.resyncs) == 2, 5.0, "B noticed and resynchronised")
    assert inbox_b.resyncs[-1] == Resync({"windows": {"w1": {"start": 1}}}, 1)
    assert b.known("drains") == {}


async def test_waiting_for_the_first_snapshot_is_bounded(
        redis_server: RedisServer, peer_link: Callable[..., PeerLink],
        spawner: Spawner) -> None:
    redis_server.kill()
    store = SharedStore(peer_link("gw-a", timeout="200ms", lease_ttl="1s"), spawn=spawner)
    await store.start()
    assert not await store.wait_synced(0.5)
    redis_server.start()
    assert await store.wait_synced(10.0)
