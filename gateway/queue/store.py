"""The durable write queue: accepted writes, in arrival order, on disk before any 202.

``QueueStore`` is the small interface replay and the traffic listener use; a
shared store for several gateways can implement it later. ``SqliteQueue`` is
the embedded default: SQLite in WAL mode with synchronous=FULL under
``state_dir``. Concurrent enqueues are group-committed: one transaction and one
fsync for everything that arrived meanwhile, and each writer's future resolves
only after that commit, so a 202 is never sent for a write that is not on disk.

What the disk may hold (``QueueLimits``: bytes in total, bytes per client, free disk
left) is checked inside that same transaction against a ``usage`` table the commits
keep, so the caps are exact however many worker processes share the file. A request's
headers and body are kept only while it waits: once it is done or failed they are
removed, and only its result stays, for ``result_ttl``, without ``Set-Cookie``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from gateway.headers import RESPONSE_HIDDEN
from gateway.store import SqliteFile, open_sqlite

QUEUED, REPLAYING, DONE, FAILED = "queued", "replaying", "done", "failed"

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    result_status INTEGER,
    result_headers TEXT,
    result_body BLOB,
    error TEXT,
    finished REAL,
    node TEXT,
    request_id TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_status ON entries(status, seq);
CREATE TABLE IF NOT EXISTS usage (
    client TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
);
"""
#: Columns added since the first queue files, with how to add them to an old one.
_ADDED = {"node": "node TEXT", "request_id": "request_id TEXT NOT NULL DEFAULT ''",
          "client": "client TEXT NOT NULL DEFAULT ''", "size": "size INTEGER NOT NULL DEFAULT 0",
          "owner": "owner TEXT"}
#: The usage row that sums every client's.
TOTAL = "*"
#: Never stored with a result: a cookie the node set is its client's, not the ticket's.
RESULT_DROP = RESPONSE_HIDDEN | {b"set-cookie", b"set-cookie2"}


def stored_result_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A node's answer headers as a stored result keeps them."""
    return [(k, v) for k, v in headers if k.lower().encode("latin-1") not in RESULT_DROP]


@dataclass(slots=True)
class Entry:
    """One accepted write. ``seq`` is its place in arrival order."""

    ticket: str
    created: float
    method: str
    #: Path and query, as the client sent them.
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    idempotency_key: str
    seq: int = 0
    status: str = QUEUED
    attempts: int = 0
    next_attempt: float = 0.0
    result_status: int | None = None
    result_headers: list[tuple[str, str]] | None = None
    result_body: bytes | None = None
    error: str | None = None
    finished: float | None = None
    #: The node it was last sent to (a re-send after a crash goes there first).
    node: str | None = None
    #: The X-Request-Id of the request that queued it (sent to the node, and in logs: the
    #: ticket is a credential and appears nowhere but in its client's answer).
    request_id: str = ""
    #: The client's address (its usage counts against max_client_queued_bytes)...
    client: str = ""
    #: ...and the bytes it holds on disk while it waits (body, headers, target).
    size: int = 0
    #: A digest of the credentials it was sent with, if any: only a ticket request with
    #: the same ones sees the result (gateway.maintenance.tickets).
    owner: str | None = None
    #: Place in line when it was accepted (1 = next); not stored.
    position: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    replaying: int
    done: int
    failed: int
    oldest_created: float | None
    #: Bytes the waiting entries hold on disk.
    bytes: int = 0

    @property
    def depth(self) -> int:
        return self.queued + self.replaying


class QueueFull(Exception):
    """Nothing was accepted: the queue, or the disk under it, is full (a 503)."""


class ClientOverQuota(QueueFull):
    """This client holds max_client_queued_bytes already (a 429); others may queue."""


class QueueUnavailable(Exception):
    """The queue cannot be read right now (a shared queue's Redis is away): a 503."""


class NotDurable(QueueFull):
    """Nothing was accepted: the write could not be made as durable as configured (a
    shared queue's replicas did not acknowledge it); a 503, like a full queue."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """What the queue may hold on disk (0: no limit)."""

    #: Bytes of every waiting entry together...
    max_bytes: int = 0
    #: ...and of one client's.
    max_client_bytes: int = 0
    #: Refuse writes that would leave less free space than this on the state_dir's disk.
    min_free_disk: int = 0


class QueueStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def enqueue(self, entry: Entry) -> Entry: ...
    async def next_batch(self, limit: int, now: float) -> list[Entry]: ...
    async def mark_replaying(self, entry: Entry, node: str | None = None) -> None: ...
    async def mark_replaying_many(self, entries: list[Entry]) -> None: ...
    async def finish_many(self, entries: list[Entry]) -> None: ...
    async def sent_to(self, entry: Entry, node: str) -> None: ...
    async def finish(self, entry: Entry) -> None: ...
    async def retry_later(self, entry: Entry, at: float, error: str) -> None: ...
    async def get(self, ticket: str) -> Entry | None: ...
    async def position(self, entry: Entry) -> int: ...
    async def stats(self) -> QueueStats: ...
    async def recover(self) -> int: ...
    async def pending_index(self) -> list[tuple[int, float]]: ...
    async def purge(self, before: float) -> int: ...

    @property
    def depth(self) -> int:
        """Entries not yet replayed."""


def _refusal(limits: QueueLimits, size: int, free: int | None, total: int,
             client: int) -> QueueFull | None:
    """Why an entry of ``size`` bytes does not fit, or None."""
    if free is not None and free - size < limits.min_free_disk:
        return QueueFull("the gateway's disk is nearly full (maintenance.min_free_disk)")
    if limits.max_bytes and total + size > limits.max_bytes:
        return QueueFull(f"the maintenance queue holds its limit of {limits.max_bytes} bytes "
                         "(maintenance.max_queued_bytes)")
    if limits.max_client_bytes and client + size > limits.max_client_bytes:
        return ClientOverQuota(f"this client's queued writes hold its limit of "
                               f"{limits.max_client_bytes} bytes "
                               "(maintenance.max_client_queued_bytes)")
    return None


_COLUMNS = ("seq, ticket, created, method, target, headers, body, idempotency_key, status, "
            "attempts, next_attempt, result_status, result_headers, result_body, error, finished, "
            "node, request_id, client, size, owner")


def _row(row: Sequence[Any]) -> Entry:
    """An entry from a row of ``_COLUMNS``, read by position (cheaper than by name)."""
    (seq, ticket, created, method, target, headers, body, idempotency_key, status, attempts,
     next_attempt, result_status, result_headers, result_body, error, finished, node,
     request_id, client, size, owner) = row
    return Entry(
        ticket=ticket, created=created, method=method, target=target,
        headers=[(k, v) for k, v in json.loads(headers)], body=bytes(body),
        idempotency_key=idempotency_key, seq=seq, status=status, attempts=attempts,
        next_attempt=next_attempt, result_status=result_status,
        result_headers=None if result_headers is None else [
            (k, v) for k, v in json.loads(result_headers)],
        result_body=None if result_body is None else bytes(result_body),
        error=error, finished=finished, node=node, request_id=request_id, client=client,
        size=size, owner=owner)


class SqliteQueue(SqliteFile):
    def __init__(self, state_dir: str | Path, capacity: int, name: str = "queue.db", *,
                 limits: QueueLimits = QueueLimits()) -> None:
        super().__init__(Path(state_dir) / name, "hagw-queue", "queue")
        self.capacity = capacity
        #: Read by the writer thread at each batch: a reload may replace it.
        self.limits = limits
        self._pending: list[tuple[Entry, asyncio.Future[Entry]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._depth = 0
        self._closing = False

    def __repr__(self) -> str:
        return f"<SqliteQueue {self.path} depth={self._depth} {self.limits}>"

    async def open(self) -> None:
        self._db = await self.run(lambda: open_sqlite(self.path, SCHEMA))
        self._db.row_factory = sqlite3.Row
        # Accepting a write is fsynced (synchronous=FULL, see _insert). Later status changes
        # (replaying, done) are not: WAL with synchronous=NORMAL keeps them through a
        # process crash, and a power loss can at worst roll back the last few, whose
        # writes are then re-sent with their Idempotency-Key. That keeps replay off fsync.
        await self.run(lambda: self.db.execute("PRAGMA synchronous=NORMAL"))
        # What is deleted or overwritten (a finished entry's headers and body) is zeroed on
        # its page, not left in free space; ``_scrub`` empties the WAL of old page images.
        await self.run(lambda: self.db.execute("PRAGMA secure_delete=ON"))
        columns = await self.run(lambda: [r[1] for r in self.db.execute(
            "PRAGMA table_info(entries)").fetchall()])
        for column, definition in _ADDED.items():  # a queue file written by an older hagw
            if column not in columns:
                await self._execute(f"ALTER TABLE entries ADD COLUMN {definition}", ())
        await self.run(self._recount)
        stats = await self.stats()
        self._depth = stats.depth
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="hagw queue writer")

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None and self._wake is not None:
            self._wake.set()
            await self._writer
        await super().close()

    # -- writes: group commit -----------------------------------------------------------

    async def enqueue(self, entry: Entry) -> Entry:
        """Returns once the entry is committed to disk (with its ``seq``)."""
        if self._closing or self._wake is None:
            raise RuntimeError("the queue is closed")
        if self._depth + len(self._pending) >= self.capacity:
            raise QueueFull(f"the maintenance queue holds {self._depth} entries "
                            f"(capacity {self.capacity})")
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        self._wake.set()
        return await asyncio.shield(future)

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    seqs = await self.run(partial(self._insert, [e for e, _ in batch]))
                except Exception as exc:  # the writers get the error, not a false 202
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (entry, future), seq in zip(batch, seqs, strict=True):
                        if isinstance(seq, QueueFull):
                            if not future.done():
                                future.set_exception(seq)
                            continue
                        self._depth += 1
                        entry.seq, entry.position = seq, self._depth
                        if not future.done():
                            future.set_result(entry)
            if self._closing and not self._pending:
                return

    def _insert(self, entries: list[Entry]) -> list[int | QueueFull]:
        db = self.db
        limits = self.limits
        free = (shutil.disk_usage(self.path.parent).free if limits.min_free_disk
                else None)
        db.execute("PRAGMA synchronous=FULL")  # a 202 promises the write is on disk
        try:
            seqs = self._insert_batch(db, entries, limits, free)
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return seqs

    @staticmethod
    def _insert_batch(db: sqlite3.Connection, entries: list[Entry], limits: QueueLimits,
                      free: int | None) -> list[int | QueueFull]:
        """Commit what fits; each entry that does not gets why (nothing of it is stored)."""
        out: list[int | QueueFull] = []
        usage: dict[str, int] = {}

        def used(client: str) -> int:
            if client not in usage:
                row = db.execute("SELECT bytes FROM usage WHERE client = ?",
                                 (client,)).fetchone()
                usage[client] = int(row[0]) if row else 0
            return usage[client]

        with db:
            db.execute("BEGIN IMMEDIATE")
            for e in entries:
                headers = json.dumps(e.headers)
                e.size = size = len(e.body) + len(headers) + len(e.target)
                refused = _refusal(limits, size, free, used(TOTAL), used(e.client))
                if refused is not None:
                    out.append(refused)
                    continue
                cursor = db.execute(
                    "INSERT INTO entries (ticket, created, method, target, headers, body, "
                    "idempotency_key, status, request_id, client, size, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.ticket, e.created, e.method, e.target, headers, e.body,
                     e.idempotency_key, QUEUED, e.request_id, e.client, size, e.owner))
                assert cursor.lastrowid is not None
                out.append(cursor.lastrowid)
                usage[TOTAL] += size
                usage[e.client] += size
                if free is not None:
                    free -= size
            db.executemany("INSERT INTO usage (client, bytes) VALUES (?, ?) ON CONFLICT(client) "
                           "DO UPDATE SET bytes = excluded.bytes", list(usage.items()))
        return out

    def _recount(self) -> None:
        """The usage table from the entries themselves (at open: it heals any drift)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM usage")
            self.db.execute(
                "INSERT INTO usage (client, bytes) SELECT client, SUM(size) FROM entries "
                "WHERE status IN (?, ?) GROUP BY client", (QUEUED, REPLAYING))
            self.db.execute(
                "INSERT OR REPLACE INTO usage (client, bytes) SELECT ?, COALESCE(SUM(size), 0) "
                "FROM entries WHERE status IN (?, ?)", (TOTAL, QUEUED, REPLAYING))

    @staticmethod
    def _release(db: sqlite3.Connection, freed: dict[str, int]) -> None:
        """Entries that stopped waiting give their bytes back (inside the caller's
        transaction)."""
        total = sum(freed.values())
        if total:
            freed[TOTAL] = freed.get(TOTAL, 0) + total
        db.executemany("UPDATE usage SET bytes = MAX(0, bytes - ?) WHERE client = ?",
                       [(size, client) for client, size in freed.items()])
        db.execute("DELETE FROM usage WHERE bytes = 0 AND client != ?", (TOTAL,))

    async def _execute(self, sql: str, args: tuple[object, ...]) -> None:
        def write() -> None:
            with self.db:
                self.db.execute(sql, args)

        await self.run(write)

    # -- replay side ----------------------------------------------------------------------

    async def next_batch(self, limit: int, now: float) -> list[Entry]:
        rows = await self.run(lambda: self.db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE status = ? ORDER BY seq LIMIT ?",
            (QUEUED, limit)).fetchall())
        return [_row(r) for r in rows]

    async def mark_replaying(self, entry: Entry, node: str | None = None) -> None:
        """Committed before dispatch: after a crash, this entry is re-sent (same key), to
        ``node`` first."""
        entry.node = node or entry.node
        await self.mark_replaying_many([entry])

    async def sent_to(self, entry: Entry, node: str) -> None:
        """A retry within one attempt went to another node: re-send there after a crash."""
        entry.node = node
        await self._execute("UPDATE entries SET node = ? WHERE seq = ?", (node, entry.seq))

    async def mark_replaying_many(self, entries: list[Entry]) -> None:
        """One transaction for a batch about to be replayed (planned node included)."""
        for entry in entries:
            entry.status = REPLAYING
            entry.attempts += 1
        rows = [(REPLAYING, e.attempts, e.node, e.seq) for e in entries]

        def write() -> None:
            db = self.db
            with db:
                # One transaction (autocommit would make each row its own commit).
                db.execute("BEGIN IMMEDIATE")
                db.executemany("UPDATE entries SET status = ?, attempts = ?, node = ? "
                               "WHERE seq = ?", rows)

        await self.run(write)

    async def finish_many(self, entries: list[Entry]) -> None:
        """Record a batch's outcomes (done or failed) in one transaction. The requests'
        headers and bodies go (they held credentials and data only the node needed), and
        the results keep no Set-Cookie."""
        if not entries:
            return
        rows = [(e.status, e.result_status, None if e.result_headers is None
                 else json.dumps(stored_result_headers(e.result_headers)),
                 e.result_body, e.error, e.finished or time.time(), e.seq, QUEUED, REPLAYING)
                for e in entries]

        def write() -> int:
            db = self.db
            freed: dict[str, int] = {}
            finished = 0
            with db:
                db.execute("BEGIN IMMEDIATE")
                for row, entry in zip(rows, entries, strict=True):
                    changed = db.execute(
                        "UPDATE entries SET status = ?, result_status = ?, result_headers = ?, "
                        "result_body = ?, error = ?, finished = ?, headers = '[]', body = x'' "
                        "WHERE seq = ? AND status IN (?, ?)", row).rowcount
                    if changed:
                        finished += 1
                        freed[entry.client] = freed.get(entry.client, 0) + entry.size
                self._release(db, freed)
            return finished

        finished = await self.run(write)
        self._depth = max(0, self._depth - finished)
        if self._depth == 0:
            await self.run(self._scrub)

    def _scrub(self) -> None:
        """Move everything into the database file and empty the WAL, which still holds the
        pages as they were when the entries arrived (best effort while another process
        reads; the next scrub finishes it)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def forget(self, entries: list[Entry]) -> int:
        """Remove waiting entries that moved to another queue (a local spool forwarding
        them to a shared one). Returns how many were removed."""
        rows = [(e.ticket, QUEUED, REPLAYING) for e in entries]

        def delete() -> int:
            db = self.db
            freed: dict[str, int] = {}
            removed = 0
            with db:
                db.execute("BEGIN IMMEDIATE")
                for row in rows:
                    found = db.execute("SELECT client, size FROM entries WHERE ticket = ? AND "
                                       "status IN (?, ?)", row).fetchone()
                    if found is None:
                        continue
                    db.execute("DELETE FROM entries WHERE ticket = ?", row[:1])
                    freed[found[0]] = freed.get(found[0], 0) + int(found[1])
                    removed += 1
                self._release(db, freed)
            return removed

        removed = int(await self.run(delete)) if rows else 0
        self._depth = max(0, self._depth - removed)
        return removed

    async def finish(self, entry: Entry) -> None:
        entry.finished = time.time()
        await self.finish_many([entry])

    async def retry_later(self, entry: Entry, at: float, error: str) -> None:
        entry.status, entry.next_attempt, entry.error = QUEUED, at, error
        await self._execute("UPDATE entries SET status = ?, next_attempt = ?, error = ? "
                            "WHERE seq = ?", (QUEUED, at, error, entry.seq))

    async def recover(self) -> int:
        """After a crash: entries that were being replayed go back in line (same key)."""
        def reset() -> int:
            with self.db:
                return self.db.execute("UPDATE entries SET status = ? WHERE status = ?",
                                       (QUEUED, REPLAYING)).rowcount

        return int(await self.run(reset))

    # -- reads ---------------------------------------------------------------------------

    async def pending_index(self) -> list[tuple[int, float]]:
        """(seq, created) of every entry not yet replayed, in arrival order."""
        rows = await self.run(lambda: self.db.execute(
            "SELECT seq, created FROM entries WHERE status IN (?, ?) ORDER BY seq",
            (QUEUED, REPLAYING)).fetchall())
        return [(int(r[0]), float(r[1])) for r in rows]

    async def get(self, ticket: str) -> Entry | None:
        row = await self.run(lambda: self.db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE ticket = ?", (ticket,)).fetchone())
        return None if row is None else _row(row)

    async def position(self, entry: Entry) -> int:
        """1 for the next entry to replay."""
        count = await self.run(lambda: self.db.execute(
            "SELECT COUNT(*) FROM entries WHERE status IN (?, ?) AND seq < ?",
            (QUEUED, REPLAYING, entry.seq)).fetchone()[0])
        return int(count) + 1

    async def stats(self) -> QueueStats:
        def read() -> QueueStats:
            counts = {row[0]: row[1] for row in self.db.execute(
                "SELECT status, COUNT(*) FROM entries GROUP BY status").fetchall()}
            # The first waiting entry of each status, found by the (status, seq) index
            # rather than by reading every waiting row (stats are polled during a replay).
            oldest = self.db.execute(
                "SELECT MIN(created) FROM (SELECT * FROM (SELECT created FROM entries "
                "WHERE status = ? ORDER BY seq LIMIT 1) UNION ALL SELECT * FROM (SELECT "
                "created FROM entries WHERE status = ? ORDER BY seq LIMIT 1))",
                (QUEUED, REPLAYING)).fetchone()[0]
            used = self.db.execute("SELECT bytes FROM usage WHERE client = ?",
                                   (TOTAL,)).fetchone()
            return QueueStats(int(counts.get(QUEUED, 0)), int(counts.get(REPLAYING, 0)),
                              int(counts.get(DONE, 0)), int(counts.get(FAILED, 0)), oldest,
                              int(used[0]) if used else 0)

        stats: QueueStats = await self.run(read)
        return stats

    @property
    def depth(self) -> int:
        """Entries not yet replayed (kept in memory: read at open, then counted as this
        process writes them and as workers report theirs, ``enqueued_elsewhere``)."""
        return self._depth

    async def waiting(self) -> int:
        """Entries not yet replayed, counted on disk (other processes' too); ``depth``
        is set to it."""
        count = await self.run(lambda: self.db.execute(
            "SELECT COUNT(*) FROM entries WHERE status IN (?, ?)",
            (QUEUED, REPLAYING)).fetchone()[0])
        self._depth = int(count)
        return self._depth

    def enqueued_elsewhere(self, count: int = 1) -> None:
        """Another process (a worker) committed ``count`` entries to the same file."""
        self._depth += count

    async def purge(self, before: float) -> int:
        """Forget finished entries whose results are older than the result TTL."""
        def delete() -> int:
            with self.db:
                return self.db.execute("DELETE FROM entries WHERE status IN (?, ?) AND "
                                       "finished < ?", (DONE, FAILED, before)).rowcount

        purged = int(await self.run(delete))
        if purged:
            await self.run(self._scrub)
        return purged
