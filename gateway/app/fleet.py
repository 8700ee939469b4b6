"""This gateway among its peers (``peers`` in the config): the Redis link, the leader
lease and the shared records of ``monitor.peers``, wired into one process.

``Fleet`` starts them in order (link, records, lease) and stops them the other way round
(the lease is released first, so a peer takes over without waiting for its TTL). It
hands every change notice of the shared records to the handlers of its namespaces (the
operator drains, the leader's automatic drains) and shows the link and the leader as
``hagw_peers_*`` metrics and ``GET /peers``. Without ``peers`` no ``Fleet`` exists and
the gateway stands alone, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.clock import Clock
from gateway.config.schema import PeersConfig
from monitor.peers.connection import PeerLink, PeersUnavailable, describe
from monitor.peers.fence import StaleLeader
from monitor.peers.lease import LeaderElection
from monitor.peers.records import Notice, Resync, SharedStore
from monitor.ports import Events, Spawn, WriteRefused

log = logging.getLogger("hagw.peers")

#: How long start-up waits for the first snapshot of the shared records (then it serves on
#: what it has: the last known state in the local store).
SYNC_TIMEOUT = 2.0


class NotReplicated(WriteRefused):
    """A change of the fleet's shared state was refused because Redis cannot take it
    (503 ``not_replicated``); the message says why, without secrets."""


class NotLeader(Exception):
    """An action only the fleet's leader takes was asked of a follower (409)."""


class Fleet:
    """The peers' parts of one gateway: link, records, lease."""

    def __init__(self, config: PeersConfig, *, clock: Clock, spawn: Spawn, events: Events,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.clock = clock
        self.link = PeerLink(config, clock=clock)
        self.records = SharedStore(self.link, spawn=spawn)
        self.election = LeaderElection(self.link, clock=clock, spawn=spawn, events=events)
        self._handlers: dict[str, list[Callable[[Notice], None]]] = {}
        self.records.subscribe(self._dispatch)
        registry.register(PeerGauges(self))

    def __repr__(self) -> str:
        return f"<Fleet {self.link!r} {self.election!r}>"

    @property
    def name(self) -> str:
        return self.config.name

    # -- change notices, by namespace ------------------------------------------------------

    def watch(self, namespace: str, handler: Callable[[Notice], None]) -> None:
        """``handler`` gets every ``Resync`` and each ``Change`` of ``namespace`` made by
        another instance (synchronously, in the listener)."""
        self._handlers.setdefault(namespace, []).append(handler)

    def _dispatch(self, notice: Notice) -> None:
        if isinstance(notice, Resync):
            for handlers in self._handlers.values():
                for handler in handlers:
                    handler(notice)
            return
        for handler in self._handlers.get(notice.namespace, []):
            handler(notice)

    # -- what the admin API asks before a change of shared state ----------------------------

    def require_connected(self, what: str) -> None:
        """Raise NotReplicated unless Redis answered the last call (``what`` is refused)."""
        if not self.link.connected:
            raise NotReplicated(f"{what} refused: the fleet's shared state is not reachable "
                                f"({self.link.reason}); this instance serves on the last "
                                "known state until Redis is back")

    def require_leader(self, what: str) -> None:
        self.require_connected(what)
        if not self.election.leading:
            leader = self.election.leader
            raise NotLeader(f"{what} is the leader's: ask {leader or 'the leader'} (this is "
                            f"{self.name}: {self.election.state.reason})")

    async def put(self, namespace: str, key: str, value: Any, what: str) -> None:
        """A shared write; NotReplicated when Redis does not take it."""
        try:
            await self.records.put(namespace, key, value)
        except PeersUnavailable as exc:
            raise NotReplicated(f"{what} refused: {exc}") from None

    async def delete(self, namespace: str, key: str, what: str) -> None:
        try:
            await self.records.delete(namespace, key)
        except PeersUnavailable as exc:
            raise NotReplicated(f"{what} refused: {exc}") from None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe and compete for the lease. Start-up never waits long for
        Redis: without it the gateway serves on its last known state."""
        if await self.link.start():
            await self.records.start()
            await self.records.wait_synced(SYNC_TIMEOUT)
        else:
            log.warning("peers: Redis at %s does not answer (%s); serving on the last known "
                        "state", describe(self.config), self.link.reason)
            await self.records.start()
        await self.election.start()

    async def stop(self) -> None:
        """The lease first (released: a peer leads at once), then the records, the link."""
        try:
            async with asyncio.timeout(self.config.timeout * 2):
                await self.election.close()
        except TimeoutError:
            log.warning("peers: the lease was not released in time; it runs out by itself")
        await self.records.close()
        await self.link.close()

    # -- views -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For ``GET /peers``, ``/status.json`` and ``hagw status``: no secrets."""
        leader = self.election.status()
        return {"enabled": True, "name": self.name, "redis": describe(self.config),
                "connected": self.link.connected,
                "reason": self.link.reason or None,
                "since": self.link.since,
                "leading": leader.leading, "leader": leader.leader, "epoch": leader.epoch,
                "leader_reason": leader.reason or None,
                "records_version": self.records.version}


class _SharedReads:
    """Reads of the fleet's shared records: from Redis, or the last known state while it
    is down."""

    fleet: Fleet

    async def get(self, namespace: str, key: str) -> Any:
        try:
            return await self.fleet.records.get(namespace, key)
        except PeersUnavailable:
            return self.fleet.records.known(namespace).get(key)

    async def items(self, namespace: str) -> dict[str, Any]:
        try:
            return await self.fleet.records.items(namespace)
        except PeersUnavailable:
            return self.fleet.records.known(namespace)


class SharedRecords(_SharedReads):
    """The ``Store`` port on the fleet's shared records, for what any instance may write
    (maintenance windows): NotReplicated while Redis does not take a write; reads from
    Redis, or the last known state while it is down."""

    def __init__(self, fleet: Fleet, what: str) -> None:
        self.fleet = fleet
        self.what = what

    def __repr__(self) -> str:
        return f"<SharedRecords {self.what} of {self.fleet.name}>"

    async def put(self, namespace: str, key: str, value: Any) -> None:
        await self.fleet.put(namespace, key, value, f"recording {self.what} {key}")

    async def delete(self, namespace: str, key: str) -> None:
        await self.fleet.delete(namespace, key, f"deleting {self.what} {key}")


class LeaderStore(_SharedReads):
    """The ``Store`` port for what only the leader writes (deploy records): shared in
    Redis, every write fenced by this instance's epoch. A write after the lease was lost,
    or while Redis does not answer, raises WriteRefused (StaleLeader is one), so the
    component that wrote stops where it stands. Reads come from Redis, or from the last
    known state while it is down."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def __repr__(self) -> str:
        return f"<LeaderStore {self.fleet.name}>"

    def _epoch(self) -> int:
        epoch = self.fleet.election.epoch
        if epoch is None:
            raise StaleLeader(f"{self.fleet.name} does not lead the fleet "
                              f"({self.fleet.election.state.reason})")
        return epoch

    async def put(self, namespace: str, key: str, value: Any) -> None:
        try:
            await self.fleet.records.put(namespace, key, value, epoch=self._epoch())
        except PeersUnavailable as exc:
            raise WriteRefused(f"the fleet's shared state did not take it: {exc}") from None

    async def delete(self, namespace: str, key: str) -> None:
        try:
            await self.fleet.records.delete(namespace, key, epoch=self._epoch())
        except PeersUnavailable as exc:
            raise WriteRefused(f"the fleet's shared state did not take it: {exc}") from None


class PeerGauges(Collector):
    """hagw_peers_connected, hagw_peers_leading, hagw_peers_leader{leader} and
    hagw_peers_epoch, read at scrape time."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        fleet = self._fleet
        status = fleet.election.status()
        yield GaugeMetricFamily("hagw_peers_connected", "1 while Redis, the fleet's shared "
                                "state, answers", value=1 if fleet.link.connected else 0)
        yield GaugeMetricFamily("hagw_peers_leading", "1 while this instance leads the fleet",
                                value=1 if status.leading else 0)
        leader = GaugeMetricFamily("hagw_peers_leader", "1 for the fleet's leader as last "
                                   "seen from here", labels=["leader"])
        if status.leader is not None:
            leader.add_metric([status.leader], 1)
        yield leader
        yield GaugeMetricFamily("hagw_peers_epoch", "The fencing epoch of the fleet's leader "
                                "as last seen from here (0: none seen)",
                                value=status.epoch or 0)
