"""The maintenance write queue on a Redis stream, shared by the fleet, and a local spool
for when Redis cannot be reached.

``RedisQueue`` implements ``gateway.queue.store.QueueStore`` with ``SqliteQueue``'s
semantics. An accepted write is ``XADD``\\ed to ``{prefix}:queue`` by a Lua script that,
in the same atomic step, takes the next number of ``{prefix}:queue:seq`` as the entry's
``seq``, files its status hash (``{prefix}:queue:entry:<ticket>``) and puts it in line
(``{prefix}:queue:line``, a sorted set by seq). ``enqueue`` returns only after Redis
answered, and with ``peers.write_replicas`` > 0 only after ``WAIT`` saw that many
replicas acknowledge it (else the entry is withdrawn and ``NotReplicated`` raised, so no
202 goes out). With ``appendfsync always`` Redis fsyncs its AOF before it answers, so a
returned entry survives a crash of Redis; ``open()`` warns when the server is set up to
lose acknowledged writes.

Ordering. ``seq`` is a dense counter assigned inside the script that appends to the
stream, so stream order, ``seq`` order and commit order are one order for the whole
fleet, and ``next_batch`` returns waiting entries in it. (``seq`` is not computed from
the stream ID "<ms>-<n>": ms * 10^6 + n is beyond the 2^53 that Lua numbers and sorted-set
scores hold exactly.) Enqueueing the same ticket again (a spool forwarding an entry whose
first attempt got no answer) finds it and adds nothing, so an entry is in line once.

Replay writes (``mark_replaying*``, ``sent_to``, ``finish*``, ``retry_later``,
``recover``) may be fenced: given ``fence`` (the leader election's), each is a script that
first checks the lease, and a stale leader gets ``StaleLeader`` before it marks or
re-sends anything. Finishing an entry deletes its stream record (headers and body) and
keeps only its status and result, until ``purge``.

``SpooledQueue`` puts a local ``SqliteQueue`` in front. Writes are group-committed by one
writer: each batch goes to Redis in one round trip; when Redis does not answer, the
batch goes to the spool (fsynced before any 202, as ever), and while the spool holds
anything every new write goes there too, behind it. ``forward()`` (run by ``open()`` in
the background, and woken when Redis answers again) moves spooled entries to the stream
in their local order and then forgets them locally. What is guaranteed then:

* every 202 is for an entry on disk: in Redis's AOF, or in this instance's spool;
* this instance's own writes keep their arrival order in the stream;
* relative to other instances' writes, a spooled entry takes its place when it reaches
  Redis (its ``seq`` is assigned then), so it is replayed after writes that other
  instances accepted later but delivered sooner;
* an entry reaches the stream once: forwarding is idempotent by ticket, so a crash
  between "added to Redis" and "forgotten locally" cannot duplicate it;
* until it is forwarded, its ticket is known to this instance only (``get`` looks in
  the spool first); other instances answer 404 for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT

from gateway.queue.store import (
    DONE,
    FAILED,
    QUEUED,
    REPLAYING,
    Entry,
    NotDurable,
    QueueFull,
    QueueLimits,
    QueueStats,
    QueueUnavailable,
    SqliteQueue,
    stored_result_headers,
)
from monitor.peers.connection import PeerLink, PeersUnavailable
from monitor.peers.fence import CHECK, Fence, fence_args, fence_keys, stale
from monitor.ports import Spawn

log = logging.getLogger("hagw.peers.queue")

#: Entries per enqueue script call, and the request bytes one call carries at most.
CHUNK_ENTRIES = 256
CHUNK_BYTES = 4 * 1024 * 1024
#: Entries moved from the spool per round trip.
FORWARD_BATCH = 256
#: Entries read per round trip by pending_index and purge.
PAGE = 1000

#: KEYS: stream, seq counter, line, created. ARGV: entry key prefix, capacity, origin,
#: the ticket the previous chunk of this batch ended with ('' for none), then 9 per entry
#: (ticket, created, method, target, headers JSON, body, idempotency key, request id, owner
#: or ''). Returns 3 per entry: outcome (1 added, 0 already there, -1 full), seq, line
#: length.
ENQUEUE = """
local out = {}
local full = ARGV[4] ~= '' and redis.call('EXISTS', ARGV[1] .. ARGV[4]) == 0
local capacity = tonumber(ARGV[2])
for i = 5, #ARGV, 9 do
  local ekey = ARGV[1] .. ARGV[i]
  local seq = redis.call('HGET', ekey, 'seq')
  if seq then
    out[#out + 1] = 0
    out[#out + 1] = tonumber(seq)
  elseif full or redis.call('ZCARD', KEYS[3]) >= capacity then
    full = true
    out[#out + 1] = -1
    out[#out + 1] = 0
  else
    seq = redis.call('INCR', KEYS[2])
    local id = redis.call('XADD', KEYS[1], '*', 'ticket', ARGV[i], 'seq', seq,
      'headers', ARGV[i + 4], 'body', ARGV[i + 5], 'idem', ARGV[i + 6])
    redis.call('HSET', ekey, 'seq', seq, 'id', id, 'status', 'queued', 'created', ARGV[i + 1],
      'method', ARGV[i + 2], 'target', ARGV[i + 3], 'origin', ARGV[3], 'attempts', 0,
      'request_id', ARGV[i + 7])
    if ARGV[i + 8] ~= '' then redis.call('HSET', ekey, 'owner', ARGV[i + 8]) end
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
    redis.call('ZADD', KEYS[4], ARGV[i + 1], ARGV[i])
    out[#out + 1] = 1
    out[#out + 1] = seq
  end
  out[#out + 1] = redis.call('ZCARD', KEYS[3])
end
return out
"""

#: KEYS: line, stream, replaying. ARGV: entry key prefix, limit. Returns
#: {{ticket, status hash, stream fields}, ...} of queued (not replaying) entries in seq
#: order.
FETCH = """
local out = {}
local limit = tonumber(ARGV[2])
local start = 0
while #out < limit do
  local tickets = redis.call('ZRANGE', KEYS[1], start, start + 255)
  if #tickets == 0 then break end
  for _, t in ipairs(tickets) do
    if redis.call('SISMEMBER', KEYS[3], t) == 0 then
      local ekey = ARGV[1] .. t
      local id = redis.call('HGET', ekey, 'id')
      local record = id and redis.call('XRANGE', KEYS[2], id, id)[1]
      out[#out + 1] = {t, redis.call('HGETALL', ekey), record and record[2] or {}}
      if #out >= limit then break end
    end
  end
  start = start + 256
end
return out
"""

#: KEYS: lease, epoch, replaying. ARGV: token, epoch, entry key prefix, then
#: (ticket, attempts, node or '') per entry. Returns how many were marked.
MARK = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
local n = 0
for i = 4, #ARGV, 3 do
  local ekey = ARGV[3] .. ARGV[i]
  local status = redis.call('HGET', ekey, 'status')
  if status == 'queued' or status == 'replaying' then
    redis.call('HSET', ekey, 'status', 'replaying', 'attempts', ARGV[i + 1])
    if ARGV[i + 2] == '' then redis.call('HDEL', ekey, 'node')
    else redis.call('HSET', ekey, 'node', ARGV[i + 2]) end
    redis.call('SADD', KEYS[3], ARGV[i])
    n = n + 1
  end
end
return n
"""

#: KEYS: lease, epoch. ARGV: token, epoch, entry key, node.
SENT_TO = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
if redis.call('EXISTS', ARGV[3]) == 1 then redis.call('HSET', ARGV[3], 'node', ARGV[4]) end
return 1
"""

#: KEYS: lease, epoch, stream, line, created, replaying, finished, counts.
#: ARGV: token, epoch, entry key prefix, then 8 per entry: ticket, status, result status,
#: result headers JSON, '1' if there is a result body, the body, error, finished ('' for
#: none). Drops the stream record (headers, body). Returns the line's length.
FINISH = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
for i = 4, #ARGV, 8 do
  local t = ARGV[i]
  local ekey = ARGV[3] .. t
  local old = redis.call('HGET', ekey, 'status')
  if old then
    local id = redis.call('HGET', ekey, 'id')
    if id then redis.call('XDEL', KEYS[3], id) end
    redis.call('ZREM', KEYS[4], t)
    redis.call('ZREM', KEYS[5], t)
    redis.call('SREM', KEYS[6], t)
    redis.call('ZADD', KEYS[7], ARGV[i + 7], t)
    if old == 'done' or old == 'failed' then redis.call('HINCRBY', KEYS[8], old, -1) end
    redis.call('HINCRBY', KEYS[8], ARGV[i + 1], 1)
    redis.call('HSET', ekey, 'status', ARGV[i + 1], 'finished', ARGV[i + 7])
    local fields = {'result_status', 'result_headers', 'result_body', 'error'}
    local values = {ARGV[i + 2], ARGV[i + 3], ARGV[i + 5], ARGV[i + 6]}
    for f = 1, 4 do
      local present = values[f] ~= ''
      if f == 3 then present = ARGV[i + 4] == '1' end
      if present then redis.call('HSET', ekey, fields[f], values[f])
      else redis.call('HDEL', ekey, fields[f]) end
    end
  end
end
return redis.call('ZCARD', KEYS[4])
"""

#: KEYS: lease, epoch, replaying. ARGV: token, epoch, entry key, ticket, at, error.
RETRY = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
local status = redis.call('HGET', ARGV[3], 'status')
if status == 'queued' or status == 'replaying' then
  redis.call('HSET', ARGV[3], 'status', 'queued', 'next_attempt', ARGV[5], 'error', ARGV[6])
  redis.call('SREM', KEYS[3], ARGV[4])
  return 1
end
return 0
"""

#: KEYS: lease, epoch, replaying. ARGV: token, epoch, entry key prefix. Puts every
#: entry being replayed back in line; returns how many.
RECOVER = CHECK + """
local refusal = fence_refusal(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if refusal then return refusal end
local n = 0
for _, t in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local ekey = ARGV[3] .. t
  if redis.call('HGET', ekey, 'status') == 'replaying' then
    redis.call('HSET', ekey, 'status', 'queued')
    n = n + 1
  end
end
redis.call('DEL', KEYS[3])
return n
"""

#: KEYS: finished, counts. ARGV: entry key prefix, before, limit. Returns how many
#: finished entries older than ``before`` were forgotten.
PURGE = """
local tickets = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, t in ipairs(tickets) do
  local status = redis.call('HGET', ARGV[1] .. t, 'status')
  if status == 'done' or status == 'failed' then redis.call('HINCRBY', KEYS[2], status, -1) end
  redis.call('DEL', ARGV[1] .. t)
  redis.call('ZREM', KEYS[1], t)
end
return #tickets
"""

#: KEYS: line, created. ARGV: first, last rank. Returns {seq, created, ...}.
PENDING = """
local out = {}
local page = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
for i = 1, #page, 2 do
  out[#out + 1] = page[i + 1]
  out[#out + 1] = redis.call('ZSCORE', KEYS[2], page[i]) or '0'
end
return out
"""


class NotReplicated(NotDurable):
    """Fewer replicas than ``peers.write_replicas`` acknowledged a write within
    ``peers.wait_timeout``: it was withdrawn, and must not be answered 202."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _headers(raw: Any) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in json.loads(raw)] if raw else []


def _to_entry(ticket: str, status: dict[str, Any], request: dict[str, Any]) -> Entry:
    def num(name: str, default: float = 0.0) -> float:
        raw = status.get(name)
        return float(raw) if raw not in (None, b"") else default

    result_status = status.get("result_status")
    result_headers = status.get("result_headers")
    finished = status.get("finished")
    node = status.get("node")
    error = status.get("error")
    owner = status.get("owner")
    return Entry(
        ticket=ticket, created=num("created"), method=_text(status.get("method", b"")),
        target=_text(status.get("target", b"")), headers=_headers(request.get("headers")),
        body=bytes(request.get("body", b"")), idempotency_key=_text(request.get("idem", b"")),
        seq=int(status.get("seq", 0)), status=_text(status.get("status", QUEUED)),
        attempts=int(status.get("attempts", 0)), next_attempt=num("next_attempt"),
        result_status=None if result_status is None else int(result_status),
        result_headers=None if result_headers is None else _headers(result_headers),
        result_body=None if status.get("result_body") is None else bytes(status["result_body"]),
        error=None if error is None else _text(error),
        finished=None if finished is None else float(finished),
        node=None if node is None else _text(node),
        request_id=_text(status.get("request_id", b"")),
        owner=None if owner is None else _text(owner))


def _chunks(entries: Sequence[Entry]) -> list[list[Entry]]:
    chunks: list[list[Entry]] = []
    size = 0
    for entry in entries:
        weight = len(entry.body) + len(entry.target) + sum(len(k) + len(v)
                                                           for k, v in entry.headers)
        if not chunks or len(chunks[-1]) >= CHUNK_ENTRIES or size + weight > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += weight
    return chunks


class RedisQueue:
    """``QueueStore`` on a Redis stream: one queue for the whole fleet."""

    def __init__(self, link: PeerLink, capacity: int, *,
                 fence: Callable[[], Fence] | None = None) -> None:
        self.link = link
        self.keys = link.keys
        self.capacity = capacity
        #: The leader's token for replay writes (None: replay writes are not fenced).
        self.fence = fence
        redis = link.redis
        self._enqueue_sha = redis.register_script(ENQUEUE).sha
        self._fetch = redis.register_script(FETCH)
        self._mark = redis.register_script(MARK)
        self._sent_to = redis.register_script(SENT_TO)
        self._finish = redis.register_script(FINISH)
        self._retry = redis.register_script(RETRY)
        self._recover = redis.register_script(RECOVER)
        self._purge = redis.register_script(PURGE)
        self._pending = redis.register_script(PENDING)
        self._depth = 0
        #: What the server said of its persistence at ``open()``.
        self.durability = "unknown"

    def __repr__(self) -> str:
        return f"<RedisQueue {self.keys.queue} depth={self._depth} {self.durability}>"

    def _k(self, part: str) -> str:
        return self.keys.queue_part(part)

    def _fence_args(self) -> list[EncodableT]:
        return fence_args(self.fence() if self.fence is not None else None)

    async def _fenced(self, script: Any, what: str, keys: list[str],
                      args: list[EncodableT]) -> Any:
        try:
            async with self.link.io(what) as redis:
                return await script(keys=[*fence_keys(self.keys), *keys],
                                    args=[*self._fence_args(), *args], client=redis)
        except ResponseError as exc:
            refused = stale(exc)
            if refused is not None:
                raise refused from None
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Check the server's persistence (a warning, not a refusal) and read the depth."""
        async with self.link.io("opening the write queue") as redis:
            try:
                settings = {_text(k): _text(v) for name in ("appendonly", "appendfsync")
                            for k, v in (await redis.config_get(name)).items()}
            except ResponseError:  # CONFIG renamed or disabled (managed Redis)
                self.durability = "persistence not visible (CONFIG is disabled)"
            else:
                self.durability = (f"aof {settings.get('appendfsync', '?')}"
                                   if settings.get("appendonly") == "yes" else "no aof")
        if self.durability not in ("aof always", "persistence not visible (CONFIG is "
                                                 "disabled)"):
            log.warning("the shared write queue's Redis runs with %s: a write answered 202 "
                        "can be lost if Redis crashes (set appendonly yes, appendfsync "
                        "always, or peers.write_replicas)", self.durability)
        await self.stats()

    async def close(self) -> None:
        """The link is the caller's; nothing else to release."""

    # -- writes ------------------------------------------------------------------------------

    async def enqueue(self, entry: Entry) -> Entry:
        """Returns once Redis holds the entry (and ``write_replicas`` replicas have it)."""
        result = (await self.enqueue_many([entry]))[0]
        if isinstance(result, QueueFull):
            raise result
        return result

    async def enqueue_many(self, entries: Sequence[Entry]) -> list[Entry | QueueFull]:
        """Add entries in their order, in one round trip; each is the Entry (with its seq
        and position) or QueueFull. Once one is full, the rest are too (order holds)."""
        if not entries:
            return []
        config = self.link.config
        chunks = _chunks(entries)
        async with self.link.io("queueing a write") as redis:
            replies = await self._send(redis, chunks)
            if isinstance(replies[0], NoScriptError):  # Redis restarted: load it again
                await redis.script_load(ENQUEUE)
                replies = await self._send(redis, chunks)
        results: list[Entry | QueueFull] = []
        added: list[Entry] = []
        for chunk, reply in zip(chunks, replies, strict=False):
            if isinstance(reply, Exception):
                raise RuntimeError(f"the queue's enqueue script failed: {reply}")
            for i, entry in enumerate(chunk):
                outcome, seq, depth = (int(x) for x in reply[3 * i:3 * i + 3])
                self._depth = depth
                if outcome < 0:
                    results.append(QueueFull(f"the shared write queue holds {depth} entries "
                                             f"(capacity {self.capacity})"))
                    continue
                entry.seq, entry.position, entry.status = seq, depth, QUEUED
                if outcome == 1:
                    added.append(entry)
                results.append(entry)
        if config.write_replicas:
            acked = int(replies[-1]) if not isinstance(replies[-1], Exception) else 0
            if acked < config.write_replicas:
                await self._withdraw(added, acked)
                raise NotReplicated(f"{acked} of {config.write_replicas} replicas "
                                    f"acknowledged the write within {config.wait_timeout:g}s; "
                                    "it was not accepted")
        return results

    async def _send(self, redis: Redis, chunks: list[list[Entry]]) -> list[Any]:
        config, keys = self.link.config, self.keys
        pipe = redis.pipeline(transaction=False)
        after = ""
        for chunk in chunks:
            args: list[EncodableT] = [keys.entry_prefix, self.capacity, config.name, after]
            for e in chunk:
                args += [e.ticket, repr(e.created), e.method, e.target,
                         json.dumps(e.headers), e.body, e.idempotency_key, e.request_id,
                         e.owner or ""]
            pipe.evalsha(self._enqueue_sha, 4, keys.queue, self._k("seq"), self._k("line"),
                         self._k("created"), *args)
            after = chunk[-1].ticket
        if config.write_replicas:
            pipe.wait(config.write_replicas, max(1, round(config.wait_timeout * 1000)))
        return await pipe.execute(raise_on_error=False)

    async def _withdraw(self, entries: list[Entry], acked: int) -> None:
        """Entries the client will be told were not accepted are not replayed either (if a
        failover loses even this, they may still be: that is what replicas are for)."""
        now = time.time()
        for entry in entries:
            entry.status, entry.finished = FAILED, now
            entry.error = f"withdrawn: {acked} of {self.link.config.write_replicas} replicas " \
                          "acknowledged it; the client was not answered 202"
        with contextlib.suppress(PeersUnavailable):
            await self._finish_unfenced(entries)

    # -- replay side ---------------------------------------------------------------------------

    async def next_batch(self, limit: int, now: float) -> list[Entry]:
        """The first ``limit`` waiting entries (not being replayed), in seq order. Like
        ``SqliteQueue``, ``now`` does not hold back entries (replay times its retries)."""
        async with self.link.io("reading the write queue") as redis:
            rows = await self._fetch(keys=[self._k("line"), self.keys.queue,
                                           self._k("replaying")],
                                     args=[self.keys.entry_prefix, limit], client=redis)
        return [_to_entry(_text(ticket), _pairs(status), _pairs(request))
                for ticket, status, request in rows]

    async def mark_replaying(self, entry: Entry, node: str | None = None) -> None:
        entry.node = node or entry.node
        await self.mark_replaying_many([entry])

    async def mark_replaying_many(self, entries: list[Entry]) -> None:
        """Recorded before anything is sent; after a crash these are re-sent (same key)."""
        if not entries:
            return
        args: list[EncodableT] = [self.keys.entry_prefix]
        for entry in entries:
            entry.status = REPLAYING
            entry.attempts += 1
            args += [entry.ticket, entry.attempts, entry.node or ""]
        await self._fenced(self._mark, "marking writes as being replayed",
                           [self._k("replaying")], args)

    async def sent_to(self, entry: Entry, node: str) -> None:
        entry.node = node
        await self._fenced(self._sent_to, "recording where a write went", [],
                           [self.keys.entry(entry.ticket), node])

    async def finish_many(self, entries: list[Entry]) -> None:
        """Record outcomes (done or failed); the requests' headers and bodies are dropped."""
        if entries:
            self._depth = int(await self._fenced(
                self._finish, "recording replay results", self._finish_keys(),
                self._finish_args(entries)))

    async def finish(self, entry: Entry) -> None:
        entry.finished = time.time()
        await self.finish_many([entry])

    async def _finish_unfenced(self, entries: list[Entry]) -> None:
        if not entries:
            return
        async with self.link.io("withdrawing writes") as redis:
            self._depth = int(await self._finish(
                keys=[*fence_keys(self.keys), *self._finish_keys()],
                args=[*fence_args(None), *self._finish_args(entries)], client=redis))

    def _finish_keys(self) -> list[str]:
        return [self.keys.queue, self._k("line"), self._k("created"), self._k("replaying"),
                self._k("finished"), self._k("counts")]

    def _finish_args(self, entries: list[Entry]) -> list[EncodableT]:
        args: list[EncodableT] = [self.keys.entry_prefix]
        for e in entries:
            args += [e.ticket, e.status, "" if e.result_status is None else e.result_status,
                     "" if e.result_headers is None
                     else json.dumps(stored_result_headers(e.result_headers)),
                     "0" if e.result_body is None else "1", e.result_body or b"",
                     e.error or "", repr(e.finished or time.time())]
        return args

    async def retry_later(self, entry: Entry, at: float, error: str) -> None:
        entry.status, entry.next_attempt, entry.error = QUEUED, at, error
        await self._fenced(self._retry, "putting a write back in line", [self._k("replaying")],
                           [self.keys.entry(entry.ticket), entry.ticket, repr(at), error])

    async def recover(self) -> int:
        """After a crash (or a new leader): entries being replayed go back in line."""
        return int(await self._fenced(self._recover, "recovering the write queue",
                                      [self._k("replaying")], [self.keys.entry_prefix]))

    # -- reads -----------------------------------------------------------------------------

    async def pending_index(self) -> list[tuple[int, float]]:
        """(seq, created) of every entry not yet replayed, in arrival order."""
        out: list[tuple[int, float]] = []
        start = 0
        while True:
            async with self.link.io("reading the write queue") as redis:
                flat = await self._pending(keys=[self._k("line"), self._k("created")],
                                           args=[start, start + PAGE - 1], client=redis)
            out += [(int(float(flat[i])), float(flat[i + 1])) for i in range(0, len(flat), 2)]
            if len(flat) < 2 * PAGE:
                return out
            start += PAGE

    async def get(self, ticket: str) -> Entry | None:
        async with self.link.io("reading a queued write") as redis:
            raw = await redis.hgetall(self.keys.entry(ticket))
            if not raw:
                return None
            status = {_text(k): v for k, v in raw.items()}
            request: dict[str, Any] = {}
            if _text(status.get("status", b"")) in (QUEUED, REPLAYING) and "id" in status:
                found = await redis.xrange(self.keys.queue, status["id"], status["id"])
                fields = found[0][1] if found else None
                if fields:
                    request = {_text(k): v for k, v in fields.items()}
        return _to_entry(ticket, status, request)

    async def position(self, entry: Entry) -> int:
        """1 for the next entry to replay."""
        async with self.link.io("reading the write queue") as redis:
            ahead = await redis.zcount(self._k("line"), "-inf", f"({entry.seq}")
        return int(ahead) + 1

    async def stats(self) -> QueueStats:
        async with self.link.io("reading the write queue") as redis:
            pipe = redis.pipeline(transaction=True)
            pipe.zcard(self._k("line"))
            pipe.scard(self._k("replaying"))
            pipe.hmget(self._k("counts"), [DONE, FAILED])
            pipe.zrange(self._k("created"), 0, 0, withscores=True)
            line, replaying, (done, failed), oldest = await pipe.execute()
        self._depth = int(line)
        return QueueStats(int(line) - int(replaying), int(replaying), int(done or 0),
                          int(failed or 0), float(oldest[0][1]) if oldest else None)

    @property
    def depth(self) -> int:
        """Entries of the whole fleet not yet replayed, as of this instance's last queue
        call (each enqueue, finish and stats() refreshes it)."""
        return self._depth

    async def purge(self, before: float) -> int:
        """Forget finished entries whose results are older than ``before``."""
        total = 0
        while True:
            async with self.link.io("purging the write queue") as redis:
                n = int(await self._purge(keys=[self._k("finished"), self._k("counts")],
                                          args=[self.keys.entry_prefix, repr(before), PAGE],
                                          client=redis))
            total += n
            if n < PAGE:
                return total


class SpooledQueue:
    """The shared queue, with a local spool that takes writes while Redis is away (see the
    module's docstring for the order this keeps)."""

    def __init__(self, shared: RedisQueue, spool: SqliteQueue, *, spawn: Spawn,
                 retry_every: float = 1.0, forwards: bool = True) -> None:
        self.shared = shared
        self.spool = spool
        self.spawn = spawn
        self.retry_every = retry_every
        #: Whether this process moves the spool to Redis. Processes sharing one spool file
        #: (an instance's workers) write to it; its supervisor alone forwards it, in order.
        self.forwards = forwards
        #: Called after spooled writes reached the stream (the replay must see them).
        self.on_forwarded: Callable[[], None] | None = None
        self._pending: list[tuple[Entry, asyncio.Future[Entry]]] = []
        self._wake = asyncio.Event()
        self._forward_wake = asyncio.Event()
        self._forward_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._forwarder: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        return (f"<SpooledQueue shared={self.shared.depth} spooled={self.spool.depth}"
                f"{'' if self.forwards else ' (forwarded by the supervisor)'}>")

    @property
    def spooled(self) -> int:
        """Entries waiting in the local spool for Redis."""
        return self.spool.depth

    @property
    def capacity(self) -> int:
        return self.shared.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self.shared.capacity = self.spool.capacity = value

    @property
    def limits(self) -> QueueLimits:
        """The spool's disk limits (the shared queue has only its capacity)."""
        return self.spool.limits

    @limits.setter
    def limits(self, value: QueueLimits) -> None:
        self.spool.limits = value

    def enqueued_elsewhere(self, count: int = 1) -> None:
        """A worker queued a write: the shared depth is Redis's, read on the next call."""

    async def open(self) -> None:
        await self.spool.open()
        if self.forwards:
            # The spool is never replayed here: what a gateway without peers was replaying
            # when it stopped goes to the stream too, with the rest.
            await self.spool.recover()
        try:
            await self.shared.open()
        except PeersUnavailable as exc:
            log.warning("the shared write queue is unreachable (%s); writes are spooled "
                        "locally until it answers", exc)
        self._unlisten = self.shared.link.on_change(
            lambda connected: self._forward_wake.set() if connected else None)
        self._writer = self.spawn(self._write_loop(), name="queue writer (shared)")
        self._forwarder = self.spawn(self._forward_loop(), name="queue spool forwarder")
        if self.spool.depth:
            self._forward_wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._forwarder is not None:
            self._forwarder.cancel()
            await asyncio.gather(self._forwarder, return_exceptions=True)
        if self._unlisten is not None:
            self._unlisten()
        await self.shared.close()
        await self.spool.close()

    # -- writes ----------------------------------------------------------------------------

    async def enqueue(self, entry: Entry) -> Entry:
        """Returns once the entry is in Redis or in the local spool, both durable."""
        if self._closing or self._writer is None:
            raise RuntimeError("the queue is closed")
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        self._wake.set()
        return await asyncio.shield(future)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write(batch)
            if self._closing and not self._pending:
                return

    async def _write(self, batch: list[tuple[Entry, asyncio.Future[Entry]]]) -> None:
        entries = [e for e, _ in batch]
        # Anything spooled goes first (counted on disk: the instance's other processes
        # spool to the same file), so then this waits behind it; so does everything while
        # Redis is known to be away (no wait for a timeout on every write).
        if self.shared.link.connected and await self.spool.waiting() == 0:
            try:
                results = await self.shared.enqueue_many(entries)
            except PeersUnavailable as exc:
                log.warning("the shared write queue did not answer (%s); spooling %d "
                            "write(s) locally", exc, len(entries))
            except Exception as exc:  # NotReplicated, a bug: the writers get it, no 202
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                return
        # SqliteQueue takes these in call order and group-commits them; gather calls in order.
        spooled = await asyncio.gather(*(self.spool.enqueue(e) for e in entries),
                                       return_exceptions=True)
        for (_, future), outcome in zip(batch, spooled, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                outcome.position += self.shared.depth
                future.set_result(outcome)
        self._forward_wake.set()

    # -- forwarding ------------------------------------------------------------------------

    async def forward(self) -> int:
        """Move spooled entries to the shared queue, oldest first, and forget them here.
        Returns how many moved; raises PeersUnavailable or QueueFull when it must stop."""
        moved = 0
        async with self._forward_lock:
            while True:
                batch = await self.spool.next_batch(FORWARD_BATCH, time.time())
                if not batch:
                    return moved
                results = await self.shared.enqueue_many(batch)
                landed = [e for e, r in zip(batch, results, strict=True)
                          if not isinstance(r, QueueFull)]
                await self.spool.forget(landed)
                moved += len(landed)
                if len(landed) < len(batch):
                    raise QueueFull(f"the shared write queue is full; {self.spool.depth} "
                                    "spooled write(s) wait")

    async def _forward_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_every):
                    await self._forward_wake.wait()
            self._forward_wake.clear()
            if not self.shared.link.connected and not await self.shared.link.ping():
                continue  # Redis is still away: the spool waits
            if not self.forwards or not await self.spool.waiting():
                continue
            try:
                moved = await self.forward()
            except (PeersUnavailable, QueueFull) as exc:
                log.debug("spool forwarding paused: %s", exc)
            except Exception:
                log.exception("spool forwarding failed; trying again")
            else:
                if moved:
                    log.info("forwarded %d spooled write(s) to the shared queue", moved)
                    if self.on_forwarded is not None:
                        self.on_forwarded()

    # -- the rest of QueueStore: the shared queue's, with the spool for its own tickets ----

    async def get(self, ticket: str) -> Entry | None:
        local = await self.spool.get(ticket)
        if local is not None:
            return local
        try:
            return await self.shared.get(ticket)
        except PeersUnavailable as exc:
            raise QueueUnavailable(f"the shared write queue is not reachable ({exc})") from None

    async def position(self, entry: Entry) -> int:
        local = await self.spool.get(entry.ticket)
        if local is not None:
            return self.shared.depth + await self.spool.position(local)
        try:
            return await self.shared.position(entry)
        except PeersUnavailable as exc:
            raise QueueUnavailable(f"the shared write queue is not reachable ({exc})") from None

    @property
    def depth(self) -> int:
        return self.shared.depth + self.spool.depth

    async def stats(self) -> QueueStats:
        spool = await self.spool.stats()
        try:
            shared = await self.shared.stats()
        except PeersUnavailable:  # Redis away: its last known depth, as waiting
            shared = QueueStats(self.shared.depth, 0, 0, 0, None)
        oldest = [t for t in (shared.oldest_created, spool.oldest_created) if t is not None]
        return QueueStats(shared.queued + spool.queued, shared.replaying, shared.done,
                          shared.failed, min(oldest) if oldest else None)

    async def next_batch(self, limit: int, now: float) -> list[Entry]:
        return await self.shared.next_batch(limit, now)

    async def mark_replaying(self, entry: Entry, node: str | None = None) -> None:
        await self.shared.mark_replaying(entry, node)

    async def mark_replaying_many(self, entries: list[Entry]) -> None:
        await self.shared.mark_replaying_many(entries)

    async def sent_to(self, entry: Entry, node: str) -> None:
        await self.shared.sent_to(entry, node)

    async def finish_many(self, entries: list[Entry]) -> None:
        await self.shared.finish_many(entries)

    async def finish(self, entry: Entry) -> None:
        await self.shared.finish(entry)

    async def retry_later(self, entry: Entry, at: float, error: str) -> None:
        await self.shared.retry_later(entry, at, error)

    async def recover(self) -> int:
        return await self.shared.recover()

    async def pending_index(self) -> list[tuple[int, float]]:
        """The fleet's (the spool's while Redis is away)."""
        try:
            return await self.shared.pending_index()
        except PeersUnavailable:
            return await self.spool.pending_index()

    async def purge(self, before: float) -> int:
        """Forget old results (none while Redis is away: the next purge does)."""
        try:
            return await self.shared.purge(before)
        except PeersUnavailable:
            return 0

