"""The gateway process: wires the parts together and owns start, reload and shutdown.

Resources start and stop through the admin app's ``cleanup_ctx`` (in order:
state store, upstream pools, WebSockets, health monitor, traffic listener; they
stop in reverse). Every background task runs in one TaskGroup owned by the
``hagw-main`` task. Shutdown follows uvicorn's discipline as ordered, timed steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from gateway import slo_store
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.cluster import Cluster
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.events import EventLog
from gateway.listener import GuardedServer
from gateway.metrics import Metrics
from gateway.node import Node, NodeState, Transition
from gateway.outlier import OutlierDetector
from gateway.proxy import Proxy
from gateway.slo import SloTracker
from gateway.status.routes import PublicStatus
from gateway.store import StateStore
from gateway.upstream import ConnectionPool
from gateway.uptime import NodeUptime
from gateway.websocket import WebSocketProxy
from monitor.deploy.runner import DeployOrchestrator
from monitor.health import HealthMonitor
from monitor.incident.watch import IncidentWatcher
from monitor.maintenance.manager import MaintenanceManager
from monitor.notify import Delivery, NotifierHub

log = logging.getLogger("hagw")

#: Keys that only take effect after a restart; a reload that changes them says so.
RESTART_KEYS = ("listen", "admin", "state_dir")


class Gateway:
    def __init__(self, config: GatewayConfig, *, config_path: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.events = EventLog(clock=clock)
        self.metrics = Metrics()
        self.cluster = Cluster(config, clock=clock, events=self.events)
        self.outlier = OutlierDetector(self.cluster, config.outlier_detection)
        self.pools: dict[Node, ConnectionPool] = {}
        self.proxy = Proxy(self)
        self.websockets = WebSocketProxy(self)
        self.store = StateStore(config.state_dir)
        self.monitor = HealthMonitor(self)
        self.notifier = NotifierHub(config.notifiers, self.spawn)
        self.notifier.on_delivery.append(self._delivered)
        self.deploys = DeployOrchestrator(self)
        self.maintenance = MaintenanceManager(self)
        # The public status page answers even during maintenance, so it comes first.
        self.proxy.local_routes.append(PublicStatus(self))
        self.proxy.local_routes.append(self.maintenance.mode)
        self.incidents = IncidentWatcher(self)
        self.slo = SloTracker(config.slo, clock)
        self.uptime = NodeUptime(clock)
        self.proxy.observers.append(self._count_for_slo)
        self.metrics.watch(lambda: iter(self.cluster), lambda: self.cluster.floor, self.uptime,
                           self.slo)
        for node in self.cluster:
            self.uptime.observe(node)
        self.cluster.on_change.append(self.uptime.observe)
        self.cluster.on_transition.append(self._on_transition)
        self.cluster.on_drain_refused.append(
            lambda node: self.metrics.drains_refused.labels(node.name).inc())
        self.outlier.on_eject.append(self._on_eject)
        self.ready = False
        self.started_at = clock.time()
        self.traffic_runner: web.ServerRunner | None = None
        self.admin_runner: web.AppRunner | None = None
        self.traffic_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._tick: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Gateway {self.config.listen} nodes={len(self.cluster)} ready={self.ready}>"

    # -- URLs ---------------------------------------------------------------------------

    @property
    def traffic_url(self) -> str:
        assert self.traffic_address is not None
        return f"http://{self.traffic_address[0]}:{self.traffic_address[1]}"

    @property
    def admin_url(self) -> str:
        assert self.admin_address is not None
        return f"http://{self.admin_address[0]}:{self.admin_address[1]}"

    # -- background tasks ----------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the gateway's TaskGroup; a failure is logged, never silent."""
        assert self._tg is not None, "the gateway is not running"

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", name)

        task = self._tg.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._stop = asyncio.Event()
        self._main = asyncio.create_task(self._supervise(), name="hagw-main")
        await asyncio.shield(self._started)

    async def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._main is not None:
            await self._main

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads the config."""
        await self.start()
        self.install_signal_handlers()
        await self.wait()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload_from_signal)

    async def wait(self) -> None:
        """Until the gateway has stopped."""
        assert self._main is not None
        await self._main

    def request_stop(self, why: str = "stop requested") -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("%s: shutting down", why)
            self._stop.set()

    async def _supervise(self) -> None:
        assert self._started is not None and self._stop is not None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                app = self._admin_app()
                self.admin_runner = web.AppRunner(app, access_log=None, handle_signals=False)
                try:
                    await self.admin_runner.setup()
                    admin = self.config.admin.listen
                    site = web.TCPSite(self.admin_runner, admin.host, admin.port)
                    await site.start()
                except BaseException:
                    # Unwind whatever started (the cleanup contexts entered so far).
                    for task in list(self._tasks):
                        task.cancel()
                    await self.admin_runner.cleanup()
                    raise
                self.admin_address = self.admin_runner.addresses[0][:2]
                self.ready = True
                self.events.record("gateway.started", f"traffic on {self.traffic_url}, "
                                   f"admin on {self.admin_url}")
                self._started.set_result(None)
                await self._stop.wait()
                await self._shutdown()
                for task in list(self._tasks):
                    task.cancel()
        except BaseException as exc:
            if not self._started.done():
                # Start-up failed (say, a port in use): report the cause, not the group.
                while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]
                self._started.set_exception(exc)
                return
            raise
        finally:
            self._tg = None

    async def _shutdown(self) -> None:
        """uvicorn's order: stop being ready, stop accepting, drain in-flight, close."""
        cfg = self.config.shutdown
        began = time.monotonic()

        def step(what: str) -> None:
            log.info("shutdown: %s (t=%.2fs)", what, time.monotonic() - began)

        step(f"reporting not-ready for {cfg.grace:g}s")
        self.ready = False
        self.events.record("gateway.stopping", f"not ready; grace {cfg.grace:g}s")
        if cfg.grace > 0:
            await asyncio.sleep(cfg.grace)
        runner = self.traffic_runner
        if runner is not None:
            step("stop accepting connections")
            for site in list(runner.sites):
                await site.stop()
            step(f"draining in-flight requests (up to {cfg.drain_timeout:g}s)")
            await self.websockets.close_all("gateway shutting down", grace=0)
            await runner.cleanup()  # closes idle keep-alives, waits for handlers, closes
            self.traffic_runner = None
        step("closing")
        if self._tick is not None:
            self._tick.cancel()
        assert self.admin_runner is not None
        await self.admin_runner.cleanup()
        step("stopped")

    def _admin_app(self) -> web.Application:
        from gateway.admin import build_admin_app

        app = build_admin_app(self)
        app.cleanup_ctx.extend([self._store_ctx, self._pools_ctx, self._websockets_ctx,
                                self._monitor_ctx, self._deploys_ctx, self._maintenance_ctx,
                                self._incidents_ctx, self._traffic_ctx])
        return app

    # -- resources, in start order -------------------------------------------------------

    async def _store_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.store.open(slo_store.SCHEMA)
        await self._restore_drains()
        await slo_store.restore(self.store, self.slo)
        self.uptime.load(await self.store.get("uptime", "nodes") or {})
        flusher = self.spawn(self._flush_loop(), name="flush state")
        yield
        flusher.cancel()
        await self._flush()
        await self.store.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.slo.flush_interval)
            await self._flush()

    async def _flush(self) -> None:
        """Persist the SLO history and node uptime (and so survive a restart)."""
        await slo_store.flush(self.store, self.slo)
        await self.store.put("uptime", "nodes", self.uptime.totals())

    async def _pools_ctx(self, app: web.Application) -> AsyncIterator[None]:
        for node in self.cluster:
            self._add_pool(node)
        yield
        for pool in self.pools.values():
            pool.abort_all()

    async def _websockets_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.websockets.start()
        await self.notifier.start()
        yield
        await self.notifier.close()
        await self.websockets.close()

    async def _monitor_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.monitor.start()
        yield
        await self.monitor.stop()

    async def _deploys_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.deploys.start()
        yield
        await self.deploys.stop()

    async def _maintenance_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.maintenance.start()
        yield
        await self.maintenance.stop()

    async def _incidents_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.incidents.start()
        yield
        await self.incidents.stop()

    async def _traffic_ctx(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.config
        limits = cfg.limits
        server = GuardedServer(
            self.proxy.handle, header_timeout=limits.client_header_timeout,
            keepalive_timeout=limits.client_keepalive, max_line_size=limits.max_header,
            max_field_size=limits.max_header, max_headers=limits.max_headers,
            auto_decompress=False, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, access_log=None,
                                  shutdown_timeout=cfg.shutdown.drain_timeout)
        await runner.setup()
        site = web.TCPSite(runner, cfg.listen.host, cfg.listen.port, backlog=4096)
        await site.start()
        self.traffic_runner = runner
        self.traffic_address = runner.addresses[0][:2]
        yield
        if self.traffic_runner is not None:  # not already stopped by the shutdown steps
            await self.traffic_runner.cleanup()
            self.traffic_runner = None

    def _add_pool(self, node: Node) -> None:
        url = node.config.url
        cfg = self.config
        self.pools[node] = ConnectionPool(
            node.name, url.host, url.port, connect_timeout=cfg.timeouts.connect,
            idle_timeout=cfg.timeouts.idle_upstream, max_connections=cfg.overload.max_connections,
            max_pending=cfg.overload.max_pending, clock=self.clock)

    # -- reload --------------------------------------------------------------------------

    def _reload_from_signal(self) -> None:
        # A bad config is already logged and counted; the old config keeps serving.
        with contextlib.suppress(ConfigError):
            self.reload()

    def reload(self) -> GatewayConfig:
        """Re-read the config file. An invalid one is refused and the old one keeps serving."""
        if self.config_path is None:
            raise ConfigError("this gateway was not started from a config file")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.metrics.reloads.labels("failure").inc()
            self.events.record("config.reload_failed", f"kept the running config: {exc}",
                               level=logging.ERROR)
            raise
        self.apply(new)
        return new

    def apply(self, new: GatewayConfig) -> None:
        old = self.config
        pending = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
        added, removed = self.cluster.update(new)
        self.config = new
        self.proxy.configure(new)
        self.outlier.config = new.outlier_detection
        for pool in self.pools.values():
            pool.connect_timeout = new.timeouts.connect
            pool.idle_timeout = new.timeouts.idle_upstream
            pool.max_connections = new.overload.max_connections
            pool.max_pending = new.overload.max_pending
        for node in added:
            self._add_pool(node)
            self.monitor.add(node)
        for node in removed:
            self.spawn(self._retire(node), name=f"retire {node.name}")
        self.monitor.configure(new)
        self.incidents.tracker.config = new.incidents
        self.notifier.configure(new.notifiers)
        self.spawn(self.maintenance.configure(new), name="reconfigure maintenance")
        self.metrics.reloads.labels("success").inc()
        note = f"; restart needed for: {', '.join(pending)}" if pending else ""
        self.events.record("config.reloaded", f"{len(added)} node(s) added, {len(removed)} "
                           f"removed{note}", level=logging.WARNING if pending else logging.INFO)

    async def _retire(self, node: Node) -> None:
        """A node removed from the config: it takes no new requests; its in-flight ones finish."""
        self.monitor.remove(node)
        await node.wait_idle(self.config.shutdown.drain_timeout)
        pool = self.pools.pop(node, None)
        if pool is not None:
            pool.close()
        self.cluster.forget(node)
        self.uptime.forget(node.name)

    # -- operator actions ----------------------------------------------------------------

    async def drain(self, node: Node, reason: str, source: str = "operator") -> None:
        node.drain(reason, source)
        if source == "operator":
            await self.store.put("drains", node.name, {"reason": reason, "at": self.clock.time()})

    async def undrain(self, node: Node, reason: str) -> None:
        node.undrain(reason)
        await self.store.delete("drains", node.name)

    async def _restore_drains(self) -> None:
        for name, record in (await self.store.items("drains")).items():
            node = self.cluster.get(name)
            if node is not None:
                node.drain(f"{record['reason']} (restored after restart)", "operator")

    # -- reactions -----------------------------------------------------------------------

    def _count_for_slo(self, status: int, seconds: float, failure: str | None) -> None:
        self.slo.record(status, failure)

    def _on_transition(self, transition: Transition) -> None:
        self.metrics.transitions.labels(transition.old.value, transition.new.value,
                                        transition.cause).inc()
        if transition.new in (NodeState.DRAINING, NodeState.MAINTENANCE) and self._tg is not None:
            node = self.cluster.get(transition.node)
            if node is not None:
                self.spawn(self.websockets.close_node(node, self.config.shutdown.grace),
                           name=f"close websockets {node.name}")

    def _delivered(self, delivery: Delivery) -> None:
        self.events.record("notify." + delivery.status, f"{delivery.notifier}: "
                           f"{delivery.title} ({delivery.attempts} attempt(s))"
                           + (f": {delivery.error}" if delivery.error else ""),
                           level=logging.INFO if delivery.status == "delivered"
                           else logging.WARNING)

    def _on_eject(self, node: Node) -> None:
        self.metrics.ejections.labels(node.name).inc()
        self._arm_tick()

    def _arm_tick(self) -> None:
        """Wake when the next ejection ends; no polling."""
        wake = self.cluster.tick()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if wake is not None:
            delay = max(0.0, wake - self.clock.monotonic())
            self._tick = asyncio.get_running_loop().call_later(delay, self._arm_tick)
