"""The live deploy view (``hagw deploy VERSION``, ``hagw deploy status --watch``), like
``kubectl rollout status`` and ``kubectl argo rollouts get rollout --watch``.

On a terminal: one view redrawn in place (rich's Live), with the progress ``n/N nodes``,
the elapsed time and an ETA, and each node's current step, in colour. Anywhere else (a
pipe, CI): one line per finished step, never a line twice, then the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gateway.app.cli.client import AdminClient, AdminError

ACTIVE = ("running", "rolling_back")
_STATUS_STYLE = {"running": "bold cyan", "rolling_back": "bold yellow",
                 "succeeded": "bold green", "rolled_back": "bold yellow",
                 "failed": "bold red", "aborted": "bold red", "interrupted": "bold magenta"}
DETACHED = ("detached; the deploy goes on (hagw deploy status --watch re-attaches, "
            "hagw deploy abort stops it)")


def clock(seconds: float | None) -> str:
    """0:42, 12:05, 1:02:03."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress(record: dict[str, Any], now: float) -> dict[str, Any]:
    """n/N, elapsed and ETA of a deploy record (the admin API's ``GET /deploys/{id}``)."""
    runs = record["nodes"].values()
    total = len(record["nodes"])
    done = sum(1 for run in runs if run["done"])
    end = record.get("finished") or now
    elapsed = end - record["created"]
    eta = None
    if record["status"] == "running" and 0 < done < total:
        eta = elapsed / done * (total - done)
    return {"done": done, "total": total, "elapsed": elapsed, "eta": eta}


def node_step(run: dict[str, Any], now: float) -> tuple[str, str, str, str]:
    """A node's current step, its state, the time in it and the detail."""
    if not run["steps"]:
        return "waiting", "", "", ""
    step = run["steps"][-1]
    kind = ("rollback " if step.get("rollback") else "") + step["kind"]
    state = "running" if step["ok"] is None else ("ok" if step["ok"] else "FAILED")
    if run["done"] and state == "ok":
        kind, state = "done", "ok"
    if run.get("rolled_back") and state == "ok":
        kind = "rolled back"
    took = (step["ended"] or now) - step["started"]
    return kind, state, f"{took:.1f}s", step.get("detail") or ""


def node_version(run: dict[str, Any]) -> str:
    """What the node runs as far as the deploy knows: the version of its last step that
    set one (the action, or a rollback's), else what it ran before."""
    for step in reversed(run["steps"]):
        if step.get("version") and step["ok"]:
            return str(step["version"])
    return str(run.get("previous_version") or "-")


def headline(record: dict[str, Any], now: float) -> Text:
    p = progress(record, now)
    status = record["status"]
    line = Text()
    line.append(f"deploy {record['id']} to {record['version']}  ")
    line.append(status.upper().replace("_", " "), style=_STATUS_STYLE.get(status, "bold"))
    line.append(f"  {p['done']}/{p['total']} nodes  elapsed {clock(p['elapsed'])}")
    if status in ACTIVE:
        line.append(f"  ETA {clock(p['eta']) if p['eta'] is not None else '-'}")
    return line


def view(record: dict[str, Any], now: float) -> Group:
    """The whole view: the headline, a bar, and a row per node."""
    p = progress(record, now)
    width = 30
    filled = round(width * p["done"] / p["total"]) if p["total"] else width
    bar = Text("━" * filled, style="green") + Text("━" * (width - filled), style="grey37")
    nodes = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("NODE", "STEP", "VERSION", "STATE", "TIME", "DETAIL"):
        nodes.add_column(column, no_wrap=column != "DETAIL", overflow="fold")
    for name, run in record["nodes"].items():
        kind, state, took, detail = node_step(run, now)
        version = node_version(run)
        style = {"ok": "green", "FAILED": "bold red", "running": "cyan"}.get(state, "dim")
        nodes.add_row(name, kind, version, Text(state or "-", style=style), took, detail)
    parts: list[Any] = [headline(record, now), bar, nodes]
    if record.get("reason"):
        parts.append(Text(f"reason: {record['reason']}", style="yellow"))
    return Group(*parts)


def step_line(name: str, step: dict[str, Any], done: int, total: int) -> str:
    """A finished step, for a pipe: ``[1/3] node-1  drain  ok  0.2s  detail``."""
    what = ("rollback " if step.get("rollback") else "") + step["kind"]
    target = f" -> {step['version']}" if step.get("version") else ""
    mark = "ok" if step["ok"] else "FAILED"
    took = f"{(step['ended'] or step['started']) - step['started']:.1f}s"
    detail = f"  {step['detail']}" if step.get("detail") else ""
    return f"[{done}/{total}] {name:<12} {what + target:<24} {mark:<6} {took:>6}{detail}"


def summary(record: dict[str, Any], now: float) -> str:
    p = progress(record, now)
    out = [f"deploy {record['id']} to {record['version']}: {record['status'].upper()} "
           f"({p['done']}/{p['total']} nodes in {clock(p['elapsed'])})"]
    if record.get("reason"):
        out.append(f"  reason: {record['reason']}")
    if record.get("forced"):
        out.append(f"  forced: {record.get('force_reason') or 'yes'}")
    return "\n".join(out)


def follow(client: AdminClient, deploy_id: str, console: Console, *,
           interval: float = 0.5, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Show the deploy until it is no longer active and return its last record.
    KeyboardInterrupt goes to the caller, who says the deploy goes on."""
    if console.is_terminal:
        return _follow_live(client, deploy_id, console, interval, now)
    shown: set[tuple[str, int]] = set()
    first = True
    while True:
        record = _get(client, deploy_id)
        if first:
            console.print(headline(record, now()), highlight=False, soft_wrap=True)
            first = False
        p = progress(record, now())
        for name, run in record["nodes"].items():
            for i, step in enumerate(run["steps"]):
                if step["ok"] is not None and (name, i) not in shown:
                    shown.add((name, i))
                    console.print(step_line(name, step, p["done"], p["total"]),
                                  highlight=False, markup=False, soft_wrap=True)
        if record["status"] not in ACTIVE:
            return record
        time.sleep(interval)


def _follow_live(client: AdminClient, deploy_id: str, console: Console, interval: float,
                 now: Callable[[], float]) -> dict[str, Any]:
    record = _get(client, deploy_id)
    with Live(view(record, now()), console=console, refresh_per_second=4,
              transient=False) as live:
        while record["status"] in ACTIVE:
            time.sleep(interval)
            record = _get(client, deploy_id)
            live.update(view(record, now()))
    return record


def _get(client: AdminClient, deploy_id: str) -> dict[str, Any]:
    """The record; a gateway that restarts mid-deploy is waited for, not a crash."""
    deadline = time.monotonic() + 30
    while True:
        try:
            record: dict[str, Any] = client.get(f"/deploys/{deploy_id}")
            return record
        except AdminError as exc:
            if exc.status is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
