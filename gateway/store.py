"""Durable gateway state under ``state_dir``: one SQLite file, written off the event loop.

Small records (operator drains, deploys, maintenance windows, incidents) are
JSON values in namespaced keys. SQLite runs in WAL mode with synchronous=FULL
on one dedicated thread, so a write has reached the disk when ``await`` returns
and the event loop never blocks on fsync.

The state directory is private: ``state_dir`` (and every directory hagw makes under it)
is 0700 and every SQLite file 0600, its ``-wal`` and ``-shm`` included (SQLite gives
them the database's mode), whatever the umask; a directory or file an older hagw left
wider is narrowed at open. The queue holds credentials while writes wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("hagw.store")

#: Owner only: the state directory, and the files in it.
DIR_MODE, FILE_MODE = 0o700, 0o600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""


def private_dir(path: str | Path) -> Path:
    """``path`` as a directory only its owner can enter (made if missing, narrowed if an
    older hagw or a umask left it wider)."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _narrow(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """Create ``path`` (if missing) readable and writable by its owner only, and narrow
    what SQLite keeps beside it."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    for sibling in (path, path.with_name(path.name + "-wal"),
                    path.with_name(path.name + "-shm"), path.with_name(path.name + "-journal")):
        if sibling.exists():
            _narrow(sibling, FILE_MODE)


def _narrow(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as exc:  # not ours: say so, the gateway still runs
        log.warning("cannot make %s private (mode %o): %s", path, mode, exc.strerror or exc)


def open_sqlite(path: Path, schema: str) -> sqlite3.Connection:
    private_dir(path.parent)
    private_file(path)
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
