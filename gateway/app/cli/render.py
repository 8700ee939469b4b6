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


NODE_HEADERS = ["NODE", "STATE", "WEIGHT", "IN-FLIGHT", "VERSION", "URL", "REASON"]
#: ``-o wide`` and ``--watch``: HAProxy's stats page, per node, over the last minute.
NODE_WIDE_HEADERS = ["NODE", "STATE", "WEIGHT", "IN-FLIGHT", "REQ/S", "ERR%", "P99",
                     "RETRIES", "EJECTIONS", "VERSION", "ZONE", "URL", "REASON"]


def _stat(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def node_rows(nodes: list[dict[str, Any]], wide: bool = False) -> list[list[str]]:
    rows = []
    for n in nodes:
        weight = f"{n['weight']}"
        if n["serving"] and abs(n["effective_weight"] - n["weight"]) > 1e-3:
            weight += f" ({n['effective_weight']:.2f})"
        if not wide:
            rows.append([n["name"], n["state"], weight, str(n["in_flight"]),
                         n.get("version") or "-", n.get("url", ""), n.get("reason", "")])
            continue
        stats = n.get("stats") or {}
        error = stats.get("error_ratio")
        p99 = stats.get("p99_seconds")
        rows.append([n["name"], n["state"], weight, str(n["in_flight"]),
                     _stat(stats.get("rate"), ".1f"),
                     _stat(None if error is None else error * 100, ".1f"),
                     "-" if p99 is None else f"{p99 * 1000:.0f}ms",
                     str(stats.get("retries", 0)), str(stats.get("ejections", 0)),
                     n.get("version") or "-", n.get("zone") or "-", n.get("url", ""),
                     n.get("reason", "")])
    return rows


def when(ts: float) -> str:
    return strftime_utc("%Y-%m-%d %H:%M UTC", ts)
