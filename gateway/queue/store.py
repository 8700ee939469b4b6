"""The durable write queue: accepted writes, in arrival order, on disk before any 202.

``QueueStore`` is the small interface replay and the traffic listener use; a
shared store for several gateways can implement it later. ``SqliteQueue`` is
the embedded default: SQLite in WAL mode with synchronous=FULL under
``state_dir``. Concurrent enqueues are group-committed: one transaction and one
fsync for everything that arrived meanwhile, and each writer's future resolves
only after that commit, so a 202 is never sent for a write that is not on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

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
    node TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_status ON entries(status, seq);
"""


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
    #: Place in line when it was accepted (1 = next); not stored.
    position: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    replaying: int
    done: int
    failed: int
    oldest_created: float | None

    @property
    def depth(self) -> int:
        return self.queued + self.replaying


class QueueFull(Exception):
    pass


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


_COLUMNS = ("seq, ticket, created, method, target, headers, body, idempotency_key, status, "
            "attempts, next_attempt, result_status, result_headers, result_body, error, finished, "
            "node")


def _row(row: sqlite3.Row) -> Entry:
    result_headers = row["result_headers"]
    return Entry(
        ticket=row["ticket"], created=row["created"], method=row["method"],
        target=row["target"], headers=[(k, v) for k, v in json.loads(row["headers"])],
        body=bytes(row["body"]), idempotency_key=row["idempotency_key"], seq=row["seq"],
        status=row["status"], attempts=row["attempts"], next_attempt=row["next_attempt"],
        result_status=row["result_status"],
        result_headers=None if result_headers is None else [
            (k, v) for k, v in json.loads(result_headers)],
        result_body=None if row["result_body"] is None else bytes(row["result_body"]),
        error=row["error"], finished=row["finished"], node=row["node"])


class SqliteQueue(SqliteFile):
    def __init__(self, state_dir: str | Path, capacity: int, name: str = "queue.db") -> None:
        super().__init__(Path(state_dir) / name, "hagw-queue", "queue")
        self.capacity = capacity
        self._pending: list[tuple[Entry, asyncio.Future[Entry]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._depth = 0
        self._closing = False

    def __repr__(self) -> str:
        return f"<SqliteQueue {self.path} depth={self._depth}>"

    async def open(self) -> None:
        self._db = await self.run(lambda: open_sqlite(self.path, SCHEMA))
        self._db.row_factory = sqlite3.Row
        # Accepting a write is fsynced (synchronous=FULL, see _insert). Later status changes
        # (replaying, done) are not: WAL with synchronous=NORMAL keeps them through a
        # process crash, and a power loss can at worst roll back the last few, whose
        # writes are then re-sent with their Idempotency-Key. That keeps replay off fsync.
        await self.run(lambda: self.db.execute("PRAGMA synchronous=NORMAL"))
        columns = await self.run(lambda: [r[1] for r in self.db.execute(
            "PRAGMA table_info(entries)").fetchall()])
        if "node" not in columns:  # a queue written before entries remembered their node
            await self._execute("ALTER TABLE entries ADD COLUMN node TEXT", ())
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
                        self._depth += 1
                        entry.seq, entry.position = seq, self._depth
                        if not future.done():
                            future.set_result(entry)
            if self._closing and not self._pending:
                return

    def _insert(self, entries: list[Entry]) -> list[int]:
        db = self.db
        db.execute("PRAGMA synchronous=FULL")  # a 202 promises the write is on disk
        try:
            seqs = self._insert_batch(db, entries)
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return seqs

    @staticmethod
    def _insert_batch(db: sqlite3.Connection, entries: list[Entry]) -> list[int]:
        seqs = []
        with db:
            db.execute("BEGIN IMMEDIATE")
            for e in entries:
                cursor = db.execute(
                    "INSERT INTO entries (ticket, created, method, target, headers, body, "
                    "idempotency_key, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.ticket, e.created, e.method, e.target, json.dumps(e.headers), e.body,
                     e.idempotency_key, QUEUED))
                assert cursor.lastrowid is not None
                seqs.append(cursor.lastrowid)
        return seqs

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
            with self.db:
                self.db.executemany("UPDATE entries SET status = ?, attempts = ?, node = ? "
                                    "WHERE seq = ?", rows)

        await self.run(write)

    async def finish_many(self, entries: list[Entry]) -> None:
        """Record a batch's outcomes (done or failed) in one transaction."""
        if not entries:
            return
        rows = [(e.status, e.result_status,
                 None if e.result_headers is None else json.dumps(e.result_headers),
                 e.result_body, e.error, e.finished or time.time(), e.seq) for e in entries]

        def write() -> None:
            with self.db:
                self.db.executemany(
                    "UPDATE entries SET status = ?, result_status = ?, result_headers = ?, "
                    "result_body = ?, error = ?, finished = ? WHERE seq = ?", rows)

        await self.run(write)
        self._depth = max(0, self._depth - len(entries))

    async def forget(self, entries: list[Entry]) -> int:
        """Remove waiting entries that moved to another queue (a local spool forwarding
        them to a shared one). Returns how many were removed."""
        rows = [(e.ticket, QUEUED, REPLAYING) for e in entries]

        def delete() -> int:
            with self.db:
                return sum(self.db.execute("DELETE FROM entries WHERE ticket = ? AND status "
                                           "IN (?, ?)", row).rowcount for row in rows)

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
            oldest = self.db.execute("SELECT MIN(created) FROM entries WHERE status IN (?, ?)",
                                     (QUEUED, REPLAYING)).fetchone()[0]
            return QueueStats(int(counts.get(QUEUED, 0)), int(counts.get(REPLAYING, 0)),
                              int(counts.get(DONE, 0)), int(counts.get(FAILED, 0)), oldest)

        stats: QueueStats = await self.run(read)
        return stats

    @property
    def depth(self) -> int:
        """Entries not yet replayed (kept in memory: read at open, then counted as this
        process writes them and as workers report theirs, ``enqueued_elsewhere``)."""
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

        return int(await self.run(delete))
