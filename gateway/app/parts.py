"""The parts of one gateway process, wired: every part is built with the ports it takes
(never the gateway itself), and a reload rewires them. ``gateway.app.runtime`` runs them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.app import reactions
from gateway.app.dataplane import DataPlane, EjectionTimer, listener_tls, upstream_tls
from gateway.app.drains import OperatorDrains
from gateway.app.fleet import Fleet, LeaderStore, SharedRecords
from gateway.app.fleet_budget import FleetBudget
from gateway.app.fleet_queue import fleet_queue
from gateway.app.fleet_rates import FleetRates
from gateway.app.floor import FleetFloor
from gateway.app.leader import LeaderDuties
from gateway.app.metrics import ControlMetrics
from gateway.app.replay_relay import FleetReplay
from gateway.app.stats import NodeStats
from gateway.app.tasks import Tasks
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.cluster import Cluster
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.diff import changed_keys
from gateway.events import EventBus, EventLog, News
from gateway.node import Node
from gateway.queue.store import Entry
from gateway.store import StateStore
from gateway.tls import ServerTls, TlsCollector, TlsError
from monitor.deploy.runner import DeployRunner
from monitor.health import HealthChecker
from monitor.incident.watch import IncidentWatcher
from monitor.maintenance.manager import MaintenanceManager
from monitor.maintenance.replay import Replayer
from monitor.notify import NotifierHub
from monitor.peers.counts import FleetRateLimit, FleetSlo
from monitor.peers.queue import SpooledQueue
from monitor.peers.records import Change, Notice, Resync
from monitor.slo import SloTracker
from monitor.uptime import NodeUptime

log = logging.getLogger("hagw")

class UpgradeUnsupported(Exception):
    """This gateway cannot be upgraded in place (409)."""


class _NoReplay:
    """Stands in until the replayer exists (it needs the data plane's queue and router)."""

    def ensure_running(self) -> None:
        raise RuntimeError("no replay yet")

    async def wait_result(self, ticket: str, timeout: float) -> Entry | None:
        raise RuntimeError("no replay yet")


#: How often the listeners' certificate files are checked for a change (a stat each).
TLS_WATCH_EVERY = 5.0


def restart_keys(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """What a reload from ``old`` to ``new`` changes that only a restart applies. The
    listeners' certificates are reloaded live; turning TLS on or off, or moving the
    redirect listener, is not."""
    pending = [k for k in ("listen", "state_dir", "peers") if getattr(old, k) != getattr(new, k)]
    if (dataclasses.replace(old.admin, tls=None) != dataclasses.replace(new.admin, tls=None)
            or (old.admin.tls is None) != (new.admin.tls is None)):
        pending.append("admin")
    if (old.tls is None) != (new.tls is None) or (
            old.tls is not None and new.tls is not None
            and old.tls.http_redirect != new.tls.http_redirect):
        pending.append("tls")
    return pending


class Parts:
    """The parts of one gateway, wired: each built with the ports it takes."""

    def __init__(self, config: GatewayConfig, *, config_path: str | None = None,
                 clock: Clock = SYSTEM_CLOCK,
                 data_registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.changed_keys: list[str] = []
        #: What the last reload changed that only a restart applies (``restart_keys``).
        self.restart_needed: list[str] = []
        # -- the kernel: events, tasks, metrics, the cluster --------------------------------
        self.bus = EventBus()
        self.events = EventLog(self.bus, clock=clock)
        #: The state files are written and closed: a new supervisor owns them (an upgrade).
        self.state_released = False
        self.started_at = clock.time()
        self.tasks = Tasks()
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = ControlMetrics(self.registry)
        #: The data plane's own series: on the gateway's registry in one process; apart in
        #: a supervisor, whose /metrics sums them with every worker's.
        self.data_registry = data_registry or self.registry
        #: The listeners' TLS, their files read and checked now (a bad one is a
        #: ConfigError). A supervisor's traffic ServerTls serves nothing: it checks the
        #: files its workers will load and gives the expiry metric.
        self.traffic_tls = listener_tls("traffic", config.tls, "tls", clock, config_path)
        self.admin_tls = listener_tls("admin", config.admin.tls, "admin.tls", clock,
                                      config_path)
        #: The listeners' TLS (hagw_tls_* metrics): one ServerTls per listener with tls.
        self.tls_servers: list[ServerTls] = [
            s for s in (self.traffic_tls, self.admin_tls) if s is not None]
        # Handshake failures are the traffic listener's (aiohttp makes the admin
        # listener's handshakes); in a supervisor its workers count them.
        self.registry.register(TlsCollector(
            lambda: self.tls_servers,
            handshakes=False if self.data_registry is not self.registry else (
                lambda: () if self.traffic_tls is None else (self.traffic_tls,))))
        #: Per-node rates for the status page and `hagw nodes -o wide` (a first sample now,
        #: so the first look has a baseline).
        self.stats = NodeStats(self.registry, clock.monotonic)
        #: The client context for https:// nodes (pools and probes); None without any.
        self.client_tls = upstream_tls(config, clock, config_path)
        # With peers the fleet's leader decides the automatic drains (gateway.app.floor).
        self.cluster = Cluster(config, clock=clock, bus=self.bus,
                               decides=config.peers is None)
        self.store = StateStore(config.state_dir)
        self.slo = SloTracker(config.slo, clock)
        self.uptime = NodeUptime(clock)
        #: This gateway among its peers (``peers``): None when it stands alone.
        self.fleet = (Fleet(config.peers, clock=clock, spawn=self.tasks, events=self.bus,
                            registry=self.registry) if config.peers is not None else None)
        #: The SLO the deploy gate, the incident watch and the status page read: in a
        #: fleet the fleet's counts (gateway.app.fleet_budget), else this gateway's own.
        self.budget: SloTracker | FleetBudget = (
            FleetBudget(self.slo, FleetSlo(self.fleet.link, config.slo, clock=clock),
                        clock=clock, spawn=self.tasks)
            if self.fleet is not None else self.slo)
        self.drains = OperatorDrains(self.cluster, self.store, clock, fleet=self.fleet,
                                     spawn=self.tasks)
        self.floor = (FleetFloor(self.cluster, self.fleet, bus=self.bus, spawn=self.tasks,
                                 clock=clock)
                      if self.fleet is not None else None)
        # -- the control plane's health checks feed the router's passive observer -----------
        self.health = HealthChecker(self.cluster, config, clock=clock, spawn=self.tasks,
                                    events=self.bus, registry=self.registry,
                                    client_tls=self.client_tls)
        # -- the data plane ---------------------------------------------------------------
        # In a fleet the queue is the fleet's stream, this instance's file its spool; the
        # replay's writes are fenced by the leader's epoch.
        fleet = self.fleet
        queue = (fleet_queue(config, fleet.link, spawn=self.tasks, fence=fleet.election.fence)
                 if fleet is not None else None)
        self.data = data = DataPlane(
            config, cluster=self.cluster, clock=clock, registry=self.data_registry,
            passive=self.health.detector, outcomes=self.budget, replay=_NoReplay(),
            publish=self.bus.publish, client_tls=self.client_tls, queue=queue)
        self.accounting = data.accounting
        self.outlier = data.outlier
        self.pools = data.pools
        self.router = data.router
        self.websockets = data.websockets
        self.traffic = data.traffic
        #: ``rate_limit.scope: fleet``: clients' spending exchanged with the other instances.
        self.fleet_rates: FleetRates | None = None
        if self.fleet is not None:
            self.traffic.admission.share()
            self.fleet_rates = FleetRates(
                FleetRateLimit(self.fleet.link, clock=clock), active=self._fleet_rate_limits,
                charge=self.charge_fleet_spending, spawn=self.tasks,
                take=self.traffic.admission.take_spent)
        self.queue = data.queue
        self.mode = mode = data.mode
        # -- maintenance: the queue and mode are the data plane's, the rest the monitor's ----
        self.notifier = NotifierHub(config.notifiers, self.tasks, self.bus.publish)
        replayer = Replayer(self.queue, data.forwarder, self.cluster, config.maintenance,
                            spawn=self.tasks, events=self.bus)
        #: In a fleet, how the leader's replay and the others' replay phases keep in step.
        self.fleet_replay = (FleetReplay(fleet, spawn=self.tasks)
                             if fleet is not None else None)
        mode.replay = self.fleet_replay if self.fleet_replay is not None else replayer
        # In a fleet the windows are shared (any instance may schedule one) and only the
        # leader sends their announcements and replays the queue.
        self.maintenance = MaintenanceManager(
            config, cluster=self.cluster,
            store=SharedRecords(fleet, "maintenance window") if fleet is not None
            else self.store, queue=self.queue,
            replayer=replayer, mode=mode, advisory=self.traffic, notifier=self.notifier,
            events=self.bus, spawn=self.tasks, clock=clock, registry=self.registry,
            leads=(lambda: fleet.election.leading) if fleet is not None
            else (lambda: True), relay=self.fleet_replay)
        if self.fleet_replay is not None:
            self.fleet_replay.manager = self.maintenance
        if isinstance(self.queue, SpooledQueue):
            # Spooled writes reaching the stream late are replayed too.
            self.queue.on_forwarded = self.maintenance.replay_wanted
        if fleet is not None:
            fleet.watch("maintenance", self._shared_windows)
        # In a fleet the deploy records are shared and every save is fenced by the epoch.
        self.deploys = DeployRunner(
            config.deploy, cluster=self.cluster, budget=self.budget,
            store=LeaderStore(self.fleet) if self.fleet is not None else self.store,
            events=self.bus, spawn=self.tasks, clock=clock, registry=self.registry)
        self.incidents = IncidentWatcher(
            config.incidents, cluster=self.cluster, budget=self.budget, maintenance=mode,
            store=LeaderStore(self.fleet) if self.fleet is not None else self.store,
            events=self.bus, notifier=self.notifier, spawn=self.tasks,
            clock=clock, registry=self.registry)
        #: What only the fleet's leader runs (deploys, the incident watch); None alone.
        self.leader_duties: LeaderDuties | None = None
        if self.fleet is not None:
            self.leader_duties = LeaderDuties(self.fleet.name, self.deploys, self.incidents,
                                              self.maintenance, bus=self.bus,
                                              spawn=self.tasks)
            self.fleet.watch("incidents", self.leader_duties.on_incidents)
            self.fleet.watch("deploys", self.leader_duties.on_deploys)
        # -- the root's own reactions -------------------------------------------------------
        self.metrics.watch(lambda: iter(self.cluster), lambda: self.cluster.floor,
                           self.uptime, self.slo)
        for node in self.cluster:
            self.uptime.observe(node)
        self.ejections = EjectionTimer(self.cluster)
        reactions.wire(self.bus, metrics=self.metrics, uptime=self.uptime,
                       websockets=self.websockets, timer=self.ejections, tasks=self.tasks,
                       grace=lambda: self.config.shutdown.grace)
        self.ready = False
        self.traffic_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    def _fleet_rate_limits(self) -> bool:
        limits = self.config.rate_limit
        return limits.enabled and limits.scope == "fleet"

    def charge_fleet_spending(self, spent: dict[str, int]) -> None:
        """What the other instances' clients spent: from this gateway's buckets too."""
        self.traffic.admission.charge(spent)

    def __repr__(self) -> str:
        return f"<Gateway {self.config.listen} nodes={len(self.cluster)} ready={self.ready}>"

    @property
    def traffic_url(self) -> str:
        assert self.traffic_address is not None
        scheme = "https" if self.traffic_tls is not None else "http"
        return f"{scheme}://{self.traffic_address[0]}:{self.traffic_address[1]}"

    @property
    def admin_url(self) -> str:
        assert self.admin_address is not None
        scheme = "https" if self.admin_tls is not None else "http"
        return f"{scheme}://{self.admin_address[0]}:{self.admin_address[1]}"

    def _shared_windows(self, notice: Notice) -> None:
        """Another instance recorded maintenance windows: this one's schedule merges them."""
        if isinstance(notice, Resync):
            for data in notice.records.get("maintenance", {}).values():
                self.maintenance.shared(data)
        elif isinstance(notice, Change) and not notice.deleted and isinstance(notice.value,
                                                                              dict):
            self.maintenance.shared(notice.value)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        return self.tasks(coro, name)

    def add_pool(self, node: Node) -> None:
        self.data.add_pool(node)

    # -- what a multi-process gateway does more (gateway.app.supervisor) -------------------

    async def converge(self) -> None:
        """Until every process routes by the current state (a drain answers after this)."""

    async def before_scrape(self) -> None:
        """Before /metrics is rendered: collect what other processes counted."""

    async def node_stats(self) -> dict[str, dict[str, Any]]:
        """Per-node rates over the last minute (see gateway.app.stats), fresh."""
        await self.before_scrape()
        return self.stats.sample()

    async def reload_workers(self) -> None:
        """After a reload: replace worker processes, one at a time."""

    def certificates_changed(self) -> None:
        """The listeners' certificate files changed and were loaded: every process that
        serves them loads them too (a supervisor tells its workers)."""

    def refresh_certificates(self) -> bool:
        """Load the listeners' certificate files again if they changed (``TLS_WATCH_EVERY``);
        True if any was. Unusable new files are refused, once per change, and the old
        certificates keep serving."""
        changed = False
        for server in self.tls_servers:
            try:
                if not server.refresh():
                    continue
            except TlsError as exc:
                self.bus.publish(News("tls.reload_failed", f"kept the old certificates: {exc}",
                                      level=logging.ERROR))
                continue
            changed = True
            names = ", ".join(c.label for c in server.certificates)
            self.bus.publish(News("tls.reloaded", f"{server.listener} listener: its "
                                  f"certificate files changed; new connections get {names}"))
        if changed:
            self.certificates_changed()
        return changed

    def _reload_tls(self, new: GatewayConfig) -> None:
        """The listeners' certificates of ``new``, checked whole and swapped in (new
        connections get them, open ones keep theirs); a bad file is a ConfigError and
        the old certificates keep serving."""
        for server, tls, key in ((self.traffic_tls, new.tls, "tls"),
                                 (self.admin_tls, new.admin.tls, "admin.tls")):
            if server is None or tls is None:
                continue  # TLS turned on or off: a restart does it
            try:
                server.reload(tls)
            except TlsError as exc:
                raise ConfigError(str(exc), file=str(self.config_path or "<config>"),
                                  path=key) from None

    def processes(self) -> dict[str, Any]:
        """The gateway's processes, for ``GET /processes``: one, here."""
        return {"model": "single", "supervisor": {"pid": os.getpid(),
                                                  "started": self.started_at},
                "workers": []}

    def upgrade(self) -> int:
        """Start the installed hagw to take this one's sockets over; its pid."""
        raise UpgradeUnsupported("a single-process gateway (workers: 0) cannot hand its "
                                 "sockets over; run with workers to upgrade in place")

    # -- reload --------------------------------------------------------------------------

    def reload(self) -> GatewayConfig:
        """Re-read the config file. An invalid one is refused and the old one keeps serving."""
        if self.config_path is None:
            raise ConfigError("this gateway was not started from a config file")
        try:
            new = load_config(self.config_path)
            self.apply(new)
        except ConfigError as exc:
            self.metrics.reloads.labels("failure").inc()
            self.bus.publish(News("config.reload_failed", f"kept the running config: {exc}",
                                  level=logging.ERROR))
            raise
        return new

    def apply(self, new: GatewayConfig) -> None:
        # First, as it may refuse the config (ConfigError) before anything changed. The
        # files are read again on every reload, so `hagw reload` also picks up a rotated
        # client certificate or CA bundle: new connections use it, pooled ones keep theirs.
        client_tls = upstream_tls(new, self.clock, self.config_path)
        self._reload_tls(new)
        old = self.config
        pending = self.restart_needed = restart_keys(old, new)
        #: What the last reload changed (key paths, no values), for the answer and the log.
        self.changed_keys = changed_keys(old, new)
        added, removed = self.cluster.update(new)
        self.config = new
        self.client_tls = client_tls
        self.data.configure(new, client_tls)
        for node in added:
            self.add_pool(node)
            self.health.add(node)
        for node in removed:
            self.tasks(self._retire(node), name=f"retire {node.name}")
        self.health.configure(new, client_tls)
        self.deploys.config = new.deploy
        self.incidents.tracker.config = new.incidents
        self.notifier.configure(new.notifiers)
        self.tasks(self.maintenance.configure(new), name="reconfigure maintenance")
        self.metrics.reloads.labels("success").inc()
        note = f"; restart needed for: {', '.join(pending)}" if pending else ""
        what = ", ".join(self.changed_keys) if self.changed_keys else "nothing"
        self.bus.publish(News("config.reloaded", f"changed: {what}; {len(added)} node(s) "
                              f"added, {len(removed)} removed{note}",
                              level=logging.WARNING if pending else logging.INFO))

    async def _retire(self, node: Node) -> None:
        """A node removed from the config: it takes no new requests; its in-flight ones
        finish, then it goes."""
        self.health.remove(node)
        await node.wait_idle(self.config.shutdown.drain_timeout)
        self.data.close_pool(node)
        self.cluster.forget(node)
        self.uptime.forget(node.name)
