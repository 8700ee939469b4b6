"""The post-incident review skeleton, in Markdown, written from the incident record."""

from __future__ import annotations

import time

from gateway.clock import strftime_utc
from gateway.units import format_duration
from monitor.incident.tracker import Incident


def _utc(ts: float | None) -> str:
    return "-" if ts is None else strftime_utc("%Y-%m-%d %H:%M:%S UTC", ts)


def _span(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(max(0.0, seconds))


def render(incident: Incident) -> str:
    impact = incident.impact()
    total = impact["requests_total"]
    failed = impact["requests_failed"]
    share = f" ({failed / total:.2%} of {total})" if total else ""
    lines = [
        f"# Post-incident review: {incident.title}",
        "",
        f"- **Incident:** {incident.id} ({incident.severity} outage, {incident.status})",
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
        "- Conditions: " + "; ".join(incident.causes),
        "",
        "## Timeline (UTC)",
        "",
        "| time | what happened |",
        "| --- | --- |",
    ]
    for entry in incident.timeline:
        where = f" {entry['node']}:" if entry.get("node") else ""
        message = str(entry["message"]).replace("|", "\\|")
        lines.append(f"| {time.strftime('%H:%M:%S', time.gmtime(entry['at']))} |"
                     f"{where} {message} |")
    lines += ["", "## Notes", ""]
    lines += [f"- {_utc(n['at'])} ({n.get('author', 'operator')}): {n['text']}"
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
