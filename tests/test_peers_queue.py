"""The write queue on a Redis stream, and its local spool, against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.queue.store import DONE, FAILED, QUEUED, REPLAYING, Entry, QueueFull, SqliteQueue
from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.fence import StaleLeader
from monitor.peers.lease import LeaderElection
from monitor.peers.queue import NotReplicated, RedisQueue, SpooledQueue
from tests.conftest import wait_for
from tests.fakes import Spawner
from tests.redis_server import RedisServer

FAST = {"timeout": "300ms", "lease_ttl": "1s"}


def entry(n: int, origin: str = "gw-a") -> Entry:
    ticket = uuid.uuid4().hex
    return Entry(ticket=ticket, created=time.time(), method="POST", target=f"/orders?n={n}",
                 headers=[("Content-Type", "application/json"), ("X-Origin", origin)],
                 body=f'{{"n": {n}, "from": "{origin}"}}'.encode(), idempotency_key=ticket)


def copy(e: Entry) -> Entry:
    return Entry(ticket=e.ticket, created=e.created, method=e.method, target=e.target,
                 headers=list(e.headers), body=e.body, idempotency_key=e.idempotency_key)


async def stream_tickets(link: PeerLink) -> list[str]:
    async with link.io("reading the stream") as redis:
        records = await redis.xrange("hagw:queue")
    return [fields[b"ticket"].decode() for _id, fields in records]


async def opened(link: PeerLink, capacity: int = 10_000, **kw: object) -> RedisQueue:
    queue = RedisQueue(link, capacity, **kw)  # type: ignore[arg-type]
    await queue.open()
    return queue


async def test_interleaved_enqueues_from_two_instances_keep_commit_order(
        peer_link: Callable[..., PeerLink]) -> None:
    # The default peers.timeout (1 s), not FAST's 300 ms: what this test checks is order,
    # and each enqueue is an AOF fsync (appendfsync always) that the shared disk of a
    # loaded CI box has been seen to stall past 300 ms, one write of 200 timing out.
    a = await opened(peer_link("gw-a"))
    b = await opened(peer_link("gw-b"))
    committed: list[Entry] = []
    # 100 one after the other, alternating instances: commit order is call order.
    for i in range(50):
        committed.append(await a.enqueue(entry(2 * i, "gw-a")))
        committed.append(await b.enqueue(entry(2 * i + 1, "gw-b")))
    assert [e.seq for e in committed] == list(range(1, 101))
    # 100 at once from both: commit order is whatever Redis ran first, which seq tells.
    burst = await asyncio.gather(*(q.enqueue(entry(100 + i, origin))
                                   for i, (q, origin) in enumerate([(a, "gw-a"), (b, "gw-b")]
                                                                   * 50)))
    assert sorted(e.seq for e in burst) == list(range(101, 201))
    committed += sorted(burst, key=lambda e: e.seq)

    order = [e.ticket for e in committed]
    assert await stream_tickets(a.link) == order
    batch = await b.next_batch(500, time.time())
    assert [e.ticket for e in batch] == order
    assert [e.seq for e in batch] == list(range(1, 201))
    first = batch[0]
    assert (first.method, first.target, first.body, first.status) == (
        "POST", "/orders?n=0", b'{"n": 0, "from": "gw-a"}', QUEUED)
    assert first.headers == [("Content-Type", "application/json"), ("X-Origin", "gw-a")]
    assert first.idempotency_key == first.ticket
    assert committed[0].position == 1 and committed[99].position == 100
    assert await a.position(batch[150]) == 151
    await a.stats()  # depth is as of an instance's last call; this one reads it
    assert a.depth == 200
    assert await b.pending_index() == [(e.seq, e.created) for e in committed]
    stats = await b.stats()
    assert (stats.queued, stats.replaying, stats.done, stats.failed) == (200, 0, 0, 0)
    assert stats.oldest_created == min(e.created for e in committed)


async def test_accepted_entries_survive_a_sigkill(redis_server: RedisServer,
                                                  peer_link: Callable[..., PeerLink]) -> None:
    queue = await opened(peer_link("gw-a", **FAST))
    assert queue.durability == "aof always"
    accepted = [await queue.enqueue(entry(i)) for i in range(50)]
    redis_server.kill()  # right after the last enqueue returned: no shutdown, no save
    with pytest.raises(PeersUnavailable, match="queueing a write"):
        await queue.enqueue(entry(50))
    redis_server.start()
    again = await opened(peer_link("gw-b", **FAST))
    assert again.depth == 50
    assert [e.ticket for e in await again.next_batch(100, time.time())] == \
        [e.ticket for e in accepted]
    found = await again.get(accepted[7].ticket)
    assert found is not None and found.body == accepted[7].body and found.seq == 8
    # The restarted server lost its script cache; the first queue carries on regardless.
    assert (await queue.enqueue(entry(51))).seq == 51


async def test_replay_marks_results_and_drops_requests(
        peer_link: Callable[..., PeerLink]) -> None:
    queue = await opened(peer_link("gw-a", **FAST))
    entries = [await queue.enqueue(entry(i)) for i in range(5)]
    batch = await queue.next_batch(3, time.time())
    for e, node in zip(batch, ["node-1", None, "node-2"], strict=True):
        e.node = node
    await queue.mark_replaying_many(batch)
    assert [e.ticket for e in await queue.next_batch(10, time.time())] == \
        [e.ticket for e in entries[3:]]
    await queue.sent_to(batch[1], "node-3")
    marked = await queue.get(batch[1].ticket)
    assert marked is not None
    assert (marked.status, marked.attempts, marked.node) == (REPLAYING, 1, "node-3")
    stats = await queue.stats()
    assert (stats.queued, stats.replaying) == (2, 3)
    assert await queue.position(entries[4]) == 5  # entries being replayed are still ahead

    done, failed, again = batch
    done.status, done.result_status, done.result_body = DONE, 201, b""
    done.result_headers = [("Location", "/orders/1")]
    failed.status, failed.error = FAILED, "node answered 503"
    await queue.retry_later(again, time.time() + 1, "node answered 502")
    await queue.finish_many([done, failed])
    assert queue.depth == 3

    got = await queue.get(done.ticket)
    assert got is not None
    assert (got.status, got.result_status, got.result_body, got.result_headers) == (
        DONE, 201, b"", [("Location", "/orders/1")])
    assert (got.headers, got.body, got.target) == ([], b"", "/orders?n=0")  # request dropped
    got = await queue.get(failed.ticket)
    assert got is not None and (got.status, got.error, got.result_body) == (
        FAILED, "node answered 503", None)
    got = await queue.get(again.ticket)
    assert got is not None and (got.status, got.error) == (QUEUED, "node answered 502")
    assert [e.ticket for e in await queue.next_batch(10, time.time())] == \
        [again.ticket, entries[3].ticket, entries[4].ticket]
    assert len(await stream_tickets(queue.link)) == 3

    await queue.mark_replaying_many([again])
    assert await queue.recover() == 1  # a crash mid-replay: back in line, same key
    assert (await queue.stats()).replaying == 0
    stats = await queue.stats()
    assert (stats.queued, stats.replaying, stats.done, stats.failed) == (3, 0, 1, 1)
    assert await queue.purge(time.time() + 10) == 2
    assert await queue.get(done.ticket) is None
    stats = await queue.stats()
    assert (stats.done, stats.failed) == (0, 0)
    assert await queue.get("no-such-ticket") is None


async def test_capacity_is_the_fleet_s(peer_link: Callable[..., PeerLink]) -> None:
    a = await opened(peer_link("gw-a", **FAST), capacity=3)
    b = await opened(peer_link("gw-b", **FAST), capacity=3)
    await a.enqueue(entry(1))
    await b.enqueue(entry(2))
    results = await a.enqueue_many([entry(3), entry(4), entry(5)])
    assert isinstance(results[0], Entry)
    assert all(isinstance(r, QueueFull) for r in results[1:])
    with pytest.raises(QueueFull, match="holds 3 entries"):
        await b.enqueue(entry(6))
    # Enqueueing a ticket again adds nothing (a spool forwarding after a lost answer).
    again = results[0]
    assert isinstance(again, Entry)
    assert (await a.enqueue_many([again]))[0] == again
    assert len(await stream_tickets(a.link)) == 3


async def test_no_202_without_the_replicas(peer_link: Callable[..., PeerLink]) -> None:
    queue = await opened(peer_link("gw-a", write_replicas=1, wait_timeout="100ms", **FAST))
    e = entry(1)
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        await queue.enqueue(e)
    withdrawn = await queue.get(e.ticket)
    assert withdrawn is not None and withdrawn.status == FAILED
    assert "withdrawn" in (withdrawn.error or "")
    assert await queue.next_batch(10, time.time()) == []
    assert queue.depth == 0


async def test_replay_writes_are_fenced(peer_link: Callable[..., PeerLink],
                                        spawner: Spawner) -> None:
    frozen = FakeClock()
    a_link = peer_link("gw-a", clock=frozen, lease_ttl="500ms", timeout="200ms")
    a = LeaderElection(a_link, clock=frozen, spawn=spawner)
    b_link = peer_link("gw-b", lease_ttl="500ms", timeout="200ms")
    b = LeaderElection(b_link, clock=b_link.clock, spawn=spawner)
    queue_a = await opened(a_link, fence=a.fence)
    queue_b = await opened(b_link, fence=b.fence)
    with pytest.raises(StaleLeader, match="not the leader"):
        await queue_a.recover()
    await a.step()
    await queue_a.enqueue(entry(1))  # anyone may enqueue
    batch = await queue_a.next_batch(10, time.time())
    await queue_a.mark_replaying_many(batch)
    async with asyncio.timeout(5.0):
        while not b.leading:  # gw-a "pauses"; its lease runs out; gw-b takes over
            await asyncio.sleep(0.05)
            await b.step()
    assert a.leading  # it still thinks so
    batch[0].status = DONE
    with pytest.raises(StaleLeader):
        await queue_a.finish_many(batch)
    assert await queue_b.recover() == 1
    batch = await queue_b.next_batch(10, time.time())
    await queue_b.mark_replaying_many(batch)
    batch[0].status, batch[0].result_status = DONE, 200
    await queue_b.finish_many(batch)
    assert (await queue_b.stats()).done == 1


async def test_a_server_that_can_lose_writes_is_reported(
        peer_link: Callable[..., PeerLink], caplog: pytest.LogCaptureFixture) -> None:
    link = peer_link("gw-a", **FAST)
    async with link.io("configuring") as redis:
        await redis.config_set("appendfsync", "everysec")
    with caplog.at_level(logging.WARNING, "hagw.peers.queue"):
        queue = await opened(link)
    assert queue.durability == "aof everysec"
    assert "can be lost if Redis crashes" in caplog.text


# -- the local spool -------------------------------------------------------------------------


async def spooled(link: PeerLink, tmp_path: Path, spawner: Spawner) -> SpooledQueue:
    queue = SpooledQueue(RedisQueue(link, 10_000), SqliteQueue(tmp_path / "spool", 10_000),
                         spawn=spawner, retry_every=0.2)
    await queue.open()
    return queue


async def test_writes_are_spooled_while_redis_is_down(
        redis_server: RedisServer, peer_link: Callable[..., PeerLink], spawner: Spawner,
        tmp_path: Path) -> None:
    queue = await spooled(peer_link("gw-a", **FAST), tmp_path, spawner)
    try:
        before = await queue.enqueue(entry(0))
        assert queue.spooled == 0 and queue.shared.depth == 1
        redis_server.kill()
        accepted = [await queue.enqueue(entry(i)) for i in range(1, 11)]  # all accepted
        assert queue.spooled == 10
        assert [e.position for e in accepted] == list(range(2, 12))
        assert queue.depth == 11
        local = await queue.get(accepted[3].ticket)
        assert local is not None and local.status == QUEUED
        assert await queue.position(local) == 5
        with pytest.raises(PeersUnavailable):
            await queue.forward()

        redis_server.start()
        # While the spool holds anything, new writes wait behind it.
        later = await queue.enqueue(entry(11))
        await wait_for(lambda: queue.spooled == 0, 10.0, "the spool was forwarded")
        order = [before.ticket, *(e.ticket for e in accepted), later.ticket]
        assert await stream_tickets(queue.shared.link) == order  # in order, none twice
        shared = await queue.get(accepted[3].ticket)
        assert shared is not None and shared.seq == 5 and shared.body == accepted[3].body
        stats = await queue.stats()
        assert stats.queued == 12
    finally:
        await queue.close()


async def test_forwarding_is_idempotent(peer_link: Callable[..., PeerLink], spawner: Spawner,
                                        tmp_path: Path) -> None:
    link = peer_link("gw-a", **FAST)
    spool = SqliteQueue(tmp_path / "spool", 100)
    await spool.open()
    entries = [await spool.enqueue(entry(i)) for i in range(10)]
    await spool.close()
    # A crash after the first three reached Redis but before the spool forgot them.
    shared = await opened(link)
    await shared.enqueue_many([copy(e) for e in entries[:3]])
    queue = SpooledQueue(RedisQueue(link, 100), SqliteQueue(tmp_path / "spool", 100),
                         spawn=spawner, retry_every=0.2)
    await queue.open()
    try:
        assert queue.spooled == 10
        await wait_for(lambda: queue.spooled == 0, 10.0)
        assert await stream_tickets(link) == [e.ticket for e in entries]
    finally:
        await queue.close()



async def test_a_spooled_queue_opens_without_redis(
        redis_server: RedisServer, peer_link: Callable[..., PeerLink], spawner: Spawner,
        tmp_path: Path) -> None:
    redis_server.kill()
    queue = await spooled(peer_link("gw-a", **FAST), tmp_path, spawner)
    try:
        accepted = [await queue.enqueue(entry(i)) for i in range(3)]
        assert queue.spooled == 3
        # Redis away: the spool's figures, with the shared queue's last known depth.
        assert (await queue.stats()).depth == 3
        redis_server.start()
        await wait_for(lambda: queue.spooled == 0, 10.0, "the spool was forwarded")
        assert await stream_tickets(queue.shared.link) == [e.ticket for e in accepted]
        assert "spooled=0" in repr(queue)
    finally:
        await queue.close()
