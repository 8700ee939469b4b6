"""Durable gateway state under ``state_dir``: one SQLite file, written off the event loop.

Small records (operator drains, deploys, maintenance windows, incidents) are
JSON values in namespaced keys. SQLite runs in WAL mode with synchronous=FULL
on one dedicated thread, so a write has reached the disk when ``await`` returns
and the event loop never blocks on fsync.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""


def open_sqlite(path: Path, schema: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


class SqliteFile:
    """One SQLite file, used only from its own thread (SQLite calls must not block the
    loop). The state store and the write queue are each one."""

    def __init__(self, path: Path, thread_name: str, what: str) -> None:
        self.path = path
        self._what = what
        self._thread_name = thread_name
        #: Made on first use and ended by close(), so a closed file may be opened again
        #: (a supervisor whose successor failed to start takes its state back).
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the {self._what} is not open")
        return self._db

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the file's own thread."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await self.run(db.close)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class StateStore(SqliteFile):
    def __init__(self, state_dir: str | Path, name: str = "state.db") -> None:
        super().__init__(Path(state_dir) / name, "hagw-store", "state store")

    async def open(self, extra_schema: str = "") -> None:
        self._db = await self.run(lambda: open_sqlite(self.path, _SCHEMA + extra_schema))

    async def put(self, namespace: str, key: str, value: Any) -> None:
        text = json.dumps(value, separators=(",", ":"))
        now = time.time()
        await self.run(lambda: self.db.execute(
            "INSERT INTO kv(namespace, key, value, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value, "
            "updated=excluded.updated", (namespace, key, text, now)))

    async def delete(self, namespace: str, key: str) -> None:
        await self.run(lambda: self.db.execute(
            "DELETE FROM kv WHERE namespace=? AND key=?", (namespace, key)))

    async def get(self, namespace: str, key: str) -> Any:
        row = await self.run(lambda: self.db.execute(
            "SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key)).fetchone())
        return None if row is None else json.loads(row[0])

    async def items(self, namespace: str) -> dict[str, Any]:
        rows = await self.run(lambda: self.db.execute(
            "SELECT key, value FROM kv WHERE namespace=? ORDER BY updated",
            (namespace,)).fetchall())
        return {key: json.loads(value) for key, value in rows}

    def __repr__(self) -> str:
        return f"<StateStore {self.path}>"
