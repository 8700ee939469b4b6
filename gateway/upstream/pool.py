"""A node's pool of keep-alive connections, with Envoy-style caps (circuit breakers)."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.upstream.connection import ConnectFailure, PoolOverflow, UpstreamConnection

#: Idle connections kept per node beyond which released ones are closed.
MAX_IDLE = 256


class ConnectionPool:
    def __init__(self, name: str, host: str, port: int, *, connect_timeout: float,
                 idle_timeout: float, max_connections: int = 0,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        #: 0 means no cap.
        self.max_connections = max_connections
        self.clock = clock
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self.closing = False

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self) -> UpstreamConnection:
        """A ready connection: the most recently used idle one, or a new one."""
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
        if self.max_connections and len(self._all) >= self.max_connections:
            raise PoolOverflow(f"{self.name}: {len(self._all)} connections open, "
                               f"max_connections={self.max_connections}")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port)
        except TimeoutError:
            raise ConnectFailure(f"connect to {self.host}:{self.port} timed out after "
                                 f"{self.connect_timeout:g}s") from None
        except OSError as exc:
            raise ConnectFailure(f"connect to {self.host}:{self.port} failed: "
                                 f"{exc.strerror or exc}") from None
        self._all.add(conn)
        if self.closing:
            conn.close()
            raise ConnectFailure(f"{self.name}: the pool is closing")
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if conn.reusable and not self.closing and len(self._idle) < MAX_IDLE:
            conn.idle_since = self.clock.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        """Called by a connection when its socket is gone."""
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

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
        return f"<ConnectionPool {self.name} {self.host}:{self.port} open={len(self._all)} " \
               f"idle={len(self._idle)}>"
