"""Runs maintenance windows: announcements, node holds, maintenance mode, then replay.

A whole-fleet window puts every node in MAINTENANCE and the traffic listener in
maintenance mode. When it ends the nodes are verified (STARTING, probes, verify),
then the queued writes are replayed in arrival order, then traffic is normal
again. A node-subset window only holds those nodes in MAINTENANCE and readmits
them through verification; traffic keeps flowing through the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.clock import Clock
from gateway.config.schema import GatewayConfig
from gateway.events import News
from gateway.maintenance import Phase, WriteQueued
from gateway.queue.store import DONE, Entry, QueueStore
from monitor.maintenance.replay import Replayer, ReplayFinished, ReplayIdle
from monitor.maintenance.schedule import ACTIVE, Due, Schedule, Window, iso
from monitor.notify import Notice, NotifierHub
from monitor.ports import (
    Advisory,
    ClusterView,
    Events,
    ReplayRelay,
    Spawn,
    Store,
    TrafficMode,
    WriteRefused,
)

log = logging.getLogger("hagw.maintenance")
NAMESPACE = "maintenance"
#: Finished queue results are purged this often.
PURGE_EVERY = 600.0


class MaintenanceMetrics:
    def __init__(self, registry: CollectorRegistry, manager: MaintenanceManager) -> None:
        active = Gauge("hagw_maintenance_active", "1 while a whole-fleet maintenance window "
                       "(or its recovery) is on", registry=registry)
        active.set_function(lambda: 1.0 if manager.mode.phase in (Phase.ACTIVE,
                                                                  Phase.RECOVERING) else 0.0)
        depth = Gauge("hagw_queue_depth", "Queued writes not yet replayed", registry=registry)
        depth.set_function(lambda: float(manager.queue.depth))
        self.entries = Counter("hagw_queue_entries", "Queued writes by event: queued, "
                               "replayed (done) and failed", ["event"], registry=registry)
        rate = Gauge("hagw_queue_replay_rate", "Queued writes finished per second over the "
                     "last 10s", registry=registry)
        rate.set_function(manager.replayer.rate)
        oldest = Gauge("hagw_queue_oldest_age_seconds", "Age of the oldest write still waiting "
                       "in the queue (0 when empty)", registry=registry)
        oldest.set_function(manager.oldest_age)


class MaintenanceManager:
    def __init__(self, config: GatewayConfig, *, cluster: ClusterView, store: Store,
                 queue: QueueStore, replayer: Replayer, mode: TrafficMode, advisory: Advisory,
                 notifier: NotifierHub, events: Events, spawn: Spawn, clock: Clock,
                 registry: CollectorRegistry,
                 leads: Callable[[], bool] = lambda: True,
                 relay: ReplayRelay | None = None) -> None:
        self.config = config
        #: Whether this gateway sends the announcements and replays the queue (in a fleet:
        #: its leader only; ``relay`` then carries the replay's news between instances).
        self.leads = leads
        self.relay = relay
        self.cluster = cluster
        self.store = store
        self.queue = queue
        self.replayer = replayer
        self.mode = mode
        self.advisory = advisory
        self.notifier = notifier
        self.events = events
        self.spawn = spawn
        self.clock = clock
        self.schedule = Schedule(config.maintenance.announce, clock)
        self.metrics = MaintenanceMetrics(registry, self)
        #: seq -> created of every write still waiting, in arrival order.
        self._oldest: dict[int, float] = {}
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        events.subscribe(WriteQueued, lambda event: self.queued(event.entry))
        events.subscribe(ReplayFinished, lambda event: self._finished(event.entry))
        events.subscribe(ReplayIdle, lambda _event: self._replay_idle())

    def __repr__(self) -> str:
        return (f"<MaintenanceManager {self.mode.phase.value} "
                f"windows={len(self.schedule.windows)} depth={self.queue.depth}>")

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.leads():  # in a fleet a new leader recovers the queue (take_over)
            await self._recover()
        for data in (await self.store.items(NAMESPACE)).values():
            self.schedule.restore(Window.from_json(data))
        await self._sync_config_windows(self.config)
        for window in self.schedule.active():
            self._hold(window)  # restart inside a window: pick it up again
        self._oldest = dict(await self.queue.pending_index())
        if self.queue.depth and self.schedule.fleet_window() is None:
            self.spawn(self._after_window(None), name="replay after restart")
        self._update_advisory()
        self._loop_task = self.spawn(self._loop(), name="maintenance schedule")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self.replayer.stop()

    async def _recover(self) -> None:
        recovered = await self.queue.recover()  # the queue is open: its owner opened it
        if recovered:
            self.events.publish(News("queue.recovered", f"{recovered} write(s) were being "
                                      "replayed when the replay stopped (a restart, or a new "
                                      "leader); they go back in line and are re-sent with the "
                                      "same Idempotency-Key", level=logging.WARNING))

    # -- in a fleet: the replay follows the lease ------------------------------------------

    async def take_over(self) -> None:
        """This instance became the fleet's leader: what the old leader was replaying goes
        back in line, and the replay goes on here (unless a whole-fleet window is on)."""
        await self._recover()
        await self.queue.stats()  # the fleet's depth, as Redis has it now
        if self.queue.depth and self.schedule.fleet_window() is None:
            self.spawn(self._after_window(None), name="replay after a change of leader")

    async def let_go(self) -> None:
        """This instance stopped leading: its replay stops (its writes would be refused)."""
        await self.replayer.stop()

    def replay_wanted(self) -> None:
        """A write was queued during the replay (here, in a worker, or on another instance
        for the leader): the replay must see it."""
        if self.leads():
            # Not while a window is on or its nodes are being verified: its end replays.
            if self.mode.phase in (Phase.REPLAYING, Phase.NORMAL):
                self.replayer.ensure_running()
        elif self.relay is not None:
            self.relay.ask_leader()

    async def replay_over(self) -> None:
        """The leader says it emptied the queue: leave the replay phase if the fleet's
        queue is empty (a write queued meanwhile keeps it, and the leader replays it)."""
        await self.queue.stats()
        self._replay_idle()

    async def configure(self, config: GatewayConfig) -> None:
        self.config = config
        self.replayer.config = config.maintenance
        self.schedule.lead_times = tuple(sorted(config.maintenance.announce, reverse=True))
        await self._sync_config_windows(config)
        self._changed.set()

    async def _sync_config_windows(self, config: GatewayConfig) -> None:
        """Windows declared in the config are scheduled once; a cancelled one stays cancelled."""
        now = self.clock.time()
        for declared in config.maintenance.windows:
            window_id = f"cfg-{int(declared.start)}-{'-'.join(declared.nodes) or 'fleet'}"
            if window_id in self.schedule.windows or declared.start + declared.duration <= now:
                continue
            window = self.schedule.add(declared.start, declared.duration, declared.reason,
                                       declared.nodes, source="config", window_id=window_id)
            try:
                await self._save(window)
            except WriteRefused as exc:  # shared windows, Redis down: every gateway has it
                log.warning("config window %s: not recorded: %s", window_id, exc)

    # -- the schedule loop ---------------------------------------------------------------

    async def _loop(self) -> None:
        next_purge = 0.0
        while True:
            await self.tick()
            if time.monotonic() >= next_purge:
                await self.purge_results()
                next_purge = time.monotonic() + PURGE_EVERY
            wait = next_purge - time.monotonic()
            deadline = self.schedule.next_deadline()
            if deadline is not None:
                wait = max(0.05, min(wait, deadline - self.clock.time()))
            self._changed.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def tick(self) -> list[Due]:
        """Do what the schedule says is due now (the loop calls this; so can tests)."""
        done = self.schedule.due()
        for due in done:
            self.schedule.apply(due)
            if due.kind == "announce":
                self._announce(due.window, due.key)
            elif due.kind == "start":
                self._begin(due.window)
            else:
                self._end(due.window)
            try:
                await self._save(due.window)
            except WriteRefused as exc:
                # Shared windows with Redis down: this gateway goes by its own copy, and
                # every other one by its own clock; the record catches up later.
                log.warning("window %s: not recorded: %s", due.window.id, exc)
        if done:
            self._update_advisory()
        return done

    async def purge_results(self) -> int:
        """Forget replay results older than ``result_ttl``. Wall time from ``time.time()``,
        not ``self.clock``: the store stamps ``finished`` with it."""
        ttl = self.config.maintenance.result_ttl
        purged = await self.queue.purge(time.time() - ttl)
        if purged:
            log.info("forgot %d replay result(s) older than %gs", purged, ttl)
        return purged

    def _announce(self, window: Window, key: str) -> None:
        if not self.leads():
            return  # another gateway of the fleet announces it
        title, text = self.schedule.describe(window, key)
        event = {"scheduled": "maintenance.scheduled", "started": "maintenance.started",
                 "ended": "maintenance.ended", "cancelled": "maintenance.cancelled"}.get(
            key, "maintenance.reminder")
        self.notifier.publish(Notice(event, title, text, self.clock.time(),
                                     {"window": window.id, "start": window.start,
                                      "end": window.end, "nodes": list(window.nodes),
                                      "reason": window.reason},
                                     starts=window.start, ends=window.end))
        self.events.publish(News(event, f"{title} ({text})", data={"window": window.id}))

    def _begin(self, window: Window) -> None:
        self._announce(window, "started")
        self._hold(window)

    def _hold(self, window: Window) -> None:
        why = f"maintenance {window.id}: {window.reason}"
        names = window.nodes or tuple(n.name for n in self.cluster)
        for name in names:
            node = self.cluster.get(name)
            if node is not None:
                node.enter_maintenance(why)
        if window.whole_fleet:
            self.mode.window = {"id": window.id, "reason": window.reason, "end": window.end}
            self.mode.phase = Phase.ACTIVE

    def _end(self, window: Window) -> None:
        self._announce(window, "ended")
        names = window.nodes or tuple(n.name for n in self.cluster)
        for name in names:
            node = self.cluster.get(name)
            if node is not None and node.maintenance is not None:
                node.exit_maintenance(f"maintenance {window.id} over: verifying")
        if window.whole_fleet:
            self.mode.phase = Phase.RECOVERING
            self.spawn(self._after_window(window), name=f"after {window.id}")

    async def _after_window(self, window: Window | None) -> None:
        """Verification first (bounded), then the replay, then normal traffic."""
        cluster = self.cluster
        timeout = self.config.maintenance.verify_timeout
        verified = await cluster.wait_until(lambda: cluster.serving_primaries() >= max(
            1, cluster.floor), timeout)
        if self.schedule.fleet_window() is not None:
            # Another whole-fleet window began while the nodes were being verified: it owns
            # the traffic listener now, and its own end replays the queue.
            return
        if not verified:
            log.warning("nodes not verified %gs after the window; replaying to whatever "
                        "serves (replay pauses while nothing does)", timeout)
        await self.queue.stats()  # in a fleet: what every instance queued
        if self.queue.depth:
            self.mode.phase = Phase.REPLAYING
            if not self.leads():
                # The leader replays, and its news ends this phase here (replay_over);
                # asked now, it tells even if it was done before this instance got here.
                if self.relay is not None:
                    self.relay.ask_leader()
                return
            self.events.publish(News("queue.replay_started", f"replaying {self.queue.depth} "
                                      "queued write(s) in arrival order"))
            self.replayer.ensure_running()
        else:
            self.mode.phase = Phase.NORMAL
            self.mode.window = None

    def _replay_idle(self) -> None:
        if self.queue.depth:
            return
        if self.mode.phase is Phase.REPLAYING:
            self.mode.phase = Phase.NORMAL
            self.mode.window = None
            if self.leads():
                self.events.publish(News("queue.replay_finished",
                                         "every queued write was replayed"))
        if self.leads() and self.relay is not None:
            self.relay.replay_finished()  # the others' phase, whatever this one's was

    # -- queue accounting ----------------------------------------------------------------

    def queued(self, entry: Entry) -> None:
        self.metrics.entries.labels("queued").inc()
        self._oldest.setdefault(entry.seq, entry.created)

    def _finished(self, entry: Entry) -> None:
        self.metrics.entries.labels("replayed" if entry.status == DONE else "failed").inc()
        self._oldest.pop(entry.seq, None)
        if entry.status != DONE:
            # Named by its number and request id: the ticket is its client's credential,
            # and the query string may carry one too.
            path = entry.target.split("?", 1)[0]
            self.events.publish(News("queue.failed", f"queued write #{entry.seq} (request "
                                      f"{entry.request_id or '-'}, {entry.method} {path}) "
                                      f"failed after {entry.attempts} attempts: "
                                      f"{entry.error}", level=logging.ERROR))

    def oldest_age(self) -> float:
        # Keys are in arrival order, so the first one is the oldest still waiting.
        oldest = next(iter(self._oldest.values()), None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    # -- the advisory header -------------------------------------------------------------

    def _update_advisory(self) -> None:
        """Before a whole-fleet window, responses carry X-Maintenance-Scheduled."""
        now = self.clock.time()
        horizon = max(self.schedule.lead_times, default=86400.0)
        upcoming = [w for w in self.schedule.upcoming()
                    if w.whole_fleet and w.start - now <= horizon]
        self.advisory.advisory = (f"{iso(upcoming[0].start)}/{iso(upcoming[0].end)}"
                                  if upcoming else None)

    # -- the operator's API --------------------------------------------------------------

    async def schedule_window(self, start: float, duration: float, reason: str,
                              nodes: tuple[str, ...]) -> Window:
        unknown = [n for n in nodes if self.cluster.get(n) is None]
        if unknown:
            raise ValueError(f"no node named {', '.join(unknown)}")
        window = self.schedule.add(start, duration, reason, nodes)
        try:
            await self._save(window)
        except WriteRefused:
            del self.schedule.windows[window.id]  # refused: it was never scheduled
            raise
        await self.tick()
        self._changed.set()
        return window

    async def cancel(self, window_id: str) -> Window:
        window = self.schedule.cancel(window_id)
        self._announce(window, "cancelled")
        await self._save(window)
        self._update_advisory()
        self._changed.set()
        return window

    async def end(self, window_id: str) -> Window:
        window = self.schedule.end_now(window_id)
        await self.tick()
        return window

    def shared(self, data: dict[str, Any]) -> None:
        """Another gateway of the fleet recorded ``data`` (a window): merge it into this
        one's schedule, whose loop then does what is due."""
        self.schedule.merge(Window.from_json(data))
        self._update_advisory()
        self._changed.set()

    def current(self) -> Window | None:
        active = self.schedule.active()
        return active[0] if active else None

    async def _save(self, window: Window) -> None:
        await self.store.put(NAMESPACE, window.id, window.to_json())

    async def summary(self) -> dict[str, Any]:
        stats = await self.queue.stats()
        windows = sorted(self.schedule.windows.values(), key=lambda w: w.start)
        return {
            "mode": self.mode.phase.value,
            "active": [w.to_json() for w in windows if w.status == ACTIVE],
            "upcoming": [w.to_json() for w in self.schedule.upcoming()],
            "recent": [w.to_json() for w in windows if w.status not in ("scheduled", ACTIVE)][-20:],
            "queue": {"depth": stats.depth, "queued": stats.queued,
                      "replaying": stats.replaying, "done": stats.done, "failed": stats.failed,
                      "oldest_age_seconds": self.oldest_age(), "bytes": stats.bytes,
                      "replay_rate": self.replayer.rate()},
            "announcements": [asdict(d) for d in self.notifier.deliveries
                              if d.event.startswith("maintenance.")],
        }

