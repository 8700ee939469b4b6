"""How the CLI shows things: colour on a terminal, tables, and the rows and lines of nodes,
deploy steps and times."""

from __future__ import annotations

import os
import sys
from typing import Any

from gateway.clock import strftime_utc


class Style:
    """ANSI colour only when stdout is a terminal (and NO_COLOR is unset)."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.enabled = enabled

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def state(self, state: str) -> str:
        colour = {"HEALTHY": "32", "WARNING": "33", "UNHEALTHY": "31", "EJECTED": "31",
                  "DRAINING": "36", "MAINTENANCE": "35", "STARTING": "34"}.get(state, "0")
        return self.paint(state, colour)


def table(rows: list[list[str]], headers: list[str], style: Style | None = None,
          colour_col: int | None = None) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            text = cell.ljust(width)
            if style is not None and i == colour_col:
                text = style.state(cell) + " " * (width - len(cell))
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for n in nodes:
        weight = f"{n['weight']}"
        if n["serving"] and abs(n["effective_weight"] - n["weight"]) > 1e-3:
            weight += f" ({n['effective_weight']:.2f})"
        rows.append([n["name"], n["state"], weight, str(n["in_flight"]),
                     n.get("version") or "-", n.get("url", ""), n.get("reason", "")])
    return rows


def print_step(name: str, step: dict[str, Any]) -> None:
    took = f"{step['ended'] - step['started']:.1f}s" if step.get("ended") else "..."
    mark = {True: "ok", False: "FAILED", None: "running"}[step.get("ok")]
    what = f"{'rollback ' if step.get('rollback') else ''}{step['kind']}"
    target = f" -> {step['version']}" if step.get("version") else ""
    detail = f"  {step['detail']}" if step.get("detail") else ""
    print(f"  {name:<12} {what:<18}{target:<10} {mark:<8} {took:>7}{detail}", flush=True)


def deploy_summary(record: dict[str, Any]) -> str:
    out = [f"deploy {record['id']} to {record['version']}: {record['status'].upper()}"]
    if record.get("reason"):
        out.append(f"  reason: {record['reason']}")
    if record.get("forced"):
        out.append(f"  forced: {record.get('force_reason') or 'yes'}")
    return "\n".join(out)


def when(ts: float) -> str:
    return strftime_utc("%Y-%m-%d %H:%M UTC", ts)
