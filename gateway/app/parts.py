"""The parts of one gateway process, wired: every part is built with the ports it takes
(never the gateway itself), and a reload rewires them. ``gateway.app.runtime`` runs them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.accounting import Accounting
from gateway.admission import Admission
from gateway.app import reactions
from gateway.app.drains import OperatorDrains
from gateway.app.metrics import ControlMetrics
from gateway.app.tasks import Tasks
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.cluster import Cluster
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.events import EventBus, EventLog, News
from gateway.listener import Responder, TrafficHandler, WebSocketTunnels
from gateway.maintenance import MaintenanceMode
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.queue.store import SqliteQueue
from gateway.router import Forwarder, Router
from gateway.store import StateStore
from gateway.upstream import ConnectionPool
from monitor.deploy.runner import DeployRunner
from monitor.health import HealthChecker
from monitor.incident.watch import IncidentWatcher
from monitor.maintenance.manager import MaintenanceManager
from monitor.maintenance.replay import Replayer
from monitor.notify import NotifierHub
from monitor.slo import SloTracker
from monitor.uptime import NodeUptime

log = logging.getLogger("hagw")

#: Keys that only take effect after a restart; a reload that changes them says so.
RESTART_KEYS = ("listen", "admin", "state_dir")


class Parts:
    """The parts of one gateway, wired: each built with the ports it takes."""

    def __init__(self, config: GatewayConfig, *, config_path: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        # -- the kernel: events, tasks, metrics, the cluster --------------------------------
        self.bus = EventBus()
        self.events = EventLog(self.bus, clock=clock)
        self.tasks = Tasks()
        self.registry = CollectorRegistry(auto_describe=True)
        self.accounting = Accounting(self.registry)
        self.metrics = ControlMetrics(self.registry)
        self.cluster = Cluster(config, clock=clock, bus=self.bus)
        self.outlier = OutlierDetector(self.cluster, config.outlier_detection)
        self.store = StateStore(config.state_dir)
        self.slo = SloTracker(config.slo, clock)
        self.uptime = NodeUptime(clock)
        self.drains = OperatorDrains(self.cluster, self.store, clock)
        # -- the control plane's health checks feed the router's passive observer -----------
        self.health = HealthChecker(self.cluster, config, clock=clock, spawn=self.tasks,
                                    events=self.bus, registry=self.registry)
        passive = self.health.detector
        # -- the data plane ---------------------------------------------------------------
        self.pools: dict[Node, ConnectionPool] = {}
        self.router = Router(self.cluster, self.pools, self.outlier, passive, self.accounting,
                             config)
        self.websockets = WebSocketTunnels(self.cluster)
        self.traffic = TrafficHandler(
            self.router, Admission(config.rate_limit, config.overload, clock),
            Responder(self.pools, self.outlier, passive, config.timeouts.stream_idle),
            self.websockets, self.accounting, self.slo, config)
        # -- maintenance: the queue and mode are the data plane's, the rest the monitor's ----
        self.notifier = NotifierHub(config.notifiers, self.tasks, self.bus.publish)
        self.queue = SqliteQueue(config.state_dir, config.maintenance.queue_capacity)
        replayer = Replayer(self.queue, Forwarder(self.router), self.cluster,
                            config.maintenance, spawn=self.tasks, events=self.bus)
        self.mode = mode = MaintenanceMode(config.maintenance, self.queue, replayer,
                                           self.bus.publish,
                                           body_timeout=config.limits.client_body_timeout)
        self.maintenance = MaintenanceManager(
            config, cluster=self.cluster, store=self.store, queue=self.queue,
            replayer=replayer, mode=mode, advisory=self.traffic, notifier=self.notifier,
            events=self.bus, spawn=self.tasks, clock=clock, registry=self.registry)
        self.deploys = DeployRunner(
            config.deploy, cluster=self.cluster, budget=self.slo, store=self.store,
            events=self.bus, spawn=self.tasks, clock=clock, registry=self.registry)
        self.incidents = IncidentWatcher(
            config.incidents, cluster=self.cluster, budget=self.slo, maintenance=mode,
            store=self.store, events=self.bus, notifier=self.notifier, spawn=self.tasks,
            clock=clock, registry=self.registry)
        self.traffic.local_routes.append(mode)
        # -- the root's own reactions -------------------------------------------------------
        self.metrics.watch(lambda: iter(self.cluster), lambda: self.cluster.floor,
                           self.uptime, self.slo)
        for node in self.cluster:
            self.uptime.observe(node)
        self.ejections = reactions.EjectionTimer(self.cluster)
        reactions.wire(self.bus, metrics=self.metrics, uptime=self.uptime,
                       websockets=self.websockets, timer=self.ejections, tasks=self.tasks,
                       grace=lambda: self.config.shutdown.grace)
        self.ready = False
        self.traffic_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"<Gateway {self.config.listen} nodes={len(self.cluster)} ready={self.ready}>"

    @property
    def traffic_url(self) -> str:
        assert self.traffic_address is not None
        return f"http://{self.traffic_address[0]}:{self.traffic_address[1]}"

    @property
    def admin_url(self) -> str:
        assert self.admin_address is not None
        return f"http://{self.admin_address[0]}:{self.admin_address[1]}"

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        return self.tasks(coro, name)

    def add_pool(self, node: Node) -> None:
        url = node.config.url
        cfg = self.config
        self.pools[node] = ConnectionPool(
            node.name, url.host, url.port, connect_timeout=cfg.timeouts.connect,
            idle_timeout=cfg.timeouts.idle_upstream, max_connections=cfg.overload.max_connections,
            max_pending=cfg.overload.max_pending, clock=self.clock)

    # -- reload --------------------------------------------------------------------------

    def reload(self) -> GatewayConfig:
        """Re-read the config file. An invalid one is refused and the old one keeps serving."""
        if self.config_path is None:
            raise ConfigError("this gateway was not started from a config file")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.metrics.reloads.labels("failure").inc()
            self.bus.publish(News("config.reload_failed", f"kept the running config: {exc}",
                                  level=logging.ERROR))
            raise
        self.apply(new)
        return new

    def apply(self, new: GatewayConfig) -> None:
        old = self.config
        pending = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
        added, removed = self.cluster.update(new)
        self.config = new
        self.router.configure(new)
        self.traffic.configure(new)
        self.outlier.config = new.outlier_detection
        for pool in self.pools.values():
            pool.connect_timeout = new.timeouts.connect
            pool.idle_timeout = new.timeouts.idle_upstream
            pool.max_connections = new.overload.max_connections
            pool.max_pending = new.overload.max_pending
        for node in added:
            self.add_pool(node)
            self.health.add(node)
        for node in removed:
            self.tasks(self._retire(node), name=f"retire {node.name}")
        self.health.configure(new)
        self.deploys.config = new.deploy
        self.incidents.tracker.config = new.incidents
        self.notifier.configure(new.notifiers)
        self.mode.configure(new.maintenance, new.limits.client_body_timeout)
        self.tasks(self.maintenance.configure(new), name="reconfigure maintenance")
        self.metrics.reloads.labels("success").inc()
        note = f"; restart needed for: {', '.join(pending)}" if pending else ""
        self.bus.publish(News("config.reloaded", f"{len(added)} node(s) added, {len(removed)} "
                              f"removed{note}",
                              level=logging.WARNING if pending else logging.INFO))

    async def _retire(self, node: Node) -> None:
        """A node removed from the config: it takes no new requests; its in-flight ones
        finish, then it goes."""
        self.health.remove(node)
        await node.wait_idle(self.config.shutdown.drain_timeout)
        pool = self.pools.pop(node, None)
        if pool is not None:
            pool.close()
        self.cluster.forget(node)
        self.uptime.forget(node.name)
