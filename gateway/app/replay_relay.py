"""The queue replay of a fleet (``peers``): the leader alone replays the shared queue, in
its global arrival order; every instance's traffic listener stays in its replay phase
(new writes on queue routes join the back of the line) until the leader says the queue
is empty.

Both ways go through the shared records' ``replay`` namespace, whose change notices every
instance hears:

* ``kick``: an instance queued a write during the replay, or forwarded writes it had
  spooled while Redis was away; the leader's replay must see them;
* ``idle``: the leader's replay emptied the queue; the others leave their replay phase
  once their own look at the queue agrees.

A notice lost while Redis was away is made up for when the link comes back: the records'
resync asks the same questions again.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from gateway.app.fleet import Fleet
from gateway.maintenance import Phase
from gateway.queue.store import Entry
from monitor.maintenance.manager import MaintenanceManager
from monitor.peers.records import Change, Notice, Resync
from monitor.ports import Spawn, WriteRefused

log = logging.getLogger("hagw.peers.replay")

NAMESPACE = "replay"


class FleetReplay:
    """The traffic listener's replay port and the maintenance manager's relay, in a
    fleet. ``manager`` is set once the maintenance manager exists."""

    def __init__(self, fleet: Fleet, *, spawn: Spawn) -> None:
        self.fleet = fleet
        self.spawn = spawn
        self.manager: MaintenanceManager | None = None
        self._serial = itertools.count(1)
        #: A kick is on its way; another asked meanwhile goes after it (one at a time).
        self._asking = False
        self._ask_again = False
        fleet.watch(NAMESPACE, self.on_notice)

    def __repr__(self) -> str:
        role = "leader" if self.fleet.election.leading else "follower"
        return f"<FleetReplay {self.fleet.name} {role}{' asking' if self._asking else ''}>"

    def _manager(self) -> MaintenanceManager:
        if self.manager is None:
            raise RuntimeError("the fleet's replay has no maintenance manager yet")
        return self.manager

    # -- the traffic listener's port (ReplayWaiter) ----------------------------------------

    def ensure_running(self) -> None:
        self._manager().replay_wanted()

    async def wait_result(self, ticket: str, timeout: float) -> Entry | None:
        """On the leader, the replay's own answer; on a follower none (the client gets its
        202 and ticket at once rather than wait for news it would not hear)."""
        if not self.fleet.election.leading:
            return None
        return await self._manager().replayer.wait_result(ticket, timeout)

    # -- the maintenance manager's relay (ReplayRelay) ---------------------------------------

    def ask_leader(self) -> None:
        if self._asking:
            self._ask_again = True
            return
        self._asking = True
        self.spawn(self._ask(), name="ask the leader to replay")

    async def _ask(self) -> None:
        try:
            while True:
                self._ask_again = False
                await self._tell("kick")
                if not self._ask_again:
                    return
        finally:
            self._asking = False

    def replay_finished(self) -> None:
        self.spawn(self._tell("idle"), name="tell the fleet the replay is over")

    async def _tell(self, key: str) -> None:
        news: dict[str, Any] = {"from": self.fleet.name, "at": time.time(),
                                "n": next(self._serial)}
        try:
            await self.fleet.put(NAMESPACE, key, news, f"replay news ({key})")
        except WriteRefused as exc:  # Redis away: the resync after it asks again
            log.info("replay news %r not sent: %s", key, exc)

    # -- what the others say -----------------------------------------------------------------

    def on_notice(self, notice: Notice) -> None:
        manager = self.manager
        if manager is None:
            return
        leading = self.fleet.election.leading
        if isinstance(notice, Resync):
            if leading:
                manager.replay_wanted()
            elif manager.mode.phase is Phase.REPLAYING:
                self.spawn(manager.replay_over(), name="replay over?")
        elif isinstance(notice, Change) and notice.key == "kick" and leading:
            manager.replay_wanted()
        elif isinstance(notice, Change) and notice.key == "idle" and not leading:
            self.spawn(manager.replay_over(), name="replay over?")
