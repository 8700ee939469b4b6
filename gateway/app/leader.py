"""What only the fleet's leader runs (``peers``): deploys, the incident watch and the
replay of the shared write queue.
Becoming the leader takes them over where their shared records stand; losing the lease
stops them here at once, without a write (Redis would refuse it anyway: the epoch is
over). A follower keeps a copy of the leader's deploy records and incidents for its
reads and its status page.

Changes of leadership are handled one after the other, in the order they happened.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.events import EventBus
from monitor.deploy.runner import DeployRunner
from monitor.incident.watch import IncidentWatcher
from monitor.maintenance.manager import MaintenanceManager
from monitor.peers.connection import PeersUnavailable
from monitor.peers.lease import LeadershipChanged
from monitor.peers.records import Change, Notice, Resync
from monitor.ports import Spawn, WriteRefused

log = logging.getLogger("hagw.peers.leader")


class LeaderDuties:
    def __init__(self, name: str, deploys: DeployRunner, incidents: IncidentWatcher,
                 maintenance: MaintenanceManager, *, bus: EventBus, spawn: Spawn) -> None:
        self.name = name
        self.deploys = deploys
        self.incidents = incidents
        self.maintenance = maintenance
        self.spawn = spawn
        self.leading = False
        self._active = False
        self._turns = asyncio.Lock()
        bus.subscribe(LeadershipChanged, self._on_change)

    def __repr__(self) -> str:
        return f"<LeaderDuties {self.name} {'leading' if self.leading else 'following'}>"

    def _on_change(self, event: LeadershipChanged) -> None:
        if event.name != self.name:
            return
        self.leading = event.leading
        if self._active:
            self.spawn(self._turn(event.leading), name="leader duties")

    def activate(self, leading: bool) -> None:
        """The duties may run from now on (the deploy runner has started)."""
        self._active = True
        self.leading = leading
        if leading:
            self.spawn(self._turn(True), name="leader duties")

    def deactivate(self) -> None:
        """Shutting down: the deploy runner and the incident watch stop in their own
        steps; a change of leadership from now on (the lease released) does nothing."""
        self._active = False

    async def _turn(self, leading: bool) -> None:
        async with self._turns:
            if leading != self.leading or not self._active:
                return  # it changed again meanwhile: the later turn does it
            if leading:
                try:
                    await self.deploys.take_over()
                    await self.incidents.take_over()
                    await self.maintenance.take_over()
                except (WriteRefused, PeersUnavailable) as exc:
                    log.warning("leader duties: could not take over: %s", exc)
            else:
                await self.deploys.let_go()
                await self.incidents.let_go()
                await self.maintenance.let_go()
                # Notices that arrived while this instance still led were not mirrored:
                # take the leader's records now (the last known ones if Redis is down).
                await self.deploys.refresh()
                await self.incidents.refresh()

    def on_deploys(self, notice: Notice) -> None:
        """The leader saved a deploy record: a follower's copy, for its reads."""
        if self.leading:
            return
        if isinstance(notice, Resync):
            for data in notice.records.get("deploys", {}).values():
                self.deploys.mirror(data)
        elif isinstance(notice, Change) and isinstance(notice.value, dict):
            self.deploys.mirror(notice.value)
        elif isinstance(notice, Change) and notice.deleted:
            self.deploys.records.pop(notice.key, None)

    def on_incidents(self, notice: Notice) -> None:
        """The leader recorded an incident: a follower's copy, for its status page."""
        if self.leading:
            return
        if isinstance(notice, Resync):
            for data in notice.records.get("incidents", {}).values():
                self.incidents.mirror(data)
        elif isinstance(notice, Change) and isinstance(notice.value, dict):
            self.incidents.mirror(notice.value)
