"""The supervisor: the control plane of a multi-process gateway (health checks and the
warning detector's decisions, deploys, maintenance, incidents, SLO accounting, the admin
API and the status page) and the keeper of its worker processes.

It opens the traffic listener's socket once and every worker accepts on it, so a dead
worker loses no queued connection (the kernel keeps the backlog while another worker or
its replacement accepts). State flows both ways: the supervisor pushes versioned
snapshots (node conditions, maintenance mode, the advisory header) and each worker
applies one in a single synchronous step and acknowledges it; workers report their
outcomes in batches every 100 ms (and at once before a scrape). A drain is answered only
once every worker acknowledged the snapshot that carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.app import handoff
from gateway.app.handoff import ControlSocket
from gateway.app.ipc import Channel, ChannelClosed
from gateway.app.parts import UpgradeUnsupported
from gateway.app.processes import WorkerProcesses
from gateway.app.report import dump_metrics
from gateway.app.runtime import Gateway
from gateway.app.status import routes as status_routes
from gateway.app.tally import ClientLimits, WorkerMetrics, apply_report
from gateway.app.worker import entry_to_json, page_to_json
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig
from gateway.config.types import worker_count
from gateway.events import News
from gateway.listener import AdvisoryChanged, open_socket
from gateway.maintenance import ModeChanged
from gateway.node import NodeChanged
from gateway.queue.store import Entry

log = logging.getLogger("hagw.supervisor")

#: How long a new worker may take to serve, and a drain may wait for every worker's ack.
READY_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 2.0
#: A worker that exits is started again after this pause (doubling to RESPAWN_MAX while it
#: keeps dying at once).
RESPAWN_PAUSE = 0.2
RESPAWN_MAX = 5.0


def listening_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """The traffic listener's socket, opened once, inherited by every worker."""
    sock = open_socket(host, port, backlog)
    sock.set_inheritable(True)
    return sock


@dataclass(eq=False)
class WorkerHandle:
    id: str
    proc: asyncio.subprocess.Process
    channel: Channel
    ready: asyncio.Future[None]
    started: float = 0.0
    acked: int = -1
    in_flight: dict[str, int] = field(default_factory=dict)
    stopping: bool = False
    #: Flush ids this worker has answered.
    flushed: int = -1

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __repr__(self) -> str:
        return f"<Worker {self.id} pid={self.pid} acked={self.acked}>"


class WorkerHub:
    """Starts, watches, replaces and stops the workers, and carries state both ways."""

    def __init__(self, gw: Supervisor, sock: socket.socket, count: int) -> None:
        self.gw = gw
        self.sock = sock
        self.count = count
        self.workers: dict[str, WorkerHandle] = {}
        self.metrics = WorkerMetrics()
        gw.registry.register(self.metrics)
        self.clients = ClientLimits()
        self.serving = Gauge("hagw_workers_serving", "Worker processes serving traffic",
                             registry=gw.registry)
        self.serving.set_function(lambda: sum(1 for h in self.workers.values()
                                              if h.ready.done() and not h.stopping))
        self.crashes = Counter("hagw_worker_crashes", "Worker processes that exited "
                               "unasked (each is replaced)", registry=gw.registry)
        gw.registry.register(WorkerProcesses(
            lambda: {h.id: h.pid for h in self.workers.values()}))
        self.version = 0
        #: Bumped when the supervisor loaded changed certificate files: each worker loads
        #: them too when a snapshot brings a new generation.
        self.tls_generation = 0
        self._pending_push = False
        self._serial = 0
        self._flush_id = 0
        self._flushed = asyncio.Event()
        self._acked = asyncio.Event()
        self._closing = False
        self._restarts: dict[str, float] = {}
        for kind in (NodeChanged, ModeChanged, AdvisoryChanged):
            gw.bus.subscribe(kind, lambda _event: self.changed())

    def __repr__(self) -> str:
        return f"<WorkerHub {len(self.workers)}/{self.count} workers snapshot={self.version}>"

    # -- workers ----------------------------------------------------------------------------

    async def start(self) -> None:
        handles = [await self._spawn() for _ in range(self.count)]
        async with asyncio.timeout(READY_TIMEOUT):
            await asyncio.gather(*(h.ready for h in handles))

    async def _spawn(self) -> WorkerHandle:
        self._serial += 1
        worker_id = f"w{self._serial}"
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child.set_inheritable(True)
        listen_fd, child_fd = self.sock.fileno(), child.fileno()
        if self.gw.config_path is None:
            raise RuntimeError("workers read the config file: start the supervisor from one")
        # A fleet's workers queue on Redis themselves (and so import redis); others don't.
        alone, in_fleet = handoff.WORKER_MODULES
        module = in_fleet if self.gw.config.peers is not None else alone
        argv = [sys.executable, "-m", module, "--id", worker_id,
                "--listen-fd", str(listen_fd), "--channel-fd", str(child_fd),
                "-c", self.gw.config_path]
        proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(listen_fd, child_fd))
        child.close()
        # Where a supervisor started after us finds the workers to adopt if we die.
        self._pidfile(worker_id).write_text(str(proc.pid))
        channel = await Channel.over(parent)
        handle = WorkerHandle(worker_id, proc, channel,
                              asyncio.get_running_loop().create_future(),
                              started=self.gw.clock.time())
        self.workers[worker_id] = handle
        self.gw.tasks(self._listen(handle), name=f"worker {worker_id}")
        self._send(handle, self.snapshot())
        return handle

    async def _listen(self, handle: WorkerHandle) -> None:
        gw = self.gw
        while (message := await handle.channel.recv()) is not None:
            kind = message.get("type")
            if kind == "report":
                apply_report(message, gw.budget, gw.health.detector)
                self.metrics.update(handle.id, message.get("metrics", []))
                handle.in_flight = message.get("in_flight", {})
                self._set_in_flight()
                for other, note in self.clients.reported(handle.id, message, self.workers):
                    self._send(self.workers[other], note)
                if gw.fleet_rates is not None:
                    gw.fleet_rates.add(message.get("spent") or {})
                if "flush" in message:
                    handle.flushed = int(message["flush"])
                    self._flushed.set()
            elif kind == "ack":
                handle.acked = int(message["version"])
                self._acked.set()
            elif kind == "ready":
                if not handle.ready.done():
                    handle.ready.set_result(None)
                gw.bus.publish(News("worker.ready", f"worker {handle.id} (pid {handle.pid}) "
                                    "serving"))
            elif kind == "ejected":
                self._ejected(message)
            elif kind == "queued":
                gw.queue.enqueued_elsewhere()
                gw.maintenance.queued(Entry("", float(message["created"]), "", "", [], b"",
                                            "", seq=int(message["seq"])))
            elif kind == "replay":
                gw.mode.replay.ensure_running()
            elif kind == "page":
                kind = str(message["kind"])
                self._send(handle, page_to_json(kind, status_routes.public_page(gw, kind)))
            elif kind == "watch":
                gw.tasks(self._watch(handle, message["ticket"], float(message["timeout"])),
                         name="watch ticket")
        code = await handle.proc.wait()
        self._exited(handle, code)

    def _pidfile(self, worker_id: str) -> Path:
        return handoff.workers_dir(self.gw.config.state_dir) / f"{worker_id}-{os.getpid()}.pid"

    def _exited(self, handle: WorkerHandle, code: int) -> None:
        self.workers.pop(handle.id, None)
        self._pidfile(handle.id).unlink(missing_ok=True)
        self.metrics.retire(handle.id)
        self.clients.forget(handle.id)
        for other in self.workers.values():  # its clients' requests are no longer in flight
            self._send(other, {"type": "clients", "spent": {},
                               "busy": self.clients.busy_elsewhere(other.id)})
        handle.in_flight = {}
        self._set_in_flight()
        if not handle.ready.done():
            handle.ready.set_exception(RuntimeError(f"worker {handle.id} exited with {code} "
                                                    "before serving"))
        if handle.stopping or self._closing:
            return
        self.crashes.inc()
        self.gw.bus.publish(News("worker.died", f"worker {handle.id} (pid {handle.pid}) "
                                 f"exited with {code}; starting another",
                                 level=logging.ERROR))
        pause = self._restarts.get("pause", RESPAWN_PAUSE)
        self._restarts["pause"] = min(RESPAWN_MAX, pause * 2)
        self.gw.tasks(self._respawn(pause), name="respawn worker")

    async def _respawn(self, pause: float) -> None:
        await asyncio.sleep(pause)
        if self._closing:
            return
        handle = await self._spawn()
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await handle.ready
            self._restarts["pause"] = RESPAWN_PAUSE
        except (TimeoutError, RuntimeError) as exc:
            log.error("a replacement worker did not start: %s", exc)

    async def replace_all(self) -> None:
        """One at a time: the new worker serves before the old one drains (a reload)."""
        for old in list(self.workers.values()):
            new = await self._spawn()
            async with asyncio.timeout(READY_TIMEOUT):
                await new.ready
            await self._stop_worker(old, replaced=True)

    async def _stop_worker(self, handle: WorkerHandle, *, replaced: bool) -> None:
        """Stop one worker: it stops accepting and drains. ``replaced``: others accept new
        connections meanwhile, so its idle keep-alive connections get ``idle_grace``."""
        handle.stopping = True
        grace = self.gw.config.shutdown.idle_grace if replaced else 0.0
        self._send(handle, {"type": "stop", "idle_grace": grace})
        cfg = self.gw.config
        # Its drain, then the flush of its last spans (if it exports any).
        timeout = cfg.shutdown.drain_timeout + 5 + (
            cfg.tracing.export_timeout if cfg.tracing.otlp_endpoint is not None else 0.0)
        try:
            async with asyncio.timeout(timeout):
                await handle.proc.wait()
        except TimeoutError:
            handle.proc.kill()
            await handle.proc.wait()

    async def stop(self, *, replaced: bool = False) -> None:
        """Stop every worker (``replaced``: another supervisor's workers serve now)."""
        self._closing = True
        await asyncio.gather(*(self._stop_worker(h, replaced=replaced)
                               for h in list(self.workers.values())))

    def pids(self) -> list[int]:
        return [h.pid for h in self.workers.values()]

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": h.id, "pid": h.pid, "serving": h.ready.done() and not h.stopping,
                 "stopping": h.stopping, "snapshot": h.acked, "started": h.started,
                 "in_flight": sum(h.in_flight.values()),
                 "requests": int(self.metrics.count(h.id, "hagw_requests"))}
                for h in self.workers.values()]

    # -- state down -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        gw = self.gw
        mode = gw.mode
        return {"type": "snapshot", "version": self.version,
                "nodes": {n.name: n.conditions() for n in gw.cluster},
                "phase": mode.phase.value, "window": mode.window,
                "advisory": gw.traffic.advisory, "tls": self.tls_generation}

    def certificates_changed(self) -> None:
        self.tls_generation += 1
        self.changed()

    def changed(self) -> None:
        """Something a worker routes by changed: push once, after this round of changes."""
        if not self._pending_push:
            self._pending_push = True
            asyncio.get_running_loop().call_soon(self.push)

    def push(self) -> None:
        self._pending_push = False
        self.version += 1
        snapshot = self.snapshot()
        for handle in list(self.workers.values()):
            self._send(handle, snapshot)

    def charge_all(self, spent: dict[str, int]) -> None:
        """Other instances' clients' spending: to every worker's buckets."""
        for handle in self.workers.values():
            self._send(handle, {"type": "clients", "spent": spent})

    def _send(self, handle: WorkerHandle, message: dict[str, Any]) -> None:
        with contextlib.suppress(ChannelClosed):
            handle.channel.send(message)

    async def converge(self, timeout: float = CONVERGE_TIMEOUT) -> bool:
        """Until every serving worker applied the current state (False if one did not in
        ``timeout``)."""
        self.push()
        version = self.version
        deadline = time.monotonic() + timeout
        while any(h.acked < version and h.ready.done() and not h.proc.returncode
                  for h in self.workers.values()):
            self._acked.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._acked.wait()
            except TimeoutError:
                return False
        return True

    async def flush(self, timeout: float = 1.0) -> None:
        """Every worker reports now (before a scrape, so the counts are the client's)."""
        self._flush_id += 1
        flush_id = self._flush_id
        for handle in list(self.workers.values()):
            self._send(handle, {"type": "flush", "id": flush_id})
        deadline = time.monotonic() + timeout
        while any(h.flushed < flush_id and h.ready.done() for h in self.workers.values()):
            self._flushed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._flushed.wait()
            except TimeoutError:
                return

    # -- state up ---------------------------------------------------------------------------

    def _set_in_flight(self) -> None:
        totals: dict[str, int] = {}
        for handle in self.workers.values():
            for name, count in handle.in_flight.items():
                totals[name] = totals.get(name, 0) + int(count)
        for node in self.gw.cluster:
            node.set_remote_in_flight(totals.get(node.name, 0))

    def _ejected(self, message: dict[str, Any]) -> None:
        """A worker's outlier or stall detection ejected a node: the fleet-wide decision,
        within the cap, is the supervisor's; the next snapshot tells every worker."""
        node = self.gw.cluster.get(message["node"])
        if node is None or node.ejected_until is not None:
            return
        if self.gw.outlier.eject_reported(node, float(message["until"]), message["reason"]):
            return
        self.changed()  # refused: the snapshot undoes the worker's own ejection

    async def _watch(self, handle: WorkerHandle, ticket: str, timeout: float) -> None:
        entry = await self.gw.mode.replay.wait_result(ticket, timeout)
        self._send(handle, {"type": "replayed", "ticket": ticket,
                            "entry": None if entry is None else entry_to_json(entry)})


class Supervisor(Gateway):
    """The gateway as a supervisor and ``workers`` data-plane processes."""

    def __init__(self, config: GatewayConfig, *, config_path: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(config, config_path=config_path, clock=clock,
                         data_registry=CollectorRegistry(auto_describe=True))
        self.hub: WorkerHub | None = None
        self.listen_socket: socket.socket | None = None
        self.admin_socket: socket.socket | None = None
        self.control: ControlSocket | None = None
        #: The previous supervisor, waiting for our workers to serve (an upgrade).
        self._predecessor: socket.socket | None = None
        #: Orphaned workers of a supervisor that died, waiting to be told to stop.
        self._orphans: list[asyncio.Future[None]] = []
        self._adopted: asyncio.Queue[list[int]] = asyncio.Queue()
        self._handed_over = asyncio.Event()
        self._successor: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self.config.listen} {self.hub!r}>"

    # -- start: fresh, as an upgrade, or adopting orphans -----------------------------------

    async def start(self) -> None:
        await self._inherit_sockets()
        try:
            await super().start()
        except BaseException:
            if self._predecessor is not None:  # let the old supervisor go on serving
                self._predecessor.close()
            raise
        if self._predecessor is not None:
            # Our workers serve: the old supervisor's may drain now.
            with contextlib.suppress(OSError):
                handoff.send(self._predecessor, {"type": "ready", "pid": os.getpid()})
            self._predecessor.close()
            self._predecessor = None
        for orphan in self._orphans:
            if not orphan.done():
                orphan.set_result(None)
        sd_notify(f"READY=1\nMAINPID={os.getpid()}")
        handoff.run_dir(self.config.state_dir).joinpath("supervisor.pid").write_text(
            str(os.getpid()))

    async def _inherit_sockets(self) -> None:
        state_dir = self.config.state_dir
        path = handoff.control_path(state_dir)
        conn = await asyncio.to_thread(handoff.connect, path)
        if conn is not None:
            # A supervisor is running: this is an upgrade. Its sockets, its state on disk.
            handoff.send(conn, {"type": "takeover", "pid": os.getpid()})
            conn.settimeout(60)
            message, fds = await asyncio.to_thread(handoff.receive, conn)
            socks = handoff.sockets_from(fds)
            if message.get("type") != "sockets" or len(socks) < 2:
                conn.close()
                raise RuntimeError(f"the running supervisor refused the takeover: {message}")
            self.listen_socket, self.admin_socket = socks[0], socks[1]
            if len(socks) > 2:
                self.redirect_socket = socks[2]
            self._predecessor = conn
            log.info("took over the listening sockets of pid %s", message.get("pid"))
        self.control = ControlSocket(path, self._on_control)
        await self.control.start()
        if self.listen_socket is not None:
            return
        orphans = handoff.live_pids(handoff.workers_dir(state_dir))
        if orphans:
            # The last supervisor died; its workers kept serving. Their socket is ours now.
            handoff.signal_orphans(orphans)
            try:
                async with asyncio.timeout(2.0):
                    fds = await self._adopted.get()
                self.listen_socket = handoff.sockets_from(fds)[0]
                while not self._adopted.empty():  # the same socket, from the other orphans
                    for fd in self._adopted.get_nowait():
                        os.close(fd)
                log.info("adopted the traffic socket of orphaned workers %s", sorted(orphans))
            except TimeoutError:
                log.warning("orphaned workers %s did not hand over their socket", orphans)

    async def _on_control(self, conn: socket.socket, message: dict[str, Any],
                          fds: list[int]) -> None:
        kind = message.get("type")
        if kind == "orphan":
            if self.listen_socket is not None:  # another orphan handed the socket over
                for fd in fds:
                    os.close(fd)
            else:
                await self._adopted.put(fds)
            done = asyncio.get_running_loop().create_future()
            self._orphans.append(done)
            await done  # until our own workers serve
            with contextlib.suppress(OSError):
                handoff.send(conn, {"type": "stop"})
        elif kind == "takeover":
            await self._hand_over(conn, int(message.get("pid", 0)))
        else:
            for fd in fds:
                os.close(fd)

    async def _hand_over(self, conn: socket.socket, pid: int) -> None:
        """A new supervisor (an upgrade) asked for our sockets: hand them over with our
        state written down; our workers serve until its own do, then drain."""
        if self.listen_socket is None or self.admin_socket is None:
            handoff.send(conn, {"type": "refused", "reason": "not serving yet"})
            return
        self.bus.publish(News("gateway.upgrade", f"handing the listening sockets to pid {pid}"))
        await self.release_state()
        try:  # the new one may die at any point from here on
            fds = [self.listen_socket.fileno(), self.admin_socket.fileno()]
            if self.redirect_socket is not None:
                fds.append(self.redirect_socket.fileno())
            handoff.send(conn, {"type": "sockets", "pid": os.getpid()}, fds)
            conn.settimeout(READY_TIMEOUT + 30)
            message, _ = await asyncio.to_thread(handoff.receive, conn)
        except (OSError, ConnectionError, ValueError):
            message = {}
        if message.get("type") != "ready":
            # Our workers never stopped serving: take the state back and go on.
            await self.reclaim_state()
            self.bus.publish(News("gateway.upgrade_failed", f"the new supervisor (pid {pid}) "
                                  "did not start; this one goes on", level=logging.ERROR))
            return
        self._handed_over.set()
        self.request_stop(f"handed over to pid {pid}")

    def _admin_site(self, runner: web.AppRunner) -> web.BaseSite:
        if self.admin_socket is None:
            admin = self.config.admin.listen
            self.admin_socket = listening_socket(admin.host, admin.port, backlog=128)
        return web.SockSite(runner, self.admin_socket, ssl_context=self._admin_ssl())

    def _redirect_socket(self) -> socket.socket | None:
        """Opened here (not by aiohttp or asyncio), to be handed over on an upgrade."""
        tls = self.config.tls
        if self.redirect_socket is None and tls is not None and tls.http_redirect is not None:
            where = tls.http_redirect
            self.redirect_socket = listening_socket(where.host, where.port, backlog=1024)
        return self.redirect_socket

    # -- the multi-process parts of Parts' hooks ------------------------------------------

    async def converge(self) -> None:
        if self.hub is not None and not await self.hub.converge():
            log.warning("not every worker acknowledged the new state in time")

    async def before_scrape(self) -> None:
        if self.hub is not None:
            self.hub.metrics.update("supervisor", dump_metrics(self.data_registry))
            await self.hub.flush()

    def certificates_changed(self) -> None:
        if self.hub is not None:
            self.hub.certificates_changed()

    def charge_fleet_spending(self, spent: dict[str, int]) -> None:
        if self.hub is not None:
            self.hub.charge_all(spent)

    async def reload_workers(self) -> None:
        if self.hub is not None:
            sd_notify("RELOADING=1")
            try:
                await self.hub.replace_all()
            finally:
                sd_notify("READY=1")

    def request_stop(self, why: str = "stop requested") -> None:
        sd_notify("STOPPING=1")
        super().request_stop(why)

    def upgrade(self) -> int:
        """Start the installed hagw as a new supervisor, which takes our sockets over. It
        is our child, so it stays in our service's cgroup (systemd), in its own session so
        a Ctrl-C meant for us does not reach it."""
        if self._successor is not None and self._successor.poll() is None:
            raise UpgradeUnsupported(f"an upgrade is under way (pid {self._successor.pid})")
        argv = [sys.executable, "-m", "gateway", "run", "--workers", str(self.config.workers)]
        if self.config_path is not None:
            argv += ["-c", self.config_path]
        proc = self._successor = subprocess.Popen(argv, start_new_session=True)
        self.bus.publish(News("gateway.upgrade", f"started pid {proc.pid} to take over"))
        self.tasks(self._reap(proc), name="upgrade")
        return proc.pid

    async def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the new supervisor exits (a pidfd turns readable): it fails to start, or
        outlives us, which must not keep this process from exiting (no thread waits)."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        code = proc.wait()
        if not self._handed_over.is_set():
            self.bus.publish(News("gateway.upgrade_failed", f"the new supervisor (pid "
                                  f"{proc.pid}) exited with {code} before taking over; this "
                                  "one goes on", level=logging.ERROR))

    def _upgrade_from_signal(self) -> None:
        with contextlib.suppress(UpgradeUnsupported):
            self.upgrade()

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, self._upgrade_from_signal)

    def processes(self) -> dict[str, Any]:
        hub = self.hub
        return {"model": "supervisor", "supervisor": {"pid": os.getpid(),
                                                      "started": self.started_at},
                "workers": [] if hub is None else hub.describe(),
                "snapshot": None if hub is None else hub.version}

    # -- traffic -------------------------------------------------------------------------

    async def _spans_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """No spans here: each worker exports those of the requests it serves."""
        yield

    async def _traffic_ctx(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.config
        sock = self.listen_socket or listening_socket(cfg.listen.host, cfg.listen.port)
        self.listen_socket = sock
        self.traffic_address = sock.getsockname()[:2]
        hub = self.hub = WorkerHub(self, sock, max(1, worker_count(cfg.workers)))
        await hub.start()
        self.bus.publish(News("gateway.workers", f"{hub.count} workers serving on "
                              f"{self.traffic_url}: pids {hub.pids()}"))
        yield
        await self.stop_traffic()

    async def stop_traffic(self) -> None:
        hub, self.hub = self.hub, None
        if hub is not None:
            await hub.stop(replaced=self._handed_over.is_set())
        if self.control is not None:
            await self.control.close()
            self.control = None
        if self.listen_socket is not None:
            self.listen_socket.close()
            self.listen_socket = None


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify, NotifyAccess=all) our state, if it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def run_supervisor(config: GatewayConfig, config_path: str) -> None:
    async def main() -> None:
        supervisor = Supervisor(config, config_path=config_path)
        await supervisor.start()
        log.info("serving traffic on %s with %d workers, admin on %s",
                 supervisor.traffic_url, supervisor.hub.count if supervisor.hub else 0,
                 supervisor.admin_url)
        supervisor.install_signal_handlers()
        await supervisor.wait()

    asyncio.run(main())


__all__ = ["Supervisor", "WorkerHub", "listening_socket", "run_supervisor"]
