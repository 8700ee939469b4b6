"""The fleet's capacity floor: automatic drains decided once, by the leader, for every
instance (``peers``).

Each instance probes every node and reports the nodes it sees WARNING (its own view,
``warnings/<instance>`` in the shared records), again every ``lease_ttl`` as a heartbeat:
the leader ignores a report older than ``STALE_AFTER`` lease TTLs, so a node that only a
SIGKILLed instance saw WARNING is readmitted. The leader alone decides which of the
nodes any instance reports may be drained without taking the fleet below
``min_healthy`` (``fleet_drains``), and holds them as the ``fleet`` hold. It publishes
the holds it keeps for the whole fleet, the fleet's and a deploy's, as one fenced record
(``holds/nodes``, refused to a leader whose epoch is over), and every other instance
applies that record in one synchronous step. So two instances that each see a different
node WARNING never each drain "one": exactly the drains the floor allows happen, on
every instance alike. Without ``peers`` the cluster decides alone, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from gateway.app.fleet import Fleet
from gateway.clock import Clock
from gateway.cluster import Cluster
from gateway.events import EventBus, News
from gateway.node import Node, NodeChanged, Probe
from monitor.peers.connection import PeersUnavailable
from monitor.peers.fence import StaleLeader
from monitor.peers.lease import LeadershipChanged
from monitor.peers.records import Change, Notice, Resync
from monitor.ports import Spawn

log = logging.getLogger("hagw.peers.floor")

#: The hold the leader's automatic drains put on a node.
FLEET = "fleet"
#: The holds the leader keeps for the whole fleet (a deploy runs on the leader only).
REPLICATED = (FLEET, "deploy")
WARNINGS = "warnings"
HOLDS = "holds"
HOLDS_KEY = "nodes"
#: A report not renewed for this many lease TTLs is from an instance that is gone.
STALE_AFTER = 3


def available(node: Node) -> bool:
    """Would take new requests but for the fleet's own automatic drain: a WARNING node
    still counts (it serves at reduced weight until drained)."""
    return (not node.removed and not node.config.backup and node.maintenance is None
            and not (set(node.holds) - {FLEET}) and node.probe is Probe.HEALTHY
            and node.ejected_until is None)


def fleet_drains(nodes: Iterable[Node], warned: Mapping[str, str], held: Collection[str],
                 floor: int) -> dict[str, str]:
    """Which of the ``warned`` nodes (name -> the sign, as any instance saw it) the fleet
    drains: as many as keep ``floor`` primaries serving, those already drained first (no
    flapping), then by name (every leader decides alike)."""
    candidates = [n for n in nodes if available(n)]
    serving = len(candidates)
    names = {n.name for n in candidates}
    drained: dict[str, str] = {}
    for name in sorted((n for n in warned if n in names), key=lambda n: (n not in held, n)):
        if serving - 1 < floor:
            break
        drained[name] = warned[name]
        serving -= 1
    return drained


class FleetFloor:
    """Reports this instance's WARNING nodes; as the leader, decides and publishes the
    fleet's holds; as a follower, applies the leader's."""

    def __init__(self, cluster: Cluster, fleet: Fleet, *, bus: EventBus, spawn: Spawn,
                 clock: Clock) -> None:
        self.cluster = cluster
        self.fleet = fleet
        self.bus = bus
        self.spawn = spawn
        self.clock = clock
        #: What every instance reported: instance -> {node: sign}, and when (wall time).
        self.reports: dict[str, dict[str, str]] = {}
        self.reported_at: dict[str, float] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        #: Set by stop(): no more reports or decisions (the link is closing).
        self._stopped = False
        self._reported: dict[str, str] | None = None
        self._published: dict[str, dict[str, str]] | None = None
        #: The leader's holds as last received (a follower applies them).
        self.leader_holds: dict[str, dict[str, str]] = {}
        self._pending = False
        self._writes: asyncio.Lock = asyncio.Lock()
        bus.subscribe(NodeChanged, lambda _event: self.changed())
        bus.subscribe(LeadershipChanged, self._on_leadership)
        fleet.watch(WARNINGS, self._on_warnings)
        fleet.watch(HOLDS, self._on_holds)
        fleet.link.on_change(lambda up: self.changed() if up else None)

    def __repr__(self) -> str:
        drained = sorted(n.name for n in self.cluster if FLEET in n.holds)
        return f"<FleetFloor {self.fleet.name} drained={drained} reports={len(self.reports)}>"

    @property
    def leading(self) -> bool:
        return self.fleet.election.leading

    # -- what this instance sees -------------------------------------------------------------

    def local_warnings(self) -> dict[str, str]:
        return {n.name: n.warning for n in self.cluster
                if n.warning is not None and not n.config.backup}

    def changed(self) -> None:
        """A node changed here (or Redis came back): once per round of changes, report
        and, as the leader, decide."""
        if not self._pending and not self._stopped:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._round)

    def _round(self) -> None:
        self._pending = False
        if self._stopped:
            return
        mine = self.local_warnings()
        self.reports[self.fleet.name] = mine
        self.reported_at[self.fleet.name] = self.clock.time()
        if mine != self._reported:
            self.spawn(self._report(mine), name="report warnings")
        if self.leading:
            self.decide()

    # -- the leader ---------------------------------------------------------------------------

    def decide(self) -> None:
        """The leader's decision, applied here at once and published to the others."""
        warned: dict[str, str] = {}
        oldest = self.clock.time() - STALE_AFTER * self.fleet.config.lease_ttl
        for instance, report in self.reports.items():
            if self.reported_at.get(instance, 0.0) < oldest:
                continue  # that instance is gone: what it alone saw holds nothing
            for name, sign in report.items():
                warned.setdefault(name, sign)
        held = {n.name for n in self.cluster if FLEET in n.holds}
        drained = fleet_drains(self.cluster, warned, held, self.cluster.floor)
        for node in self.cluster:
            why = drained.get(node.name)
            if why is not None and FLEET not in node.holds:
                node.drain(f"auto-drained by the fleet's leader {self.fleet.name}: {why}",
                           FLEET)
                self.bus.publish(News("node.auto_drain", f"drained fleet-wide: {why}",
                                      node.name))
            elif why is None and FLEET in node.holds:
                node.undrain("readmitted by the fleet's leader", FLEET)
                self.bus.publish(News("node.auto_undrain", "readmitted fleet-wide",
                                      node.name))
        holds = self.fleet_holds()
        if holds != self._published:
            self._published = holds
            self.spawn(self._publish(holds), name="publish the fleet's holds")

    def fleet_holds(self) -> dict[str, dict[str, str]]:
        return {n.name: held for n in self.cluster
                if (held := {s: r for s, r in n.holds.items() if s in REPLICATED})}

    def _on_leadership(self, event: LeadershipChanged) -> None:
        if event.name != self.fleet.name:
            return
        self._published = None
        self.changed()

    # -- notices --------------------------------------------------------------------------

    def _on_warnings(self, notice: Notice) -> None:
        if isinstance(notice, Resync):
            self.reports, self.reported_at = {}, {}
            for instance, value in notice.records.get(WARNINGS, {}).items():
                self._take(instance, value)
            self._reported = self.reports.get(self.fleet.name)
        elif isinstance(notice, Change):
            self._take(notice.key, None if notice.deleted else notice.value)
        self.changed()

    def _take(self, instance: str, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("nodes"), dict):
            self.reports.pop(instance, None)
            self.reported_at.pop(instance, None)
            return
        self.reports[instance] = {str(k): str(v) for k, v in value["nodes"].items()}
        self.reported_at[instance] = float(value.get("at", 0.0))

    def _on_holds(self, notice: Notice) -> None:
        if isinstance(notice, Resync):
            record = notice.records.get(HOLDS, {}).get(HOLDS_KEY)
        elif isinstance(notice, Change) and notice.key == HOLDS_KEY:
            record = None if notice.deleted else notice.value
        else:
            return
        self.leader_holds = record if isinstance(record, dict) else {}
        if not self.leading:
            self.apply(self.leader_holds)

    def apply(self, holds: Mapping[str, Mapping[str, str]]) -> None:
        """A follower takes the leader's holds, in one step."""
        for node in self.cluster:
            wanted = holds.get(node.name, {})
            for source in REPLICATED:
                reason = wanted.get(source)
                if reason is not None and node.holds.get(source) != reason:
                    node.drain(reason, source)
                elif reason is None and source in node.holds:
                    node.undrain("released by the fleet's leader", source)

    # -- I/O around it ----------------------------------------------------------------------

    async def _report(self, mine: dict[str, str]) -> None:
        async with self._writes:
            try:
                await self.fleet.records.put(WARNINGS, self.fleet.name,
                                             {"nodes": mine, "at": self.clock.time()})
            except PeersUnavailable:
                return  # reported again once Redis is back (the link's change)
            self._reported = mine

    def start(self) -> None:
        """The heartbeat: this instance's report again every ``lease_ttl``."""
        if self._heartbeat is None:
            self._heartbeat = self.spawn(self._beat(), name="warnings heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.fleet.config.lease_ttl)
            self._reported = None  # report even if unchanged
            self.changed()

    async def _publish(self, holds: dict[str, dict[str, str]]) -> None:
        epoch = self.fleet.election.epoch
        if epoch is None:
            return
        async with self._writes:
            try:
                await self.fleet.records.put(HOLDS, HOLDS_KEY, holds, epoch=epoch)
            except StaleLeader as exc:
                log.warning("the fleet's holds were not published: %s", exc)
                self.fleet.election.state.lost(f"a leader's write was refused: {exc}")
                self._published = None
            except PeersUnavailable:
                self._published = None  # again once Redis is back

    async def stop(self) -> None:
        """This instance's report goes: a node it alone saw WARNING is not held for it."""
        self._stopped = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        with contextlib.suppress(PeersUnavailable):
            await self.fleet.records.delete(WARNINGS, self.fleet.name)
