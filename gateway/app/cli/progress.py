"""Progress bars for the CLI's long waits: the replay of queued writes after a window
(``hagw maintenance end --wait``) and a node's in-flight requests finishing (``hagw drain
--wait``). A bar on a terminal (rich), a line now and then anywhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from gateway.app.cli.client import AdminClient

#: Without a terminal, a progress line at most this often.
PLAIN_EVERY = 5.0


def _bar(console: Console, *extra: Any) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


def wait_replay(client: AdminClient, console: Console, timeout: float,
                interval: float = 0.5) -> dict[str, Any]:
    """Until the gateway is back to normal with nothing queued; returns the last queue
    figures. TimeoutError when it is not done within ``timeout``."""
    data = client.get("/maintenance")
    base = data["queue"]["done"] + data["queue"]["failed"]
    deadline = time.monotonic() + timeout

    def figures() -> tuple[int, int, dict[str, Any], str]:
        data = client.get("/maintenance")
        queue = data["queue"]
        finished = queue["done"] + queue["failed"] - base
        return finished, finished + queue["depth"], queue, data["mode"]

    def over(queue: dict[str, Any], mode: str) -> bool:
        return mode == "normal" and queue["depth"] == 0

    return _run(console, "replay", figures, over, deadline, interval,
                rate=TextColumn("{task.fields[rate]:.1f}/s"))


def wait_drain(client: AdminClient, node: str, console: Console, timeout: float,
               interval: float = 0.2) -> dict[str, Any]:
    """Until nothing is in flight to ``node``; returns its last record."""
    first = client.get(f"/nodes/{node}")
    start = max(1, first["in_flight"])
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {"node": first}

    def figures() -> tuple[int, int, dict[str, Any], str]:
        record = client.get(f"/nodes/{node}")
        last["node"] = record
        return max(0, start - record["in_flight"]), start, record, ""

    def over(record: dict[str, Any], _mode: str) -> bool:
        return int(record["in_flight"]) == 0

    if over(first, ""):
        return dict(first)
    _run(console, f"{node} in flight", figures, over, deadline, interval)
    return dict(last["node"])


def _run(console: Console, what: str,
         figures: Callable[[], tuple[int, int, dict[str, Any], str]],
         over: Callable[[dict[str, Any], str], bool], deadline: float, interval: float,
         rate: TextColumn | None = None) -> dict[str, Any]:
    done, total, data, mode = figures()
    if not console.is_terminal:
        return _run_plain(console, what, figures, over, deadline, interval)
    columns = (rate,) if rate is not None else ()
    began = time.monotonic()
    with _bar(console, *columns) as bar:
        task = bar.add_task(what, total=max(total, 1), completed=done, rate=0.0)
        while not over(data, mode):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {total - done} left")
            time.sleep(interval)
            done, total, data, mode = figures()
            bar.update(task, total=max(total, 1), completed=done,
                       rate=done / max(1e-6, time.monotonic() - began))
        bar.update(task, total=max(total, 1), completed=max(total, 1))
    return data


def _run_plain(console: Console, what: str,
               figures: Callable[[], tuple[int, int, dict[str, Any], str]],
               over: Callable[[dict[str, Any], str], bool], deadline: float,
               interval: float) -> dict[str, Any]:
    began = time.monotonic()
    said = 0.0
    while True:
        done, total, data, mode = figures()
        now = time.monotonic()
        if over(data, mode) or now - said >= PLAIN_EVERY:
            said = now
            rate = done / max(1e-6, now - began)
            eta = (total - done) / rate if rate > 0 and total > done else None
            console.print(f"{what}: {done}/{total} done, {rate:.1f}/s"
                          + (f", ETA {eta:.0f}s" if eta is not None else ""),
                          highlight=False, markup=False, soft_wrap=True)
        if over(data, mode):
            return data
        if now > deadline:
            raise TimeoutError(f"{what}: {total - done} left")
        time.sleep(interval)
