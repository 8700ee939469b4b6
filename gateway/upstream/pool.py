"""A node's pool of keep-alive connections, with Envoy-style caps (circuit breakers)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.stall import NodeSignal
from gateway.upstream.connection import ConnectFailure, PoolOverflow, UpstreamConnection

#: Idle connections kept per node beyond which released ones are closed.
MAX_IDLE = 256


class ConnectionPool:
    def __init__(self, name: str, host: str, port: int, *, connect_timeout: float,
                 idle_timeout: float, max_connections: int = 0, max_pending: int = 0,
                 ssl: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name
        self.host = host
        self.port = port
        #: TLS to the node (an https:// node): the client context, and the name sent in SNI
        #: and checked against the node's certificate (default: ``host``). Connections made
        #: after a change use the new values; pooled ones keep theirs.
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        #: 0 means no cap. At the cap, up to max_pending requests wait for a connection.
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.clock = clock
        #: What stall detection hears from this node (stamped by the connections).
        self.signal = NodeSignal(name)
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._connecting = 0
        self.closing = False

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self, deadline: float = float("inf")) -> UpstreamConnection:
        """A ready connection: the most recently used idle one, or a new one. Waiting for
        capacity (at max_connections) ends at ``deadline`` (loop time)."""
        idle = self._idle
        if idle:
            now = self.clock.monotonic()
            while idle:
                conn = idle.pop()
                # Never reuse a connection idle for longer than the node's keep-alive allows:
                # the node may be closing it right now (Envoy #1979, #47468).
                if conn.usable and now - conn.idle_since < self.idle_timeout:
                    return conn
                conn.close()
        if self.max_connections and len(self._all) + self._connecting >= self.max_connections:
            return await self._wait_for_capacity(deadline)
        loop = asyncio.get_running_loop()
        # Connections being opened count against the cap too, or a burst would overshoot it.
        self._connecting += 1
        tls = self.ssl
        try:
            # With TLS, connect_timeout covers the handshake too.
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=tls,
                    server_hostname=(self.server_hostname or self.host) if tls else None)
        except TimeoutError:
            self._wake_one()  # the slot this attempt held is free again
            raise ConnectFailure(f"connect to {self.host}:{self.port} timed out after "
                                 f"{self.connect_timeout:g}s") from None
        except ssl.SSLError as exc:  # certificate refused, no common protocol...
            self._wake_one()
            detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            raise ConnectFailure(f"TLS handshake with {self.host}:{self.port} failed: "
                                 f"{detail or exc}") from None
        except OSError as exc:
            self._wake_one()
            raise ConnectFailure(f"connect to {self.host}:{self.port} failed: "
                                 f"{exc.strerror or exc}") from None
        finally:
            self._connecting -= 1
        self._all.add(conn)
        if self.closing:
            conn.close()
            raise ConnectFailure(f"{self.name}: the pool is closing")
        return conn

    async def _wait_for_capacity(self, deadline: float) -> UpstreamConnection:
        """At max_connections: queue as a pending request (Envoy's max_pending_requests)."""
        if len(self._waiters) >= self.max_pending:
            raise PoolOverflow(f"{self.name}: {len(self._all)} connections open and "
                               f"{len(self._waiters)} requests waiting (max_connections="
                               f"{self.max_connections}, max_pending={self.max_pending})")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(None if deadline == float("inf") else deadline):
                await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return await self.acquire(deadline)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release(self, conn: UpstreamConnection) -> None:
        if conn.reusable and not self.closing and len(self._idle) < MAX_IDLE:
            conn.idle_since = self.clock.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        if self._waiters:
            self._wake_one()

    def discard(self, conn: UpstreamConnection) -> None:
        """Called by a connection when its socket is gone."""
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if self._waiters:
            self._wake_one()

    def close_idle(self) -> None:
        """A reused connection broke before any answer: the node most likely closed or
        lost every connection, so the other idle ones are not worth trying one by one."""
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def interrupt_waiting(self) -> None:
        """The node was declared stalled: wake every request waiting for its answer, so
        the router can hedge the idempotent ones."""
        for conn in list(self._all):
            conn.interrupt()

    def close(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self.closing = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def abort_all(self) -> None:
        self.close()
        for conn in list(self._all):
            conn.abort()

    def __repr__(self) -> str:
        tls = " tls" if self.ssl else ""
        return f"<ConnectionPool {self.name} {self.host}:{self.port}{tls} " \
               f"open={len(self._all)} idle={len(self._idle)}>"
