"""The results: one table row per scenario, the checks with PASS/FAIL, and the JSON
(``chaos/results/latest.json`` plus a timestamped copy)."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.analysis import Check, Tally

#: Keys every scenario entry of the JSON has (the smoke test relies on them).
SCENARIO_KEYS = ("name", "title", "status", "seconds", "figures", "checks", "notes",
                 "timeline", "reason", "loadavg")


@dataclass
class ScenarioResult:
    name: str
    title: str
    #: passed | failed | skipped | error
    status: str
    tally: Tally | None = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Why it was skipped, or the error.
    reason: str = ""
    #: The machine's 1-minute load average at the start and the end: context for timings.
    loadavg: tuple[float, float] = (0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status,
                "seconds": round(self.seconds, 1),
                "figures": self.tally.to_json() if self.tally else None,
                "checks": [c.to_json() for c in self.checks], "notes": self.notes,
                "timeline": [{"t": t, "event": e} for t, e in self.timeline],
                "reason": self.reason, "loadavg": list(self.loadavg)}


def _failed_post(t: Tally) -> str:
    if not t.failed_post:
        return "0"
    parts = [f"{t.failed_post_in_flight} in flight"]
    if t.failed_post_never_sent:
        parts.append(f"{t.failed_post_never_sent} never sent")
    return f"{t.failed_post} ({', '.join(parts)})"


def _availability(t: Tally) -> str:
    return f"{t.availability * 100:.3f}%"


def render(results: list[ScenarioResult]) -> str:
    headers = ["SCENARIO", "REQUESTS", "FAILED GET", "FAILED POST", "AVAILABILITY",
               "ACCEPTED WRITES", "LOST WRITES", "RESULT", "NOTES"]
    rows: list[list[str]] = []
    for r in results:
        t = r.tally
        if t is None:
            rows.append([r.name, "-", "-", "-", "-", "-", "-", r.status.upper(),
                         f"{r.status}: {r.reason}"])
            continue
        note = _row_note(r)
        rows.append([r.name, str(t.requests), str(t.failed_get), _failed_post(t),
                     _availability(t), str(t.accepted) + (f" ({t.queued} queued)"
                                                          if t.queued else ""),
                     str(t.lost) + (f" +{t.duplicates} dup" if t.duplicates else ""),
                     r.status.upper(), note])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _row_note(r: ScenarioResult) -> str:
    t = r.tally
    assert t is not None
    parts = []
    if t.planned:
        parts.append(f"{t.planned} maintenance 503 by design")
    if t.failed_post_applied:
        parts.append(f"{t.failed_post_applied} failed POST applied anyway")
    parts.extend(r.notes[:2])
    failed = [c.name for c in r.checks if not c.passed]
    if failed:
        parts.append("FAILED: " + "; ".join(failed))
    return "; ".join(parts)


def render_details(r: ScenarioResult) -> str:
    """The checks, notes and failure kinds of one scenario, printed after it runs."""
    lines = [f"== {r.name}: {r.title} -> {r.status.upper()} ({r.seconds:.0f}s, load "
             f"average {r.loadavg[0]:.1f} -> {r.loadavg[1]:.1f})"]
    if r.reason:
        lines.append(f"   {r.reason}")
    for c in r.checks:
        lines.append(f"   [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}")
    t = r.tally
    if t is not None:
        lines.append(f"   {t.requests} requests ({t.gets} GET, {t.posts} POST) at "
                     f"{t.achieved_rate:g} req/s; latency p50 {t.p50_ms:g} ms, p99 "
                     f"{t.p99_ms:g} ms, max {t.max_ms:g} ms")
        if t.failures_by_kind:
            kinds = ", ".join(f"{k}: {v}" for k, v in t.failures_by_kind.items())
            lines.append(f"   failures: {kinds}")
            for kind, example in t.failure_examples.items():
                lines.append(f"     e.g. {kind}: {example}")
    for note in r.notes:
        lines.append(f"   note: {note}")
    for at, event in r.timeline:
        lines.append(f"   t={at:6.2f}s  {event}")
    return "\n".join(lines)


def write_json(payload: dict[str, Any], results_dir: Path, explicit: Path | None,
               prefix: str) -> list[Path]:
    """``latest.json`` (or ``latest-soak.json``) and a timestamped copy; or just ``explicit``."""
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if explicit is not None:
        explicit.parent.mkdir(parents=True, exist_ok=True)
        explicit.write_text(text)
        return [explicit]
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    latest = "latest.json" if prefix == "chaos" else f"latest-{prefix}.json"
    paths = [results_dir / f"{prefix}-{stamp}.json", results_dir / latest]
    for path in paths:
        path.write_text(text)
    return paths


def environment() -> dict[str, Any]:
    import os

    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
