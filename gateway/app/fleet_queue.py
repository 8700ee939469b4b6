"""The write queue of an instance in a fleet (``peers``): the fleet's stream on Redis,
with the instance's ``state_dir`` queue file as its spool while Redis is away
(``monitor.peers.queue.SpooledQueue``).

The supervisor (or the single process) queues on it over the fleet's link and forwards
the spool; each worker queues on it over a link of its own (``WorkerQueue``) and leaves
the forwarding to its supervisor, so the spool reaches the stream in one order.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.app.dataplane import queue_limits
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.queue.store import SqliteQueue
from monitor.peers.connection import PeerLink
from monitor.peers.fence import Fence
from monitor.peers.queue import RedisQueue, SpooledQueue
from monitor.ports import Spawn


def fleet_queue(config: GatewayConfig, link: PeerLink, *, spawn: Spawn,
                fence: Callable[[], Fence] | None = None,
                forwards: bool = True) -> SpooledQueue:
    """``fence``: the leader's token for the replay's writes; ``forwards``: this process
    moves the spool to the stream."""
    spool = SqliteQueue(config.state_dir, config.maintenance.queue_capacity,
                        limits=queue_limits(config))
    shared = RedisQueue(link, config.maintenance.queue_capacity, fence=fence)
    return SpooledQueue(shared, spool, spawn=spawn, forwards=forwards)


class WorkerQueue:
    """A worker's own link to Redis and the fleet's queue on it."""

    def __init__(self, config: GatewayConfig, clock: Clock, spawn: Spawn) -> None:
        if config.peers is None:
            raise ValueError("a fleet worker needs peers in its config")
        self.link = PeerLink(config.peers, clock=clock)
        self.queue = fleet_queue(config, self.link, spawn=spawn, forwards=False)

    def __repr__(self) -> str:
        return f"<WorkerQueue {self.queue!r} {self.link!r}>"

    async def close(self) -> None:
        """After the queue closed: the link goes too."""
        await self.link.close()
