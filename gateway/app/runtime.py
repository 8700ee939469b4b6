"""Running the gateway: start, signals and shutdown of the wired parts (gateway.app.parts).

Resources start and stop through the admin app's ``cleanup_ctx`` (in order: state
store, the peers' link, records and lease (with ``peers``), upstream pools, WebSockets
and notifiers, health checks, deploys, maintenance, incidents, certificate watch, span
export, traffic listener; they stop in reverse, so the last spans are sent once the
traffic has drained). Every background task runs in one
TaskGroup owned by the ``hagw-main`` task. Shutdown follows uvicorn's discipline as
ordered, timed steps (gateway.app.shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.app.admin import build_admin_app
from gateway.app.fleet_budget import FleetBudget
from gateway.app.parts import TLS_WATCH_EVERY, Parts, log
from gateway.app.shutdown import shutdown
from gateway.app.status import routes as status_routes
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import ConfigError, GatewayConfig
from gateway.errors import Answer
from gateway.events import News
from gateway.listener import HttpsRedirect, PublicPage, ServerState, TrafficServer
from monitor import slo_store


class Gateway(Parts):
    def __init__(self, config: GatewayConfig, *, config_path: str | None = None,
                 clock: Clock = SYSTEM_CLOCK,
                 data_registry: CollectorRegistry | None = None) -> None:
        super().__init__(config, config_path=config_path, clock=clock,
                         data_registry=data_registry)
        # The public status page answers even during maintenance, so it comes first.
        async def page(kind: str) -> Answer:
            return status_routes.public_page(self, kind)

        self.traffic.local_routes.insert(0, PublicPage(
            lambda: self.config.status.public, lambda: self.config.status.path, page))
        self.traffic_server: TrafficServer | None = None
        #: ``tls.http_redirect``: the plain listener answering 308 to https.
        self.redirect_server: TrafficServer | None = None
        self.redirect_address: tuple[str, int] | None = None
        #: Its socket, when opened apart (a supervisor hands it over on an upgrade).
        self.redirect_socket: socket.socket | None = None
        self.admin_runner: web.AppRunner | None = None
        self._main: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None

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
                self.tasks.bind(tg)
                app = self._admin_app()
                self.admin_runner = web.AppRunner(app, access_log=None, handle_signals=False)
                try:
                    await self.admin_runner.setup()
                    await self._admin_site(self.admin_runner).start()
                except BaseException:
                    # Unwind whatever started (the cleanup contexts entered so far).
                    self.tasks.cancel_all()
                    await self.admin_runner.cleanup()
                    raise
                self.admin_address = self.admin_runner.addresses[0][:2]
                self.ready = True
                admin = self.config.admin
                if admin.insecure and admin.tls is None and not admin.listen.is_loopback:
                    self.bus.publish(News(
                        "gateway.admin_insecure", f"the admin API listens on {admin.listen} "
                        "without TLS (admin.insecure: true): its bearer token crosses the "
                        "network in clear text", level=logging.WARNING))
                self.bus.publish(News("gateway.started", f"traffic on {self.traffic_url}, "
                                      f"admin on {self.admin_url}"))
                self._started.set_result(None)
                await self._stop.wait()
                await shutdown(self)
                self.tasks.cancel_all()
        except BaseException as exc:
            if not self._started.done():
                # Start-up failed (say, a port in use): report the cause, not the group.
                while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]
                self._started.set_exception(exc)
                return
            raise
        finally:
            self.tasks.bind(None)

    def _admin_site(self, runner: web.AppRunner) -> web.BaseSite:
        admin = self.config.admin.listen
        return web.TCPSite(runner, admin.host, admin.port, ssl_context=self._admin_ssl())

    def _admin_ssl(self) -> ssl.SSLContext | None:
        return None if self.admin_tls is None else self.admin_tls.context

    def _admin_app(self) -> web.Application:
        app = build_admin_app(self)
        app.cleanup_ctx.extend([self._store_ctx, self._peers_ctx, self._pools_ctx,
                                self._websockets_ctx, self._health_ctx, self._deploys_ctx,
                                self._maintenance_ctx, self._incidents_ctx, self._tls_ctx,
                                self._spans_ctx, self._traffic_ctx, self._redirect_ctx])
        return app

    # -- resources, in start order -------------------------------------------------------

    async def _store_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.store.open(slo_store.SCHEMA)
        await self.drains.restore()
        await slo_store.restore(self.store, self.slo)
        self.uptime.load(await self.store.get("uptime", "nodes") or {})
        flusher = self.tasks(self._flush_loop(), name="flush state")
        yield
        flusher.cancel()
        if not self.state_released:
            await self._flush()
            await self.store.close()

    async def _peers_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The fleet's shared state (``peers``): after the local store, whose last known
        state it replaces once Redis answers; stopped after the deploys, windows and
        incidents, whose leader-only writes it fences."""
        fleet = self.fleet
        budget = self.budget if isinstance(self.budget, FleetBudget) else None
        if fleet is not None:
            await fleet.start()
            if self.floor is not None:
                self.floor.start()
            if budget is not None:
                budget.start()
            if self.fleet_rates is not None:
                self.fleet_rates.start()
        yield
        if fleet is not None:
            if self.fleet_rates is not None:
                await self.fleet_rates.stop()
            if budget is not None:
                await budget.close()
            if self.floor is not None:
                await self.floor.stop()
            await fleet.stop()

    async def release_state(self) -> None:
        """Before a new supervisor takes over (an upgrade): stop what writes state, write
        everything down and let go of the state file; the shutdown steps then leave it."""
        if self.state_released:
            return
        self.state_released = True
        await self.deploys.stop(hand_over=True)
        await self.incidents.stop()
        await self.maintenance.stop()
        await self._flush()
        await self.store.close()

    async def reclaim_state(self) -> None:
        """The new supervisor did not start after all: take the state back and go on
        (the deploy that was handed over resumes here)."""
        if not self.state_released:
            return
        await self.store.open(slo_store.SCHEMA)
        self.state_released = False
        await self.deploys.start(load=self.fleet is None)
        await self.maintenance.start()
        await self.incidents.start(watch=self.fleet is None)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.slo.flush_interval)
            if not self.state_released:
                await self._flush()

    async def _flush(self) -> None:
        """Persist the SLO history and node uptime (and so survive a restart)."""
        await slo_store.flush(self.store, self.slo)
        await self.store.put("uptime", "nodes", self.uptime.totals())

    async def _pools_ctx(self, app: web.Application) -> AsyncIterator[None]:
        for node in self.cluster:
            self.add_pool(node)
        yield
        for pool in self.pools.values():
            pool.abort_all()

    async def _websockets_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.websockets.start()
        await self.notifier.start()
        yield
        await self.notifier.close()
        await self.websockets.close()

    async def _health_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.health.start()
        yield
        await self.health.stop()

    async def _deploys_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # In a fleet only the leader picks the deploy records up (gateway.app.leader).
        await self.deploys.start(load=self.fleet is None)
        yield
        if not self.state_released:
            await self.deploys.stop()

    async def _maintenance_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.queue.open()
        await self.maintenance.start()
        yield
        if not self.state_released:
            await self.maintenance.stop()
        await self.queue.close()

    async def _incidents_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # In a fleet only the leader watches for incidents (and runs deploys): from here on
        # the leader's duties follow the lease.
        await self.incidents.start(watch=self.fleet is None)
        if self.leader_duties is not None and self.fleet is not None:
            self.leader_duties.activate(self.fleet.election.leading)
        yield
        if self.leader_duties is not None:
            self.leader_duties.deactivate()
        if not self.state_released:
            await self.incidents.stop()

    async def _tls_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Watch the listeners' certificate files: a change is loaded within
        ``TLS_WATCH_EVERY`` (a stat of each file, no reading unless one changed)."""
        watch = (self.tasks(self._watch_certificates(), name="watch certificates")
                 if self.tls_servers else None)
        yield
        if watch is not None:
            watch.cancel()

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(TLS_WATCH_EVERY)
            self.refresh_certificates()

    async def _spans_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Spans over OTLP (``tracing.otlp_endpoint``) from the process that serves the
        traffic; flushed after it drained, for at most ``tracing.export_timeout``."""
        self.data.start_spans()
        yield
        await self.data.stop_spans()

    async def _traffic_ctx(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.config
        state = ServerState(self.traffic, cfg.limits,
                            scheme="https" if self.traffic_tls is not None else "http",
                            spawn=self.tasks.request)
        server = TrafficServer(state, tls=self.traffic_tls)
        await server.start(cfg.listen.host, cfg.listen.port)
        self.traffic_server = server
        self.traffic_address = server.addresses[0]
        yield
        await self.stop_traffic()  # unless the shutdown steps did already

    async def _redirect_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """``tls.http_redirect``: a plain listener answering 308 to the https URL (in a
        supervisor, served by the supervisor: it proxies nothing)."""
        tls = self.config.tls
        if tls is None or tls.http_redirect is None or self.traffic_address is None:
            yield
            return
        state = ServerState(HttpsRedirect(self.traffic_address[1]), self.config.limits,
                            spawn=lambda coro: self.tasks(coro, name="redirect"))
        server = self.redirect_server = TrafficServer(state)
        await server.start(tls.http_redirect.host, tls.http_redirect.port,
                           sock=self._redirect_socket())
        self.redirect_address = server.addresses[0]
        yield
        self.redirect_server = None
        server.stop_accepting()
        await server.drain(0.0)
        if self.redirect_socket is not None:
            self.redirect_socket.close()
            self.redirect_socket = None

    def _redirect_socket(self) -> socket.socket | None:
        """The redirect listener's socket if it is not the server's own."""
        return self.redirect_socket

    async def stop_traffic(self) -> None:
        server = self.traffic_server
        if server is None:
            return
        self.traffic_server = None
        server.stop_accepting()
        await self.websockets.close_all("gateway shutting down", grace=0)
        await server.drain(self.config.shutdown.drain_timeout)  # idle keep-alives close now

    # -- reload on SIGHUP ----------------------------------------------------------------

    def _reload_from_signal(self) -> None:
        # A bad config is already logged and counted; the old config keeps serving.
        with contextlib.suppress(ConfigError):
            self.reload()
            self.tasks(self.reload_workers(), name="replace workers")
