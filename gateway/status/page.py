"""The status page as server-rendered HTML: inline CSS and SVG, no scripts, no external
assets, so it works offline and behind strict networks. It reloads itself."""

from __future__ import annotations

import html
import time
from typing import Any

from gateway.units import format_duration

_COLOURS = {"operational": "#16a34a", "degraded": "#ca8a04", "partial_outage": "#ea580c",
            "major_outage": "#dc2626", "maintenance": "#2563eb"}
_NODE_COLOURS = {"HEALTHY": "#16a34a", "WARNING": "#ca8a04", "UNHEALTHY": "#dc2626",
                 "EJECTED": "#dc2626", "DRAINING": "#0891b2", "MAINTENANCE": "#2563eb",
                 "STARTING": "#6366f1"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, digits: int = 3) -> str:
    return "no data" if value is None else f"{value * 100:.{digits}f}%"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _bar_colour(availability: float | None, target: float) -> str:
    if availability is None:
        return "#d1d5db"
    if availability >= target:
        return "#16a34a"
    if availability >= 1 - (1 - target) * 10:
        return "#ca8a04"
    return "#dc2626"


def _uptime_svg(days: list[dict[str, Any]], target: float) -> str:
    width, gap, height = 6, 2, 34
    bars = []
    for i, day in enumerate(days):
        colour = _bar_colour(day["availability"], target)
        tip = (f"{day['date']}: {_pct(day['availability'])} "
               f"({day['good'] + day['bad']} requests, {day['bad']} failed)"
               if day["availability"] is not None else f"{day['date']}: no traffic")
        bars.append(f'<rect class="day" data-date="{_e(day["date"])}" x="{i * (width + gap)}" '
                    f'y="0" width="{width}" height="{height}" rx="1.5" fill="{colour}">'
                    f"<title>{_e(tip)}</title></rect>")
    total = len(days) * (width + gap) - gap
    return (f'<svg class="uptime" viewBox="0 0 {total} {height}" role="img" '
            f'aria-label="Daily availability for the last {len(days)} days" '
            f'preserveAspectRatio="none">{"".join(bars)}</svg>')


def _budget_bar(remaining: float) -> str:
    shown = max(0.0, min(1.0, remaining))
    colour = "#16a34a" if remaining > 0.5 else "#ca8a04" if remaining > 0.1 else "#dc2626"
    return (f'<svg class="budget" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
            f'aria-label="Error budget remaining {_pct(remaining, 1)}">'
            f'<rect width="100" height="8" rx="4" fill="#e5e7eb"/>'
            f'<rect width="{shown * 100:.2f}" height="8" rx="4" fill="{colour}"/></svg>')


def _section(title: str, body: str, css: str = "") -> str:
    return f'<section class="card {css}"><h2>{_e(title)}</h2>{body}</section>'


def render_page(data: dict[str, Any]) -> str:
    slo = data["slo"]
    target = slo["target"]
    state = data["state"]
    now = data["generated_at"]
    parts = [f'<header class="banner" id="overall" data-state="{_e(state)}" '
             f'style="background:{_COLOURS[state]}"><h1>{_e(data["state_text"])}</h1>'
             f'<p>{_e(data["title"])} &middot; updated {_e(_utc(now))}</p></header>']

    availability = "".join(
        f'<div class="metric" data-window="{_e(name)}"><span class="label">{_e(name)}</span>'
        f'<span class="value">{_pct(value)}</span></div>'
        for name, value in slo["availability"].items())
    remaining = slo["error_budget_remaining"]
    parts.append(_section("Availability", f"""
      <div class="metrics">{availability}
        <div class="metric"><span class="label">target</span>
        <span class="value" id="target">{_pct(target, 2)}</span></div></div>
      <div class="budget-row"><span>Error budget remaining (30 days)</span>
        <strong id="budget">{_pct(remaining, 1)}</strong></div>{_budget_bar(remaining)}
      <h3>Last {len(data["uptime"])} days</h3>{_uptime_svg(data["uptime"], target)}
      <div class="legend"><span>{_e(data["uptime"][0]["date"])}</span>
        <span>{_e(data["uptime"][-1]["date"])}</span></div>"""))

    windows = data["maintenance"]["active"] + data["maintenance"]["upcoming"]
    if windows:
        rows = []
        for w in windows:
            when = (f"now, ends in {format_duration(w['ends_in'])}" if w["status"] == "active"
                    else f"in {format_duration(w['starts_in'])}")
            rows.append(f'<li class="window" data-window-id="{_e(w["id"])}">'
                        f'<strong>{_e(w["reason"])}</strong> <span class="when">{_e(when)}'
                        f'</span><br><span class="muted">{_e(w["start_iso"])} to '
                        f'{_e(w["end_iso"])} &middot; {_e(w["scope"])}</span></li>')
        parts.append(_section("Maintenance", f'<ul class="list">{"".join(rows)}</ul>',
                              "maintenance"))

    incidents = data["incidents"]["open"] + data["incidents"]["recent"]
    if incidents:
        rows = []
        for inc in incidents:
            span = (f"since {_utc(inc['opened_at'])}" if inc["status"] == "open"
                    else f"{_utc(inc['opened_at'])}, resolved {_utc(inc['resolved_at'])}")
            rows.append(f'<li class="incident {_e(inc["status"])}" data-incident-id='
                        f'"{_e(inc["id"])}"><strong>{_e(inc["title"])}</strong> '
                        f'<span class="tag">{_e(inc["status"])}</span><br>'
                        f'<span class="muted">{_e(span)}</span></li>')
        parts.append(_section("Incidents", f'<ul class="list">{"".join(rows)}</ul>'))
    else:
        parts.append(_section("Incidents", '<p class="muted">No incidents recently.</p>'))

    capacity = data["capacity"]
    if data["public"]:
        parts.append(_section("Capacity", f'<p id="capacity">{capacity["serving"]} of '
                                          f'{capacity["nodes"]} servers in service</p>'))
    else:
        table_rows = "".join(
            f'<tr class="node" data-node="{_e(n["name"])}" data-state="{_e(n["state"])}">'
            f'<td>{_e(n["name"])}</td><td><span class="dot" style="background:'
            f'{_NODE_COLOURS.get(n["state"], "#6b7280")}"></span>{_e(n["state"])}</td>'
            f'<td>{n["effective_weight"]:.2f}</td><td>{n["in_flight"]}</td>'
            f'<td>{_e(n.get("version") or "-")}</td><td class="reason">{_e(n["reason"])}</td>'
            f"</tr>" for n in data["nodes"])
        parts.append(_section(
            f"Nodes ({capacity['serving']}/{capacity['nodes']} serving, "
            f"min_healthy {capacity['min_healthy']})",
            f'<table><thead><tr><th>node</th><th>state</th><th>weight</th><th>in flight</th>'
            f'<th>version</th><th>why</th></tr></thead><tbody>{table_rows}</tbody></table>'))
    refresh = int(data["refresh_seconds"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<title>{_e(data["title"])}: {_e(data["state_text"])}</title>
<style>{_CSS}</style></head>
<body><main>{"".join(parts)}
<footer class="muted">hagw status page &middot; refreshes every {refresh}s</footer></main>
</body></html>"""


_CSS = """
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,Segoe UI,
Roboto,sans-serif;background:#f3f4f6;color:#111827}main{max-width:880px;margin:0 auto;
padding:24px 16px}.banner{color:#fff;border-radius:12px;padding:20px 24px;margin-bottom:16px}
.banner h1{margin:0;font-size:1.6rem}.banner p{margin:4px 0 0;opacity:.9}.card{background:#fff;
border-radius:12px;padding:18px 22px;margin-bottom:16px;box-shadow:0 1px 2px rgba(0,0,0,.06)}
h2{font-size:1.05rem;margin:0 0 12px}h3{font-size:.9rem;margin:16px 0 8px;color:#374151}
.metrics{display:flex;gap:12px;flex-wrap:wrap}.metric{flex:1;min-width:120px;background:#f9fafb;
border-radius:8px;padding:10px 12px}.metric .label{display:block;font-size:.75rem;color:#6b7280;
text-transform:uppercase;letter-spacing:.04em}.metric .value{font-size:1.25rem;font-weight:600}
.budget-row{display:flex;justify-content:space-between;margin:14px 0 6px}.budget{width:100%;
height:10px}.uptime{width:100%;height:34px}.day:hover{opacity:.7}.legend{display:flex;
justify-content:space-between;font-size:.75rem;color:#6b7280}.list{list-style:none;margin:0;
padding:0}.list li{padding:8px 0;border-top:1px solid #f3f4f6}.list li:first-child{border:0}
.muted{color:#6b7280;font-size:.85rem}.tag{font-size:.7rem;background:#fee2e2;color:#991b1b;
padding:1px 8px;border-radius:999px}.resolved .tag{background:#dcfce7;color:#166534}
.when{color:#1d4ed8}table{width:100%;border-collapse:collapse;font-size:.9rem}th{text-align:left;
color:#6b7280;font-weight:500;font-size:.75rem;text-transform:uppercase}td,th{padding:6px 8px;
border-bottom:1px solid #f3f4f6}.reason{color:#4b5563}.dot{display:inline-block;width:9px;
height:9px;border-radius:50%;margin-right:6px}footer{text-align:center;margin-top:8px}
@media (prefers-color-scheme:dark){body{background:#111827;color:#f9fafb}.card{background:#1f2937}
.metric{background:#111827}td,th,.list li{border-color:#374151}.reason{color:#d1d5db}}
"""
