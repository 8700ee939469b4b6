"""The post-incident review skeleton, in Markdown, written from the incident record.

Everything that comes from people or from events (the title, conditions, timeline,
notes) is text, never markup: no HTML tag can open, newlines cannot start a heading or
a list of their own, and brackets cannot make a link or an image, whatever renders the
review later."""

from __future__ import annotations

import re
import time

from gateway.clock import strftime_utc
from gateway.units import format_duration
from monitor.incident.tracker import Incident


def _utc(ts: float | None) -> str:
    return "-" if ts is None else strftime_utc("%Y-%m-%d %H:%M:%S UTC", ts)


def _span(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(max(0.0, seconds))


#: Backslashed: what could make a link or an image, end a table cell, or undo an escape.
_MARKUP = re.compile(r"([\\\[\]|])")


def _text(value: object) -> str:
    """``value`` as Markdown text on one line: no HTML tag can open (``<`` is an entity;
    ``->`` and ``R&D`` stay readable), no link, image or table cell either."""
    flat = " ".join(str(value).split())
    return _MARKUP.sub(r"\\\1", flat).replace("<", "&lt;")


def render(incident: Incident) -> str:
    impact = incident.impact()
    total = impact["requests_total"]
    failed = impact["requests_failed"]
    share = f" ({failed / total:.2%} of {total})" if total else ""
    lines = [
        f"# Post-incident review: {_text(incident.title)}",
        "",
        f"- **Incident:** {_text(incident.id)} ({_text(incident.severity)} outage, "
        f"{_text(incident.status)})",
        f"- **Started (first sign):** {_utc(incident.started_at)}",
        f"- **Detected (incident opened):** {_utc(incident.opened_at)}, "
        f"time to detect {_span(impact['detection_seconds'])}",
        f"- **Recovered (conditions clear):** {_utc(incident.recovered_at)}, "
        f"time to recover {_span(impact['recovery_seconds'])}",
        f"- **Resolved:** {_utc(incident.resolved_at)}",
        f"- **Duration:** {_span(impact['duration_seconds'])}",
        "",
        "## Impact",
        "",
        f"- Requests failed: {failed}{share}",
        f"- Error budget consumed: {impact['budget_consumed']:.2%} of the SLO window's budget",
        "- Conditions: " + "; ".join(_text(c) for c in incident.causes),
        "",
        "## Timeline (UTC)",
        "",
        "| time | what happened |",
        "| --- | --- |",
    ]
    for entry in incident.timeline:
        where = f" {_text(entry['node'])}:" if entry.get("node") else ""
        message = _text(entry["message"])
        lines.append(f"| {time.strftime('%H:%M:%S', time.gmtime(entry['at']))} |"
                     f"{where} {message} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {_utc(n['at'])} ({_text(n.get('author', 'operator'))}): {_text(n['text'])}"
              for n in incident.notes] or ["- (none)"]
    lines += [
        "",
        "## Root cause",
        "",
        "_To be written: what failed, and why._",
        "",
        "## What went well, what went wrong",
        "",
        "_To be written._",
        "",
        "## Follow-ups",
        "",
        "- [ ] _Action, owner, due date._",
        "",
    ]
    return "\n".join(lines)
