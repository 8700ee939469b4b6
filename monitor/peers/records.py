"""Shared records: the ``Store`` port on Redis, with change notices between instances.

Each namespace is a hash, ``{prefix}:ns:<namespace>``: key -> the value as JSON (the
same records the local ``StateStore`` keeps: operator drains, windows, deploys,
incidents). A write is one Lua script that changes the hash, increments
``{prefix}:version`` and publishes ``"<version> <notice JSON>"`` on ``{prefix}:changes``
(the namespace, the key, the writer's instance name, put or delete, and the value), all
in one atomic step. Leader-only writes pass their epoch and are refused by Redis
(``StaleLeader``) unless the lease still names this instance at that epoch.

Pub/sub is at-most-once: a notice sent while a subscriber is disconnected is lost. So
``start()`` subscribes first and then reads everything in one atomic snapshot (with the
version it is at), and does so again after every reconnect: handlers get a ``Resync``
with all records (they replace what they knew, which covers deletes they missed), then
``Change``\\s from other instances, in version order, skipping what the snapshot had. A
gap in the versions, versions that go back (Redis lost or dropped data without closing
the connection), or a silent connection (pings go unanswered) force a resync too.
``known()`` is this instance's copy of the last known state, kept for when Redis is down;
``wait_synced()`` waits for the first snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.fence import CHECK, Fence, fence_args, fence_keys, stale
from monitor.ports import Spawn

log = logging.getLogger("hagw.peers.records")

#: The subscriber pings this often, and reconnects after three silent intervals.
HEARTBEAT = 1.0
#: Wait between reconnection attempts of the subscriber.
RECONNECT_EVERY = 0.5

#: KEYS: lease, epoch, the namespace hash, the set of namespaces, the version.
#: ARGV: token, epoch (empty: unfenced), "put" or "delete", namespace, key, value JSON,
#: notice JSON, channel. Returns the new version.
WRITE = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
if ARGV[3] == 'put' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
  redis.call('SADD', KEYS[4], ARGV[4])
else
  redis.call('HDEL', KEYS[3], ARGV[5])
  if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('SREM', KEYS[4], ARGV[4]) end
end
local version = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[8], version .. ' ' .. ARGV[7])
return version
"""

#: KEYS: the set of namespaces, the version. ARGV: the namespace key prefix.
#: Returns {version, namespace, {key, value, ...}, namespace, {...}, ...}.
SNAPSHOT = """
local out = {redis.call('GET', KEYS[2]) or '0'}
for _, ns in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = ns
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. ns)
end
return out
"""


@dataclass(frozen=True, slots=True)
class Change:
    """Another instance put (``value``) or deleted (``deleted``) one record."""

    namespace: str
    key: str
    value: Any
    deleted: bool
    writer: str
    version: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Every record, as of ``version``: replace whatever was known before."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 0


Notice = Change | Resync
Handler = Callable[[Notice], None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SharedStore:
    """``monitor.ports.Store`` on Redis hashes, shared by every instance of the fleet."""

    def __init__(self, link: PeerLink, *, spawn: Spawn) -> None:
        self.link = link
        self.keys = link.keys
        self.name = link.name
        self.spawn = spawn
        self._write = link.redis.register_script(WRITE)
        self._snapshot = link.redis.register_script(SNAPSHOT)
        self._handlers: list[Handler] = []
        self._known: dict[str, dict[str, Any]] = {}
        #: The last version seen (snapshot or notice); 0 before any.
        self.version = 0
        self._snapshot_version = 0
        #: Set once a snapshot has been read (``known()`` is then complete).
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        records = sum(len(v) for v in self._known.values())
        return f"<SharedStore {self.keys.prefix} as {self.name} version={self.version} " \
               f"known={records}>"

    # -- the Store port --------------------------------------------------------------------

    async def put(self, namespace: str, key: str, value: Any, *,
                  epoch: int | None = None) -> None:
        """Write a record. With ``epoch``: a leader-only write, refused with StaleLeader
        unless this instance still holds the lease at that epoch."""
        text = json.dumps(value, separators=(",", ":"))
        await self._change("put", namespace, key, text, value, epoch)
        self._known.setdefault(namespace, {})[key] = json.loads(text)

    async def delete(self, namespace: str, key: str, *, epoch: int | None = None) -> None:
        await self._change("delete", namespace, key, "", None, epoch)
        self._known.get(namespace, {}).pop(key, None)

    async def get(self, namespace: str, key: str) -> Any:
        async with self.link.io(f"reading {namespace}/{key}") as redis:
            raw = await redis.hget(self.keys.namespace(namespace), key)
        return None if raw is None else json.loads(raw)

    async def items(self, namespace: str) -> dict[str, Any]:
        async with self.link.io(f"reading {namespace}") as redis:
            raw = await redis.hgetall(self.keys.namespace(namespace))
        return {_text(k): json.loads(v) for k, v in raw.items()}

    async def _change(self, op: str, namespace: str, key: str, text: str, value: Any,
                      epoch: int | None) -> None:
        fence = Fence(self.name, epoch) if epoch is not None else None
        notice = json.dumps({"ns": namespace, "key": key, "by": self.name, "op": op,
                             "value": value}, separators=(",", ":"))
        keys = self.keys
        try:
            async with self.link.io(f"writing {namespace}/{key}") as redis:
                version = await self._write(
                    keys=[*fence_keys(keys), keys.namespace(namespace), keys.namespaces,
                          keys.version],
                    args=[*fence_args(fence), op, namespace, key, text, notice, keys.changes],
                    client=redis)
        except ResponseError as exc:
            refused = stale(exc)
            if refused is not None:
                raise refused from None
            raise
        log.debug("%s %s/%s at version %s", op, namespace, key, version)

    # -- what this instance knows ----------------------------------------------------------

    def known(self, namespace: str) -> dict[str, Any]:
        """The records of ``namespace`` as last known here (from the subscription and this
        instance's own writes): what to serve on while Redis is down."""
        return dict(self._known.get(namespace, {}))

    # -- change notices --------------------------------------------------------------------

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` with a ``Resync`` after every (re)connection and a ``Change``
        for each write of another instance. Handlers run synchronously in the listener;
        one that raises is logged and skipped. Returns the function that unsubscribes."""
        self._handlers.append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return unsubscribe

    async def start(self) -> None:
        if self._task is None:
            self._task = self.spawn(self._listen(), name="peers record changes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def snapshot(self) -> Resync:
        """Every record and the version they are at, read in one atomic step."""
        keys = self.keys
        async with self.link.io("reading all records") as redis:
            raw = await self._snapshot(keys=[keys.namespaces, keys.version],
                                       args=[keys.namespace_prefix], client=redis)
        records: dict[str, dict[str, Any]] = {}
        for i in range(1, len(raw), 2):
            flat = raw[i + 1]
            records[_text(raw[i])] = {_text(flat[j]): json.loads(flat[j + 1])
                                      for j in range(0, len(flat), 2)}
        return Resync(records, int(raw[0]))

    async def _listen(self) -> None:
        while True:
            try:
                await self._session()
            except PeersUnavailable as exc:
                log.debug("record changes: %s; reconnecting", exc)
            except Exception:
                log.exception("record changes: the listener failed; reconnecting")
            await asyncio.sleep(RECONNECT_EVERY)

    async def _session(self) -> None:
        """One subscription: subscribe, then snapshot (nothing falls between), then
        notices until the connection fails."""
        loop = asyncio.get_running_loop()
        pubsub = self.link.redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with self.link.io("subscribing to record changes"):
                await pubsub.subscribe(self.keys.changes)
            await self._resync()
            heard = pinged = loop.time()
            while True:
                async with self.link.io("listening for record changes"):
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=HEARTBEAT)
                    now = loop.time()
                    if message is None:
                        if now - heard > 3 * HEARTBEAT:
                            raise RedisConnectionError("the subscription went silent")
                        if now - pinged >= HEARTBEAT:
                            await pubsub.ping()
                            pinged = now
                        continue
                heard = now
                if message.get("type") == "message":
                    await self._notice(message["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _resync(self) -> None:
        snapshot = await self.snapshot()
        self._known = {ns: dict(records) for ns, records in snapshot.records.items()}
        self.version = self._snapshot_version = snapshot.version
        self.synced.set()
        self._deliver(snapshot)

    async def wait_synced(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for the first snapshot after ``start()``: then
        ``known()`` holds every record. False if Redis did not answer in time."""
        try:
            async with asyncio.timeout(timeout):
                await self.synced.wait()
        except TimeoutError:
            return False
        return True

    async def _notice(self, data: bytes | str) -> None:
        head, _, body = _text(data).partition(" ")
        try:
            version = int(head)
            notice = json.loads(body)
        except ValueError:
            log.warning("record changes: ignoring a malformed notice %r", _text(data)[:200])
            return
        if version <= self.version:
            if self.version == self._snapshot_version:
                return  # sent before the snapshot was read: the snapshot had it
            # Versions went back (Redis lost data without a disconnect, or was flushed).
            log.warning("record changes: version %d after %d; resynchronising", version,
                        self.version)
            await self._resync()
            return
        if version > self.version + 1:
            log.info("record changes: versions %d..%d were missed; resynchronising",
                     self.version + 1, version - 1)
            await self._resync()
            return
        self.version = version
        namespace, key = str(notice["ns"]), str(notice["key"])
        deleted = notice.get("op") == "delete"
        # Our own writes too: a resync that raced with one may have read the state before it.
        if deleted:
            self._known.get(namespace, {}).pop(key, None)
        else:
            self._known.setdefault(namespace, {})[key] = notice.get("value")
        writer = str(notice.get("by"))
        if writer != self.name:
            self._deliver(Change(namespace, key, None if deleted else notice.get("value"),
                                 deleted, writer, version))

    def _deliver(self, notice: Notice) -> None:
        for handler in list(self._handlers):
            try:
                handler(notice)
            except Exception:
                log.exception("record changes: a handler failed on %r", notice)
