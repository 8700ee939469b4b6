"""Persisting the SLO history in the state store, so a restart keeps it."""

from __future__ import annotations

from gateway.store import StateStore
from monitor.slo import Row, SloTracker

SCHEMA = "".join(f"""
CREATE TABLE IF NOT EXISTS slo_{name} (
    start INTEGER PRIMARY KEY, good INTEGER NOT NULL, bad INTEGER NOT NULL,
    excluded INTEGER NOT NULL
);""" for name in ("minutes", "hours", "days"))

_TABLES = ("minutes", "hours", "days")


async def restore(store: StateStore, tracker: SloTracker) -> None:
    def read() -> list[list[Row]]:
        return [store.db.execute(f"SELECT start, good, bad, excluded FROM slo_{t}").fetchall()
                for t in _TABLES]

    minutes, hours, days = await store.run(read)
    tracker.load(minutes, hours, days)


async def flush(store: StateStore, tracker: SloTracker) -> None:
    """Write the buckets that changed and forget the ones that aged out."""
    minutes, hours, days, now = tracker.take_dirty()
    keeps = (tracker.minutes.keep, tracker.hours.keep, tracker.days.keep)

    def write() -> None:
        db = store.db
        with db:
            db.execute("BEGIN")
            for table, rows, keep in zip(_TABLES, (minutes, hours, days), keeps, strict=True):
                db.executemany(f"INSERT OR REPLACE INTO slo_{table} VALUES (?, ?, ?, ?)", rows)
                db.execute(f"DELETE FROM slo_{table} WHERE start < ?", (now - keep,))

    await store.run(write)
