"""A worker: one data-plane process. It serves the traffic listener on the socket the
supervisor opened (every worker accepts on the same one, so a worker's death loses no
queued connection), routes on a replica of the supervisor's cluster that snapshots keep
current, and reports what it saw in batches.

If the supervisor goes away, the worker keeps serving on its last snapshot for
``orphan_grace`` (its own outlier and stall detection still work), then stops accepting,
finishes what is in flight and exits; a supervisor started meanwhile adopts its socket
(gateway.app.handoff)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from gateway.app import handoff
from gateway.app.dataplane import DataPlane, EjectionTimer, listener_tls, upstream_tls
from gateway.app.ipc import Channel, ChannelClosed
from gateway.app.logs import setup_logging
from gateway.app.loop import use_uvloop
from gateway.app.report import Outcomes, Tries, build_report
from gateway.app.tasks import Tasks
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.cluster import Cluster
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.errors import Answer, error_response
from gateway.events import EventBus
from gateway.listener import PublicPage, ServerState, TrafficServer
from gateway.maintenance import Phase, WriteQueued
from gateway.outlier import NodeEjected
from gateway.queue.store import Entry
from gateway.tls import ServerTls, TlsCollector, TlsError

if TYPE_CHECKING:  # gateway.app.fleet_worker's (only a fleet's workers import redis)
    from monitor.peers.queue import SpooledQueue
    from monitor.ports import Spawn


class FleetQueue(Protocol):
    """A fleet worker's queue on the fleet's stream, and its own link to Redis."""

    queue: SpooledQueue

    async def close(self) -> None: ...


FleetQueueMaker = Callable[[GatewayConfig, Clock, "Spawn"], FleetQueue]

log = logging.getLogger("hagw.worker")

#: How long an orphan waits for the supervisor adopting it to have its own workers serve.
ADOPTION_TIMEOUT = 60.0
#: How often a worker reports (and so how fresh the supervisor's counts are).
REPORT_EVERY = 0.1


class RemoteReplay:
    """The supervisor's replay, as a write queued during it needs it (over the channel)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._waiting: dict[str, list[asyncio.Future[Entry | None]]] = {}

    def ensure_running(self) -> None:
        self.worker.send({"type": "replay"})

    async def wait_result(self, ticket: str, timeout: float) -> Entry | None:
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(ticket, []).append(future)
        self.worker.send({"type": "watch", "ticket": ticket, "timeout": timeout})
        try:
            async with asyncio.timeout(timeout + 1.0):
                return await future
        except TimeoutError:
            return None
        finally:
            waiters = self._waiting.get(ticket, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(ticket, None)

    def replayed(self, ticket: str, data: dict[str, Any] | None) -> None:
        entry = None if data is None else entry_from_json(data)
        for future in self._waiting.pop(ticket, []):
            if not future.done():
                future.set_result(entry)


class RemotePage:
    """The public status page in a worker: rendered by the supervisor (it has the state),
    asked for over the channel at most once a second per format, however many ask."""

    #: How old a page may be. The supervisor's own page is never fresher than its state.
    MAX_AGE = 1.0

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._pages: dict[str, tuple[float, Answer]] = {}
        self._asked: dict[str, asyncio.Future[Answer]] = {}

    async def get(self, kind: str) -> Answer:
        now = self.worker.clock.monotonic()
        cached = self._pages.get(kind)
        if cached is not None and now - cached[0] < self.MAX_AGE:
            return cached[1]
        asked = self._asked.get(kind)
        if asked is None:
            asked = self._asked[kind] = asyncio.get_running_loop().create_future()
            self.worker.send({"type": "page", "kind": kind})
        try:
            async with asyncio.timeout(2.0):
                return await asyncio.shield(asked)
        except TimeoutError:
            self._asked.pop(kind, None)
            if cached is not None:
                return cached[1]
            return error_response(503, "the status page is not available right now", "")

    def arrived(self, message: dict[str, Any]) -> None:
        kind = message["kind"]
        answer = Answer(int(message["status"]), message["body"].encode(),
                        [(k, v) for k, v in message["headers"]], message["content_type"])
        self._pages[kind] = (self.worker.clock.monotonic(), answer)
        asked = self._asked.pop(kind, None)
        if asked is not None and not asked.done():
            asked.set_result(answer)


def page_to_json(kind: str, answer: Answer) -> dict[str, Any]:
    return {"type": "page", "kind": kind, "status": answer.status,
            "body": answer.body.decode(), "headers": answer.headers,
            "content_type": answer.content_type}


def entry_to_json(entry: Entry) -> dict[str, Any]:
    return {"ticket": entry.ticket, "status": entry.status,
            "result_status": entry.result_status, "result_headers": entry.result_headers,
            "result_body": base64.b64encode(entry.result_body or b"").decode()}


def entry_from_json(data: dict[str, Any]) -> Entry:
    return Entry(ticket=data["ticket"], created=0.0, method="", target="", headers=[],
                 body=b"", idempotency_key="", status=data["status"],
                 result_status=data.get("result_status"),
                 result_headers=[(k, v) for k, v in data.get("result_headers") or []],
                 result_body=base64.b64decode(data.get("result_body") or ""))


class Worker:
    def __init__(self, config: GatewayConfig, *, worker_id: str, listen: socket.socket,
                 channel: socket.socket, clock: Clock = SYSTEM_CLOCK,
                 config_path: str | None = None, fleet: FleetQueueMaker | None = None) -> None:
        self.config = config
        self.worker_id = worker_id
        self.listen = listen
        self.channel_sock = channel
        self.clock = clock
        self.bus = EventBus()
        self.cluster = Cluster(config, clock=clock, bus=self.bus, decides=False)
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = Outcomes()
        self.tries = Tries()
        self.replay = RemoteReplay(self)
        self.tasks = Tasks()
        #: In a fleet, this worker's own link to Redis: it queues writes on the fleet's
        #: stream itself (a 202 only once Redis has it), and into the instance's spool
        #: while Redis is away, which the supervisor forwards.
        self.fleet = fleet(config, clock, self.tasks) if fleet is not None else None
        self.data = DataPlane(config, cluster=self.cluster, clock=clock, registry=self.registry,
                              passive=self.tries, outcomes=self.outcomes, replay=self.replay,
                              publish=self.bus.publish,
                              client_tls=upstream_tls(config, clock),
                              queue=self.fleet.queue if self.fleet is not None else None)
        self.data.traffic.admission.share()
        #: The traffic listener's TLS, its files read here (a worker serves them).
        self.tls: ServerTls | None = listener_tls("traffic", config.tls, "tls", clock,
                                                  config_path)
        #: The supervisor's certificate generation this worker's files were loaded at.
        self._tls_generation: int | None = None
        # Only the handshake failures: the supervisor reports the expiry (the same files).
        self.registry.register(TlsCollector(lambda: () if self.tls is None else (self.tls,),
                                            expiry=False))
        self.page = RemotePage(self)
        status = config.status
        self.data.traffic.local_routes.insert(0, PublicPage(
            lambda: status.public, lambda: status.path, self.page.get))
        self.ejections = EjectionTimer(self.cluster)
        self.server: TrafficServer | None = None
        self.channel: Channel | None = None
        self.version = -1
        self._stop = asyncio.Event()
        #: How long idle keep-alive connections stay open once stopping (others accept).
        self._idle_grace = 0.0
        self._snapshot = asyncio.Event()
        self._adopt_requested = asyncio.Event()
        self.bus.subscribe(NodeEjected, self._ejected)
        self.bus.subscribe(WriteQueued, self._queued)

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} pid={os.getpid()} snapshot={self.version}>"

    def send(self, message: dict[str, Any]) -> None:
        if self.channel is not None:
            with contextlib.suppress(ChannelClosed):
                self.channel.send(message)

    # -- what flows up --------------------------------------------------------------------

    def _ejected(self, event: NodeEjected) -> None:
        self.ejections.arm()
        self.send({"type": "ejected", "node": event.node.name, "until": event.until,
                   "reason": event.reason})

    def _queued(self, event: WriteQueued) -> None:
        self.send({"type": "queued", "seq": event.entry.seq, "created": event.entry.created})

    def report(self, flush: int | None = None) -> None:
        message = build_report(self.outcomes, self.tries, self.cluster,
                               self.data.traffic.admission, self.registry)
        if flush is not None:
            message["flush"] = flush
        self.send(message)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            self.report()

    # -- what flows down ------------------------------------------------------------------

    def apply(self, snapshot: dict[str, Any]) -> None:
        """A snapshot of the supervisor's state, in one synchronous step."""
        for name, conditions in snapshot.get("nodes", {}).items():
            node = self.cluster.get(name)
            if node is not None:
                node.restore(conditions)
        mode = self.data.mode
        mode.phase = Phase(snapshot.get("phase", "normal"))
        mode.window = snapshot.get("window")
        self.data.traffic.advisory = snapshot.get("advisory")
        self._certificates(int(snapshot.get("tls", 0)))
        self.version = int(snapshot["version"])
        self.ejections.arm()
        self._snapshot.set()

    def _certificates(self, generation: int) -> None:
        """The supervisor loaded changed certificate files (a new generation): load them
        too. It checked them; files that changed again meanwhile and are unusable are
        refused here, and the old certificates keep serving."""
        known, self._tls_generation = self._tls_generation, generation
        if self.tls is None or known is None or known == generation:
            return  # the first snapshot: the files were read at start
        try:
            self.tls.reload(self.tls.config)
        except TlsError as exc:
            log.error("worker %s: kept the old certificates: %s", self.worker_id, exc)

    async def _listen(self, channel: Channel) -> None:
        while (message := await channel.recv()) is not None:
            kind = message.get("type")
            if kind == "snapshot":
                self.apply(message)
                self.send({"type": "ack", "version": self.version})
            elif kind == "flush":
                self.report(int(message["id"]))
            elif kind == "clients":
                admission = self.data.traffic.admission
                admission.charge(message["spent"])
                if "busy" in message:
                    admission.remote_busy = message["busy"]
            elif kind == "page":
                self.page.arrived(message)
            elif kind == "replayed":
                self.replay.replayed(message["ticket"], message.get("entry"))
            elif kind == "stop":
                self._idle_grace = float(message.get("idle_grace", 0.0))
                self._stop.set()
        if self._stop.is_set():
            return  # told to stop: the supervisor going away is no news
        log.warning("worker %s: the supervisor is gone; serving on the last snapshot for "
                    "%gs, or until a new supervisor adopts this worker", self.worker_id,
                    self.config.orphan_grace)
        self.channel = None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._adopt_requested.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.orphan_grace):
                await self._adopt_requested.wait()
        if self._adopt_requested.is_set() and await self._hand_over():
            self._idle_grace = self.config.shutdown.idle_grace  # the new workers accept
        self._stop.set()

    async def _hand_over(self) -> bool:
        """A new supervisor asked (SIGUSR1): give it the traffic socket and serve until it
        says its own workers serve (True), then stop."""
        path = handoff.control_path(self.config.state_dir)
        conn = await asyncio.to_thread(handoff.connect, path)
        if conn is None:
            return False
        try:
            conn.settimeout(ADOPTION_TIMEOUT)
            handoff.send(conn, {"type": "orphan", "id": self.worker_id, "pid": os.getpid()},
                         [self.listen.fileno()])
            message, _ = await asyncio.to_thread(handoff.receive, conn)
            return message.get("type") == "stop"
        except (OSError, ConnectionError, ValueError):
            return False
        finally:
            conn.close()

    # -- the process ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
        async with asyncio.TaskGroup() as group:
            self.tasks.bind(group)
            try:
                await self._serve()
            finally:
                self.tasks.cancel_all()
                self.tasks.bind(None)

    async def _serve(self) -> None:
        self.channel = channel = await Channel.over(self.channel_sock)
        self.tasks(self._listen(channel), name="channel")
        async with asyncio.timeout(30):
            await self._snapshot.wait()  # no request is routed on a stale view
        data = self.data
        await data.queue.open()
        data.open_pools()
        await data.websockets.start()
        data.start_spans()  # this worker's own (tracing.otlp_endpoint)
        state = ServerState(data.traffic, self.config.limits,
                            scheme="https" if self.tls is not None else "http",
                            spawn=self.tasks.request)
        self.server = server = TrafficServer(state, tls=self.tls)
        await server.start(sock=self.listen)
        self.send({"type": "ready", "pid": os.getpid(), "version": self.version})
        self.tasks(self._report_loop(), name="report")
        await self._stop.wait()
        # Stop as the single process does: stop accepting, drain, close.
        server.stop_accepting()
        await data.websockets.close_all("gateway shutting down", grace=0)
        await server.drain(self.config.shutdown.drain_timeout, idle_grace=self._idle_grace)
        self.report()
        await data.stop_spans()  # the last spans (at most tracing.export_timeout)...
        self.report()  # ...and what became of them
        if self.channel is not None:
            with contextlib.suppress(ChannelClosed):
                await self.channel.drain()
        data.abort_pools()
        await data.queue.close()
        if self.fleet is not None:
            await self.fleet.close()
        self.ejections.cancel()


def run_worker(config: GatewayConfig, worker_id: str, listen_fd: int, channel_fd: int,
               config_path: str | None = None, fleet: FleetQueueMaker | None = None) -> None:
    listen = socket.socket(fileno=listen_fd)
    channel = socket.socket(fileno=channel_fd)
    worker = Worker(config, worker_id=worker_id, listen=listen, channel=channel,
                    config_path=config_path, fleet=fleet)
    asyncio.run(worker.run())


def main(argv: list[str] | None = None, fleet: FleetQueueMaker | None = None) -> int:
    """``python -m gateway.app.worker``: how the supervisor starts a worker. Its own entry
    point, so a worker imports the data plane only (not the admin API, the control plane
    or the CLI) and a replacement starts serving sooner. ``fleet``: the queue on the
    fleet's stream (``python -m gateway.app.fleet_worker``)."""
    parser = argparse.ArgumentParser(prog="python -m gateway.app.worker",
                                     description="a hagw data-plane worker (the supervisor "
                                                 "starts these; not for operators)")
    parser.add_argument("--id", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("-c", "--config", required=True)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        setup_logging(config.log_level, config.log_format)
        use_uvloop()
        run_worker(config, args.id, args.listen_fd, args.channel_fd, args.config, fleet)
    except ConfigError as exc:  # a file changed since the supervisor checked it
        print(f"hagw worker {args.id}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
