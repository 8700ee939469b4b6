"""PeerLink: whether Redis answers, kept around every call; the client it builds, direct
or through Sentinel. Against real redis-server processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.clock import SYSTEM_CLOCK
from monitor.peers.connection import MAX_CONNECTIONS, PeerLink, PeersUnavailable, socket_timeout
from monitor.peers.records import SharedStore
from tests.conftest import require_tool
from tests.fakes import Spawner
from tests.redis_server import RedisServer, SentinelProcess, peers_config

SECRET = "s3cr3t-pw"


async def test_connected_follows_the_calls(redis_server: RedisServer,
                                           peer_link: Callable[..., PeerLink]) -> None:
    link = peer_link("gw-a", timeout="300ms", lease_ttl="1s")
    flips: list[bool] = []
    link.on_change(flips.append)
    assert not link.connected and link.reason == "not connected yet"
    assert await link.ping()
    assert link.connected and link.reason == ""
    redis_server.kill()
    assert not await link.ping()
    assert not link.connected and link.reason.startswith("ping: ")
    with pytest.raises(PeersUnavailable, match="^reading a key: "):
        async with link.io("reading a key") as redis:
            await redis.get("k")
    redis_server.start()
    assert await link.ping()
    assert flips == [True, False, True]
    assert "connected" in repr(link)


async def test_a_burst_of_calls_shares_a_bounded_pool(
        peer_link: Callable[..., PeerLink]) -> None:
    """200 calls at once wait for one of MAX_CONNECTIONS connections rather than open a
    connection each (a storm a loaded Redis answers too late)."""
    link = peer_link("gw-a")

    async def call(i: int) -> None:
        async with link.io("a burst") as redis:
            await redis.set(f"burst:{i}", i)

    await asyncio.gather(*(call(i) for i in range(200)))
    async with link.io("listing clients") as redis:
        clients = await redis.client_list()
    mine = [c for c in clients if c.get("name") == "hagw-gw-a"]
    assert 1 <= len(mine) <= MAX_CONNECTIONS


async def test_an_error_reply_is_an_answer(peer_link: Callable[..., PeerLink]) -> None:
    link = peer_link("gw-a")
    with pytest.raises(Exception, match="unknown command"):
        async with link.io("a bad command") as redis:
            await redis.execute_command("NO-SUCH-COMMAND")
    assert link.connected


async def test_the_password_stays_out_of_reasons_and_reprs(redis_server: RedisServer) -> None:
    redis_server.kill()
    redis_server.extra = ["--requirepass", SECRET]
    redis_server.start()
    url = f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/0"
    link = PeerLink(peers_config(url, "gw-a", timeout="300ms", lease_ttl="1s"),
                    clock=SYSTEM_CLOCK)
    wrong = PeerLink(peers_config(url.replace(SECRET, "nope-" + SECRET), "gw-b"),
                     clock=SYSTEM_CLOCK)
    try:
        assert await link.ping()
        assert SECRET not in repr(link) and "***" in repr(link)
        assert not await wrong.ping()  # refused: no answer to work with
        assert "invalid" in wrong.reason and SECRET not in wrong.reason
        redis_server.kill()
        assert not await link.ping()
        assert SECRET not in link.reason and SECRET not in repr(link)
    finally:
        await link.close()
        await wrong.close()


def test_socket_timeout_leaves_room_for_wait() -> None:
    assert socket_timeout(peers_config("redis://h", timeout="500ms")) == 0.5
    assert socket_timeout(peers_config("redis://h", timeout="500ms", write_replicas=1,
                                       wait_timeout="1s")) == 1.5


async def test_through_sentinel(redis_server: RedisServer, tmp_path: Path,
                                spawner: Spawner) -> None:
    sentinel = SentinelProcess(require_tool("redis-server"), tmp_path / "sentinel",
                               redis_server.port, service="gateway")
    sentinel.start()
    try:
        config = peers_config("redis://127.0.0.1/0", "gw-a",
                              sentinels=[f"127.0.0.1:{sentinel.port}"],
                              sentinel_service="gateway")
        link = PeerLink(config, clock=SYSTEM_CLOCK)
        try:
            assert await link.ping()
            assert f"gateway via sentinels 127.0.0.1:{sentinel.port}" in repr(link)
            store = SharedStore(link, spawn=spawner)
            await store.put("drains", "node-1", {"by": "sentinel test"})
            direct = PeerLink(peers_config(redis_server.url, "gw-b"), clock=SYSTEM_CLOCK)
            try:
                assert await SharedStore(direct, spawn=spawner).get("drains", "node-1") == \
                    {"by": "sentinel test"}
            finally:
                await direct.close()
        finally:
            await link.close()
    finally:
        sentinel.kill()
