"""Reaching Redis: the client built from ``PeersConfig``, and ``PeerLink``, which knows
whether Redis answers.

The client has short connect and socket timeouts and no retries of its own: a caller
that gets ``PeersUnavailable`` decides (the lease waits for its next renewal, the queue
spools locally, a record write is refused with the reason). Every Redis call of
``monitor.peers`` goes through ``PeerLink.io``, which keeps ``connected`` and ``reason``
up to date around it (the ``hagw_peers_connected`` gauge) and tells listeners when Redis
comes back, so that they can resynchronise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.clock import Clock
from gateway.config.redis_url import RedisURL
from gateway.config.schema import PeersConfig
from monitor.peers.keys import Keys

log = logging.getLogger("hagw.peers")

#: What "Redis did not answer" looks like. A ReadOnlyError comes from a master that was
#: demoted by a failover: nothing can be written there, so it counts as unreachable.
#: (redis-py's BusyLoadingError, while Redis replays its AOF, is a ConnectionError.)
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError, TimeoutError)


#: Connections to Redis one process holds at most (the change listener keeps one).
MAX_CONNECTIONS = 16


class PeersUnavailable(Exception):
    """Redis did not answer, or cannot take writes; the message says why (no secrets)."""


def _no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


def socket_timeout(config: PeersConfig) -> float:
    """A command's reply must come within ``timeout``; ``WAIT`` may take ``wait_timeout``
    more on top."""
    return config.timeout + (config.wait_timeout if config.write_replicas else 0.0)


def client_for(config: PeersConfig) -> tuple[Redis, Sentinel | None]:
    """The ``redis.asyncio`` client for ``config``: direct, or the master of
    ``sentinel_service`` as the sentinels name it (looked up again on every new
    connection, so a failover is followed). The Sentinel, if any, holds its own clients
    of the sentinels: close them too (``PeerLink.close`` does)."""
    url = config.target
    timeout = socket_timeout(config)
    if config.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(s.host, s.port) for s in config.sentinels],
            sentinel_kwargs={"socket_timeout": config.timeout,
                             "socket_connect_timeout": config.timeout,
                             "retry": _no_retries()})
        master: Redis = sentinel.master_for(
            config.sentinel_service, redis_class=Redis, db=url.db, username=url.username,
            password=url.password, ssl=url.tls, socket_timeout=timeout,
            socket_connect_timeout=config.timeout, retry=_no_retries(),
            decode_responses=False, client_name=f"hagw-{config.name}")
        return master, sentinel
    # At most MAX_CONNECTIONS: a burst of callers waits for one to come free rather than
    # open a connection each, a storm a loaded Redis answers late. Waiting in line is not
    # Redis failing to answer (each call in front is bounded by ``timeout``), so the wait
    # is bounded by the lease's TTL, not by one command's timeout.
    pool = BlockingConnectionPool(
        max_connections=MAX_CONNECTIONS, timeout=config.lease_ttl,
        connection_class=SSLConnection if url.tls else Connection,
        host=url.host, port=url.port, db=url.db, username=url.username,
        password=url.password, socket_timeout=timeout, socket_connect_timeout=config.timeout,
        retry=_no_retries(), decode_responses=False, client_name=f"hagw-{config.name}")
    return Redis.from_pool(pool), None  # closing the client closes the pool


def describe(config: PeersConfig) -> str:
    """Where Redis is, for people: the URL without its password, or the sentinels."""
    if config.sentinels:
        return (f"{config.sentinel_service} via sentinels "
                + ",".join(str(s) for s in config.sentinels))
    return str(config.target)


class PeerLink:
    """The Redis client and whether it works, as seen by the last call that used it.

    ``connected`` starts False ("not connected yet") and changes only around I/O: a call
    that got an answer (any answer, an error reply included) sets it, a call that got
    none clears it and records the reason."""

    def __init__(self, config: PeersConfig, *, clock: Clock, client: Redis | None = None
                 ) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self.clock = clock
        self._sentinel: Sentinel | None = None
        if client is None:
            client, self._sentinel = client_for(config)
        self.redis: Redis = client
        self.connected = False
        self.reason = "not connected yet"
        #: Monotonic time of the last change of ``connected``.
        self.since = clock.monotonic()
        self._url: RedisURL = config.target
        self._listeners: list[Callable[[bool], None]] = []

    def __repr__(self) -> str:
        state = "connected" if self.connected else f"down: {self.reason}"
        return f"<PeerLink {self.config.name} {describe(self.config)} {state}>"

    @property
    def name(self) -> str:
        """This instance's name among its peers."""
        return self.config.name

    def on_change(self, listener: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``listener(connected)`` whenever ``connected`` flips. Returns the function
        that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    # -- state, updated around I/O -------------------------------------------------------

    def up(self) -> None:
        if self.connected:
            return
        self.connected, self.reason, self.since = True, "", self.clock.monotonic()
        log.info("peers: Redis at %s answers", describe(self.config))
        self._notify()

    def down(self, what: str, exc: BaseException) -> None:
        detail = str(exc) or type(exc).__name__
        self.reason = self._url.scrub(f"{what}: {detail}")
        if not self.connected:
            return
        self.connected, self.since = False, self.clock.monotonic()
        log.warning("peers: Redis at %s does not answer (%s); serving on the last known "
                    "state", describe(self.config), self.reason)
        self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self.connected)
            except Exception:
                log.exception("peers: a link listener failed")

    @contextlib.asynccontextmanager
    async def io(self, what: str) -> AsyncIterator[Redis]:
        """``async with link.io("renewing the lease") as redis: ...``: no answer becomes
        ``PeersUnavailable`` (``what`` and the cause, without secrets)."""
        try:
            yield self.redis
        except UNREACHABLE as exc:
            self.down(what, exc)
            await self._drop_idle()
            raise PeersUnavailable(self.reason) from None
        except ResponseError:
            self.up()  # Redis answered, with an error the caller handles
            raise
        self.up()

    async def _drop_idle(self) -> None:
        """Close the pool's idle connections: they were opened to a Redis that stopped
        answering, and one taken from the pool once it is back would fail its first
        command ("Connection closed by server"). The next call connects afresh."""
        with contextlib.suppress(Exception):
            await self.redis.connection_pool.disconnect(inuse_connections=False)

    async def ping(self) -> bool:
        """One round trip; True if Redis answered."""
        try:
            async with self.io("ping") as redis:
                await redis.ping()
        except PeersUnavailable:
            return False
        return True

    async def start(self) -> bool:
        """Connect once (nothing connects before the first call); True if Redis answered.
        A gateway starts serving either way, on whatever state it has."""
        return await self.ping()

    async def close(self) -> None:
        await self.redis.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()
