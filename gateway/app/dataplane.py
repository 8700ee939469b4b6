"""The data plane of one process, wired: pools, router, traffic handler, maintenance mode
and the queue it writes to, on a cluster. In one process the cluster is the control
plane's own; in a worker it is a replica the supervisor's snapshots keep current."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from gateway.accounting import Accounting
from gateway.admission import Admission
from gateway.clock import Clock
from gateway.cluster import Cluster
from gateway.config import ConfigError, GatewayConfig
from gateway.config.schema import TlsConfig
from gateway.events import Publish
from gateway.listener import OutcomeSink, Responder, TrafficHandler, WebSocketTunnels
from gateway.maintenance import MaintenanceMode, ReplayWaiter
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.queue.store import QueueLimits, SqliteQueue
from gateway.router import Forwarder, PassiveObserver, Router
from gateway.span_export import SpanExport
from gateway.tls import ServerTls, TlsError, client_context
from gateway.upstream import ConnectionPool

if TYPE_CHECKING:  # a fleet's queue (gateway.app.fleet_queue): redis only for a fleet
    from monitor.peers.queue import SpooledQueue


def upstream_tls(config: GatewayConfig, clock: Clock,
                 path: str | Path | None = None) -> ssl.SSLContext | None:
    """The client context for https:// nodes (pools and probes), its files checked; None
    when no node is https://. A bad file is a config error, so start-up and reload report
    it as one. The files are read again on every call, so a reload also picks up a
    rotated client certificate or CA bundle: new connections use it, pooled ones keep
    theirs."""
    if not any(node.url.tls for node in config.nodes):
        return None
    try:
        return client_context(config.upstream_tls, clock=clock)
    except TlsError as exc:
        raise ConfigError(str(exc), file=str(path or "<config>"), path="upstream_tls") from None


def listener_tls(listener: str, config: TlsConfig | None, key: str, clock: Clock,
                 path: str | Path | None = None) -> ServerTls | None:
    """A listener's TLS (``key``: ``tls`` or ``admin.tls``), its files read and checked;
    None without. A bad file is a config error naming the file and what is wrong."""
    if config is None:
        return None
    try:
        return ServerTls(listener, config, clock=clock)
    except TlsError as exc:
        raise ConfigError(str(exc), file=str(path or "<config>"), path=key) from None


class EjectionTimer:
    """Wakes when the next ejection ends (the cluster's ``tick``); no polling."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        wake = self.cluster.tick()
        self.cancel()
        if wake is not None:
            delay = max(0.0, wake - self.cluster.clock.monotonic())
            self._handle = asyncio.get_running_loop().call_later(delay, self.arm)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def __repr__(self) -> str:
        return f"<EjectionTimer {'armed' if self._handle else 'idle'}>"


def queue_limits(config: GatewayConfig) -> QueueLimits:
    m = config.maintenance
    return QueueLimits(max_bytes=m.max_queued_bytes, max_client_bytes=m.max_client_queued_bytes,
                       min_free_disk=m.min_free_disk)


class DataPlane:
    def __init__(self, config: GatewayConfig, *, cluster: Cluster, clock: Clock,
                 registry: CollectorRegistry, passive: PassiveObserver,
                 outcomes: OutcomeSink, replay: ReplayWaiter, publish: Publish,
                 client_tls: ssl.SSLContext | None = None,
                 queue: SqliteQueue | SpooledQueue | None = None) -> None:
        self.config = config
        self.cluster = cluster
        self.clock = clock
        #: The client context https:// nodes' pools connect with (``upstream_tls``).
        self.client_tls = client_tls
        self.accounting = Accounting(registry)
        self.outlier = OutlierDetector(cluster, config.outlier_detection)
        self.pools: dict[Node, ConnectionPool] = {}
        self.router = Router(cluster, self.pools, self.outlier, passive, self.accounting,
                             config)
        self.forwarder = Forwarder(self.router)
        self.websockets = WebSocketTunnels(cluster, tls=self._tls_for)
        self.traffic = TrafficHandler(
            self.router, Admission(config.rate_limit, config.overload, clock),
            Responder(self.pools, self.outlier, passive, config.timeouts.stream_idle),
            self.websockets, self.accounting, outcomes, config, publish)
        #: The write queue: the state_dir's SQLite queue, or in a fleet the fleet's
        #: (``gateway.app.fleet_queue``).
        self.queue = queue if queue is not None else SqliteQueue(
            config.state_dir, config.maintenance.queue_capacity, limits=queue_limits(config))
        self.mode = MaintenanceMode(config.maintenance, self.queue, replay, publish,
                                    body_timeout=config.limits.client_body_timeout, clock=clock)
        self.mode.status_url = config.status.path if config.status.public else None
        self.traffic.local_routes.append(self.mode)
        #: Whether this process exports its requests' spans (it serves the traffic).
        self._exporting = False

    def __repr__(self) -> str:
        return f"<DataPlane {len(self.pools)} pools {self.traffic!r}>"

    # -- pools ------------------------------------------------------------------------------

    def _tls_for(self, node: Node) -> tuple[ssl.SSLContext | None, str | None]:
        """A WebSocket tunnel reaches a node as its pool does (TLS for https:// nodes)."""
        pool = self.pools.get(node)
        return (None, None) if pool is None else (pool.ssl, pool.server_hostname)

    def add_pool(self, node: Node) -> None:
        url = node.config.url
        cfg = self.config
        self.pools[node] = ConnectionPool(
            node.name, url.host, url.port, connect_timeout=cfg.timeouts.connect,
            idle_timeout=cfg.timeouts.idle_upstream, max_connections=cfg.overload.max_connections,
            max_pending=cfg.overload.max_pending, clock=self.clock)
        self._configure_tls(node, self.pools[node])

    def _configure_tls(self, node: Node, pool: ConnectionPool) -> None:
        """An https:// node's pool connects with the upstream client context, sending (and
        checking) ``upstream_tls.server_name`` or the node's host."""
        url = node.config.url
        if url.tls:
            pool.ssl = self.client_tls
            pool.server_hostname = self.config.upstream_tls.server_name or url.host

    def open_pools(self) -> None:
        for node in self.cluster:
            if node not in self.pools:
                self.add_pool(node)

    def close_pool(self, node: Node) -> None:
        pool = self.pools.pop(node, None)
        if pool is not None:
            pool.close()

    def abort_pools(self) -> None:
        for pool in self.pools.values():
            pool.abort_all()

    # -- spans ------------------------------------------------------------------------------

    def start_spans(self) -> None:
        """Export the spans of the requests this process serves (``tracing.otlp_endpoint``),
        from now on and after every reload: called where the traffic is served, the single
        process or each worker (a supervisor serves none)."""
        self._exporting = True
        self.traffic.spans = self._span_export(self.config)

    async def stop_spans(self) -> None:
        """Send the spans still queued, waiting at most ``tracing.export_timeout``."""
        self._exporting = False
        spans, self.traffic.spans = self.traffic.spans, None
        if spans is not None:
            await spans.close()

    def _span_export(self, config: GatewayConfig) -> SpanExport | None:
        if config.tracing.otlp_endpoint is None:
            return None  # and OpenTelemetry is never imported
        return SpanExport(config.tracing, self.accounting.trace_spans)

    # -- reload -----------------------------------------------------------------------------

    def configure(self, new: GatewayConfig, client_tls: ssl.SSLContext | None) -> None:
        """Apply a reloaded config to everything but the cluster's membership (the caller
        updates the cluster, then opens pools for added nodes)."""
        if self._exporting and new.tracing != self.config.tracing:
            old = self.traffic.spans
            self.traffic.spans = self._span_export(new)
            if old is not None:
                old.shut_down()  # its last spans go out in the background
        self.config = new
        self.client_tls = client_tls
        self.router.configure(new)
        self.traffic.configure(new)
        self.outlier.config = new.outlier_detection
        self.mode.configure(new.maintenance, new.limits.client_body_timeout)
        self.mode.status_url = new.status.path if new.status.public else None
        self.queue.capacity = new.maintenance.queue_capacity
        self.queue.limits = queue_limits(new)
        for node, pool in self.pools.items():
            pool.connect_timeout = new.timeouts.connect
            pool.idle_timeout = new.timeouts.idle_upstream
            pool.max_connections = new.overload.max_connections
            pool.max_pending = new.overload.max_pending
            self._configure_tls(node, pool)
