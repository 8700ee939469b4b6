"""Watches the live gateway for outage conditions and feeds the incident tracker.

Conditions: every node out of rotation; serving nodes below ``min_healthy`` for
unplanned reasons; the fast burn-rate rule; a deploy that failed or rolled back.
A whole-fleet maintenance window is planned: it opens no incident.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.clock import Clock
from gateway.config.schema import IncidentConfig
from gateway.events import Event, News
from gateway.node import PLANNED_STATES, NodeChanged
from monitor.deploy.record import Status
from monitor.deploy.runner import DeployFinished
from monitor.incident.tracker import RESOLVED, Change, Incident, IncidentTracker
from monitor.notify import Notice, NotifierHub
from monitor.ports import ClusterView, ErrorBudget, Events, PhaseView, Spawn, Store, WriteRefused

log = logging.getLogger("hagw.incidents")
NAMESPACE = "incidents"
#: Burn rate and the resolve timer are looked at this often, besides every event.
TICK = 5.0
_TIMELINE_KINDS = ("node.", "deploy.", "maintenance.", "queue.", "config.", "gateway.")
_UNPLANNED = frozenset({"UNHEALTHY", "EJECTED", "WARNING"})


class IncidentWatcher:
    def __init__(self, config: IncidentConfig, *, cluster: ClusterView, budget: ErrorBudget,
                 maintenance: PhaseView, store: Store, events: Events, notifier: NotifierHub,
                 spawn: Spawn, clock: Clock, registry: CollectorRegistry) -> None:
        self.cluster = cluster
        self.budget = budget
        self.maintenance = maintenance
        self.store = store
        self.events = events
        self.notifier = notifier
        self.spawn = spawn
        self.clock = clock
        self.tracker = IncidentTracker(config, clock)
        self._deploy_failed: str | None = None
        #: Bad requests counted when each running deploy started.
        self._deploy_bad: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.opened_total = Counter("hagw_incidents", "Incidents opened", registry=registry)
        Gauge("hagw_incidents_open", "1 while an incident is open",
              registry=registry).set_function(lambda: 1.0 if self.tracker.current else 0.0)
        events.subscribe(Event, self._on_event)
        events.subscribe(DeployFinished, self._on_deploy)

    def __repr__(self) -> str:
        current = self.tracker.current
        return f"<IncidentWatcher {'open ' + current.id if current else 'quiet'}>"

    @property
    def config(self) -> IncidentConfig:
        return self.tracker.config

    async def start(self, *, watch: bool = True) -> None:
        """Load the incidents and, with ``watch`` (not on a fleet's follower: the leader
        alone opens incidents), start judging the outage conditions."""
        for data in (await self.store.items(NAMESPACE)).values():
            self.tracker.restore(Incident.from_json(data))
        if watch:
            self._task = self.spawn(self._loop(), name="incident watch")

    async def take_over(self) -> None:
        """This instance now leads the fleet: the incidents as the shared records hold
        them, then the watch."""
        await self.let_go()
        await self.start()

    async def let_go(self) -> None:
        """Another instance leads: stop watching here, without a write."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def refresh(self) -> None:
        """A follower (again): every incident as the fleet's leader recorded it."""
        for data in (await self.store.items(NAMESPACE)).values():
            self.mirror(data)

    def mirror(self, data: dict[str, Any]) -> None:
        """A follower's copy of an incident the leader recorded (its status page shows it)."""
        self.tracker.restore(Incident.from_json(data))

    async def stop(self) -> None:
        watching = self._task is not None
        await self.let_go()
        if watching and self.tracker.current is not None:
            try:
                await self._save(self.tracker.current)
            except WriteRefused as exc:  # not the fleet's leader any more
                log.warning("incident %s: not saved at stop: %s", self.tracker.current.id, exc)

    # -- inputs -----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Every event an operator would want in an incident's timeline."""
        logged = event.log_entry()
        if logged is None:
            return
        kind = logged.kind
        if kind.startswith("incident.") or not kind.startswith(_TIMELINE_KINDS):
            return
        if kind == "deploy.started" and logged.data.get("deploy"):
            self._deploy_bad[str(logged.data["deploy"])] = self.budget.totals[1]
        if kind == "deploy.step" and logged.data.get("ok") is None:
            return  # "started" lines: the result line says it all
        entry: dict[str, Any] = {"at": self.clock.time(), "kind": kind,
                                 "message": logged.message}
        if logged.node:
            entry["node"] = logged.node
        if (isinstance(event, NodeChanged) and event.transition is not None
                and event.transition.new.value in _UNPLANNED):
            entry["unplanned"] = True
        self.tracker.observe(entry)
        if kind.startswith(("node.", "deploy.")):
            self._wake.set()  # look now, not at the next tick

    def _on_deploy(self, event: DeployFinished) -> None:
        """A failed or rolled-back deploy is an outage only if users saw it: requests
        failed while it ran. One that hurt nobody is a deploy event, not an incident."""
        record = event.record
        before = self._deploy_bad.pop(record.id, None)
        if record.status not in (Status.ROLLED_BACK, Status.FAILED):
            return
        if before is None:  # started before this process: count from its creation
            failed = self.budget.window(max(1.0, self.clock.time() - record.created)).bad
        else:
            failed = self.budget.totals[1] - before
        if failed > 0:
            entry = event.log_entry()
            self._deploy_failed = f"{entry.message} ({failed} request(s) failed meanwhile)"

    def conditions(self) -> dict[str, str]:
        config = self.config
        cluster = self.cluster
        found: dict[str, str] = {}
        planned = self.maintenance.phase.planned
        nodes = list(cluster)
        serving = sum(1 for n in nodes if n.serving)
        if not planned and nodes:
            unplanned = [n for n in nodes if not n.serving and n.state not in PLANNED_STATES]
            if serving == 0:
                states = ", ".join(f"{n.name} {n.state}" for n in nodes)
                found["all_nodes_out"] = f"every node is out of rotation ({states})"
            elif unplanned and cluster.below_floor():
                found["below_min_healthy"] = (
                    f"only {cluster.serving_primaries()} node(s) serving, below "
                    f"min_healthy={cluster.floor} ("
                    + ", ".join(f"{n.name} {n.state}" for n in unplanned) + ")")
        slo = self.budget
        hour = slo.window(3600)
        if hour.total >= config.min_requests:
            fast, slow = slo.burn_rate(300), slo.burn_rate(3600)
            if fast > config.fast_burn and slow > config.fast_burn:
                found["fast_burn"] = (f"error budget burning fast: {slow:.1f}x over 1h and "
                                      f"{fast:.1f}x over 5m (page above {config.fast_burn:g}x)")
        if self._deploy_failed is not None:
            found["deploy_failed"] = self._deploy_failed
            self._deploy_failed = None
        return found

    # -- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            # Cleared before looking, so a node change during the evaluation's own I/O
            # (saving, announcing) wakes the next look at once instead of TICK later.
            self._wake.clear()
            await self.evaluate()
            try:
                async with asyncio.timeout(TICK):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def evaluate(self) -> list[Change]:
        changes = self.tracker.evaluate(self.conditions(), list(self.budget.totals),
                                        self.budget.budget_remaining())
        for change in changes:
            await self._announce(change)
        if self.tracker.current is not None or changes:
            await self._save(self.tracker.current or changes[-1].incident)
        return changes

    async def _announce(self, change: Change) -> None:
        incident = change.incident
        impact = incident.impact()
        if change.kind == "opened":
            self.opened_total.inc()
            title = f"Incident opened: {incident.title}"
            text = "; ".join(incident.causes)
            level = logging.ERROR
        elif change.kind == "monitoring":
            title = f"Incident recovered, monitoring: {incident.title}"
            text = "every outage condition has cleared"
            level = logging.WARNING
        else:
            title = f"Incident resolved: {incident.title}"
            text = (f"{impact['requests_failed']} request(s) failed; "
                    f"{impact['budget_consumed']:.2%} of the error budget consumed")
            level = logging.WARNING
        self.events.publish(News(f"incident.{change.kind}", f"{incident.id}: {title}",
                                 level=level, data={"incident": incident.id}))
        self.notifier.publish(Notice(f"incident.{change.kind}", title, text, self.clock.time(),
                                     {"id": incident.id, "severity": incident.severity},
                                     starts=incident.started_at, ends=incident.resolved_at))

    async def _save(self, incident: Incident) -> None:
        await self.store.put(NAMESPACE, incident.id, incident.to_json())

    async def update(self, incident_id: str, status: str, text: str) -> dict[str, Any]:
        """An operator's public update (ValueError for a bad status or a closed incident)."""
        incident = self.tracker.incidents[incident_id]
        update = self.tracker.update(incident_id, status, text)
        if status == RESOLVED:
            await self._announce(Change("resolved", incident))
        else:
            self.events.publish(News("incident.update", f"{incident_id}: {status}: "
                                     f"{update['text']}", data={"incident": incident_id}))
        await self._save(incident)
        return update

    async def acknowledge(self, incident_id: str) -> Incident:
        incident = self.tracker.acknowledge(incident_id)
        await self._save(incident)
        return incident

    async def note(self, incident_id: str, text: str) -> dict[str, Any]:
        note = self.tracker.note(incident_id, text)
        await self._save(self.tracker.incidents[incident_id])
        return note
