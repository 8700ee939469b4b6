"""The status page as server-rendered HTML: inline CSS and SVG, no scripts, no external
assets, so it works offline and behind strict networks. It reloads itself.

Hooks for tests and scrapers (keep them stable): ``#overall[data-state]``,
``.metric[data-window]``, ``#target``, ``#budget[data-value]``, ``svg.uptime
rect.day[data-date]`` with a ``<title>`` each, ``li.window[data-window-id]`` with
``.when`` and ``<time datetime>``, ``li.incident[data-incident-id]`` with
``li.update[data-status]``, ``li.component[data-component][data-state]`` with
``.cstate`` (and ``.members``, admin), ``a#feed`` and ``link[rel=alternate]`` (the Atom
feed), ``#capacity`` (public) and ``tr.node[data-node][data-state]`` with ``.addr`` and
``.reason`` (admin). Incidents and windows carry ``id="incident-ID"`` and
``id="maintenance-ID"``, which the feed's entries link to.
"""

from __future__ import annotations

import html
import time
from typing import Any

from gateway.clock import strftime_utc

#: Banner backgrounds: dark enough for white text (WCAG AA, at least 4.5:1).
_COLOURS = {"operational": "#15803d", "degraded": "#a16207", "partial_outage": "#c2410c",
            "major_outage": "#b91c1c", "maintenance": "#1d4ed8", "monitoring": "#0f766e"}
_NODE_COLOURS = {"HEALTHY": "#16a34a", "WARNING": "#ca8a04", "UNHEALTHY": "#dc2626",
                 "EJECTED": "#dc2626", "DRAINING": "#0891b2", "MAINTENANCE": "#2563eb",
                 "STARTING": "#6366f1"}
#: Component dots, by component state (gateway.app.status.components).
_COMPONENT_COLOURS = {"operational": "#16a34a", "degraded": "#ca8a04",
                      "partial_outage": "#ea580c", "major_outage": "#dc2626",
                      "maintenance": "#2563eb"}
#: Day bars: at or above target, within 10x the allowed error, worse, no traffic.
_BAR_COLOURS = {"good": "#16a34a", "warn": "#ca8a04", "bad": "#dc2626", "nodata": "#d1d5db"}
#: Small inline icons for the banner (24x24, stroked in currentColor).
_ICONS = {
    "operational": '<path d="M6 12.5l4 4 8-9"/>',
    "degraded": '<path d="M12 6.5v7"/><path d="M12 17.5v.01"/>',
    "partial_outage": '<path d="M12 6.5v7"/><path d="M12 17.5v.01"/>',
    "major_outage": '<path d="M7.5 7.5l9 9M16.5 7.5l-9 9"/>',
    "maintenance": '<path d="M12 7v5l3.5 2"/>',
    "monitoring": '<path d="M6 12.5l4 4 8-9"/>',
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, digits: int = 3) -> str:
    return "no data" if value is None else f"{value * 100:.{digits}f}%"


def _utc(ts: float) -> str:
    return strftime_utc("%Y-%m-%d %H:%M UTC", ts)


def _span(seconds: float) -> str:
    """A countdown or a duration for people: 45s, 45m, 2h, 1h 59m, 3d 4h (whole minutes)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {mins}m" if mins else f"{hours}h"
    return f"{mins}m"


def _time(ts: float, iso: str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    stamp = iso or strftime_utc("%Y-%m-%dT%H:%M:%SZ", ts)
    return f'<time datetime="{_e(stamp)}">{_e(strftime_utc(fmt, ts))}</time>'


def _bar_class(availability: float | None, target: float) -> str:
    if availability is None:
        return "nodata"
    if availability >= target:
        return "good"
    if availability >= 1 - (1 - target) * 10:
        return "warn"
    return "bad"


def _uptime_svg(days: list[dict[str, Any]], target: float) -> str:
    width, gap, height = 6, 2, 34
    bars = []
    for i, day in enumerate(days):
        kind = _bar_class(day["availability"], target)
        if day["availability"] is None:
            tip = f"{day['date']}: no traffic"
        elif "good" in day:  # request counts are in the admin view only
            tip = (f"{day['date']}: {_pct(day['availability'])} "
                   f"({day['good'] + day['bad']} requests, {day['bad']} failed)")
        else:
            tip = f"{day['date']}: {_pct(day['availability'])}"
        bars.append(f'<rect class="day {kind}" data-date="{_e(day["date"])}" '
                    f'x="{i * (width + gap)}" y="0" width="{width}" height="{height}" rx="1.5" '
                    f'fill="{_BAR_COLOURS[kind]}"><title>{_e(tip)}</title></rect>')
    total = max(1, len(days) * (width + gap) - gap)
    return (f'<svg class="uptime" viewBox="0 0 {total} {height}" role="img" '
            f'aria-label="Daily availability for the last {len(days)} days" '
            f'preserveAspectRatio="none">{"".join(bars)}</svg>')


def _uptime_total(days: list[dict[str, Any]]) -> float | None:
    if days and "good" not in days[0]:
        # The public view has no counts: the mean of the days that had traffic.
        known = [d["availability"] for d in days if d["availability"] is not None]
        return sum(known) / len(known) if known else None
    good = sum(d["good"] for d in days)
    bad = sum(d["bad"] for d in days)
    return good / (good + bad) if good + bad else None


def _budget(remaining: float, days: float) -> str:
    """The error budget left, as text and a bar; an overspent budget says by how much."""
    shown = max(0.0, min(1.0, remaining))
    kind = "good" if remaining > 0.5 else "warn" if remaining > 0.1 else "bad"
    # Overspent: say how many budgets' worth went (1 - remaining), not a negative percentage.
    text = _pct(remaining, 1) if remaining >= 0 else f"exhausted ({1 - remaining:.1f}&times; spent)"
    bar = (f'<svg class="budget" width="100%" height="10" role="img" '
           f'aria-label="Error budget remaining {_pct(shown, 1)}">'
           f'<rect class="track" width="100%" height="10" rx="5" fill="#e5e7eb"/>'
           + (f'<rect class="fill {kind}" width="{shown * 100:.2f}%" height="10" rx="5" '
              f'fill="{_BAR_COLOURS[kind]}"/>' if shown > 0 else "")
           + "</svg>")
    return (f'<div class="budget-row"><span>Error budget remaining ({days:g} days)</span>'
            f'<strong id="budget" class="{kind}" data-value="{remaining:.6f}">{text}</strong>'
            f"</div>{bar}")


def _section(title: str, body: str, css: str = "", extra: str = "") -> str:
    return (f'<section class="card {css}"><div class="card-head"><h2>{_e(title)}</h2>'
            f"{extra}</div>{body}</section>")


def _banner(data: dict[str, Any]) -> str:
    state = data["state"]
    now = data["generated_at"]
    notices = []
    active, upcoming = data["maintenance"]["active"], data["maintenance"]["upcoming"]
    if active:
        w = active[0]
        notices.append(f'<p class="notice">Maintenance in progress until {_e(_utc(w["end"]))} '
                       f'(ends in {_span(w["ends_in"])}): {_e(w["reason"])}</p>')
    elif upcoming and upcoming[0]["starts_in"] <= 7 * 86400:
        w = upcoming[0]
        notices.append(f'<p class="notice">Maintenance scheduled in {_span(w["starts_in"])}: '
                       f'{_e(w["reason"])}</p>')
    icon = _ICONS.get(state, _ICONS["degraded"])
    return (f'<header class="banner" id="overall" data-state="{_e(state)}" '
            f'style="background:{_COLOURS.get(state, "#374151")}">'
            f'<svg class="icon" viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" '
            f'r="10.5"/>{icon}</svg><div><h1>{_e(data["state_text"])}</h1>'
            f'<p>{_e(data["title"])} &middot; updated {_e(_utc(now))}</p>{"".join(notices)}'
            f"</div></header>")


def _availability(data: dict[str, Any]) -> str:
    slo = data["slo"]
    target = slo["target"]
    metrics = "".join(
        f'<div class="metric {"ok" if value is None or value >= target else "below"}" '
        f'data-window="{_e(name)}"><span class="label">last {_e(name)}</span>'
        f'<span class="value">{_pct(value)}</span></div>'
        for name, value in slo["availability"].items())
    burn = slo.get("burn_rate")
    burn_line = ""
    if burn:
        rates = " &middot; ".join(f'{_e(name)} <strong data-burn="{_e(name)}">{rate:.1f}&times;'
                                  f"</strong>" for name, rate in burn.items())
        burn_line = f'<p class="muted burn">Burn rate: {rates}</p>'
    days = data["uptime"]
    legend = ""
    if days:
        legend = (f'<div class="legend"><span>{_e(days[0]["date"])}</span>'
                  f'<span class="key"><i class="good"></i>at target<i class="warn"></i>below'
                  f'<i class="bad"></i>far below<i class="nodata"></i>no traffic</span>'
                  f'<span>{_e(days[-1]["date"])}</span></div>')
    overall = _uptime_total(days)
    return _section("Availability", f"""
      <div class="metrics">{metrics}
        <div class="metric target"><span class="label">target</span>
        <span class="value" id="target">{_pct(target, 2)}</span></div></div>
      {_budget(slo["error_budget_remaining"], slo.get("window_days", 30))}{burn_line}
      <div class="card-head"><h3>Last {len(days)} days</h3>
        <span class="muted" id="uptime-total">{_pct(overall)} uptime</span></div>
      {_uptime_svg(days, target)}{legend}""")


def _components(data: dict[str, Any]) -> str:
    items = data.get("components") or []
    if not items:
        return ""
    rows = []
    for c in items:
        members = ""
        if "members" in c:  # the admin view names the nodes
            members = (f'<span class="members muted">{_e(", ".join(c["members"]))} &middot; '
                       f'{c["serving"]}/{c["nodes"]} serving</span>')
        rows.append(
            f'<li class="component" data-component="{_e(c["name"])}" '
            f'data-state="{_e(c["state"])}"><span class="cname">{_e(c["name"])}{members}'
            f'</span><span class="cstate"><span class="dot" style="background:'
            f'{_COMPONENT_COLOURS.get(c["state"], "#6b7280")}"></span>{_e(c["state_text"])}'
            f"</span></li>")
    return _section("Components", f'<ul class="components">{"".join(rows)}</ul>')


def _maintenance(data: dict[str, Any]) -> str:
    windows = data["maintenance"]["active"] + data["maintenance"]["upcoming"]
    if not windows:
        return ""
    rows = []
    for w in windows:
        active = w["status"] == "active"
        when = (f"ends in {_span(w['ends_in'])}" if active
                else f"in {_span(w['starts_in'])}")
        same_day = time.gmtime(w["start"])[:3] == time.gmtime(w["end"])[:3]
        end = _time(w["end"], w.get("end_iso"), "%H:%M" if same_day else "%Y-%m-%d %H:%M")
        rows.append(
            f'<li class="window {"active" if active else "scheduled"}" '
            f'id="maintenance-{_e(w["id"])}" '
            f'data-window-id="{_e(w["id"])}" data-status="{_e(w["status"])}">'
            f'<div class="row"><strong>{_e(w["reason"])}</strong>'
            f'<span class="tag {"active" if active else "scheduled"}">'
            f'{"in progress" if active else "scheduled"}</span>'
            f'<span class="when">{_e(when)}</span></div>'
            f'<div class="muted">{_time(w["start"], w.get("start_iso"))} &ndash; {end} UTC '
            f'({_span(w["end"] - w["start"])}) &middot; scope: '
            f'<span class="scope">{_e(w["scope"])}</span></div></li>')
    return _section("Maintenance", f'<ul class="list">{"".join(rows)}</ul>', "maintenance")


def _incidents(data: dict[str, Any]) -> str:
    incidents = data["incidents"]["open"] + data["incidents"]["recent"]
    if not incidents:
        return _section("Incidents", '<p class="muted">No incidents recently.</p>')
    now = data["generated_at"]
    rows = []
    for inc in incidents:
        status = inc["status"]
        if status != "resolved":
            span = (f"since {_time(inc['opened_at'], None)} UTC "
                    f"({_span(now - inc['opened_at'])})")
        else:
            resolved = inc.get("resolved_at") or now
            span = (f"{_time(inc['opened_at'], None)} UTC, resolved after "
                    f"{_span(resolved - inc['opened_at'])}")
        details = ""
        impact = inc.get("impact")
        if impact:
            details += (f'<div class="muted impact">{impact["requests_failed"]:,} of '
                        f'{impact["requests_total"]:,} requests failed &middot; '
                        f'{_pct(impact["budget_consumed"], 1)} of the error budget</div>')
        updates = inc.get("updates") or []
        if updates:
            # Newest first, as Statuspage shows them.
            details += '<ol class="updates">' + "".join(
                f'<li class="update" data-status="{_e(u["status"])}">'
                f'<b class="ustatus">{_e(u["status"].capitalize())}</b> &ndash; '
                f'<span class="utext">{_e(u["text"])}</span> '
                f'<span class="muted">{_time(u["at"], None)} UTC</span></li>'
                for u in reversed(updates)) + "</ol>"
        causes = [c for c in inc.get("causes") or [] if c != inc["title"]]
        if causes:
            details += ('<ul class="causes">' + "".join(f"<li>{_e(c)}</li>" for c in causes)
                        + "</ul>")
        rows.append(
            f'<li class="incident {_e(status)}" id="incident-{_e(inc["id"])}" '
            f'data-incident-id="{_e(inc["id"])}" '
            f'data-severity="{_e(inc.get("severity", ""))}"><div class="row">'
            f'<strong>{_e(inc["title"])}</strong><span class="tag status">{_e(status)}</span>'
            + (f'<span class="tag sev">{_e(inc["severity"])}</span>'
               if inc.get("severity") else "")
            + f'</div><div class="muted">{span}</div>{details}</li>')
    return _section("Incidents", f'<ul class="list">{"".join(rows)}</ul>')


def _nodes(data: dict[str, Any]) -> str:
    capacity = data["capacity"]
    if data["public"]:
        held = capacity.get("in_maintenance", 0)
        planned = f", {held} in planned maintenance" if held else ""
        return _section("Capacity", f'<p id="capacity">{capacity["serving"]} of '
                                    f'{capacity["nodes"]} servers in service{planned}</p>')
    now = data["generated_at"]
    rows = []
    for n in data.get("nodes", []):
        state = n["state"]
        colour = _NODE_COLOURS.get(state, "#6b7280")
        since = f'<span class="muted"> {_span(now - n["since"])}</span>' if n.get("since") else ""
        rows.append(
            f'<tr class="node" data-node="{_e(n["name"])}" data-state="{_e(state)}">'
            f'<td class="name"><strong>{_e(n["name"])}</strong>'
            f'<span class="addr">{_e(n.get("url", ""))}</span></td>'
            f'<td class="state"><span class="dot" style="background:{colour}"></span>'
            f"{_e(state)}{since}</td>"
            f'<td class="num" data-label="weight">{n["effective_weight"]:.2f}</td>'
            f'<td class="num" data-label="in flight">{n["in_flight"]}</td>'
            f'{_stats_cells(n.get("stats") or {})}'
            f'<td class="version" data-label="version">{_e(n.get("version") or "-")}</td>'
            f'<td class="reason">{_e(n["reason"])}</td></tr>')
    title = (f"Nodes ({capacity['serving']}/{capacity['nodes']} serving, "
             f"min_healthy {capacity['min_healthy']})")
    return _section(title, '<table class="nodes"><thead><tr><th>node</th><th>state</th>'
                           '<th>weight</th><th>in flight</th><th>req/s</th><th>errors</th>'
                           '<th>p99</th><th>retries</th><th>ejections</th><th>version</th>'
                           '<th>why</th>'
                           f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _stats_cells(stats: dict[str, Any]) -> str:
    """HAProxy-style columns: rate, error ratio and p99 over the last minute; totals."""
    rate, error, p99 = stats.get("rate"), stats.get("error_ratio"), stats.get("p99_seconds")
    cells = [("req/s", "-" if rate is None else f"{rate:.1f}"),
             ("errors", "-" if error is None else f"{error * 100:.1f}%"),
             ("p99", "-" if p99 is None else f"{p99 * 1000:.0f} ms"),
             ("retries", str(stats.get("retries", 0))),
             ("ejections", str(stats.get("ejections", 0)))]
    return "".join(f'<td class="num stat" data-label="{label}">{_e(value)}</td>'
                   for label, value in cells)


def _footer(data: dict[str, Any], refresh: int) -> str:
    bits = ["hagw status page" + (f" {_e(data['version'])}" if data.get("version") else "")]
    deploy = data.get("deploy")
    if deploy:
        bits.append(f"last deploy {_e(deploy['version'])} {_e(deploy['status'])} "
                    f"({deploy['nodes_done']}/{deploy['nodes']} nodes)")
    if data.get("queue_depth"):
        bits.append(f"{data['queue_depth']} queued write(s)")
    bits.append(f"times in UTC &middot; refreshes every {refresh}s")
    feed = (data.get("links") or {}).get("atom")
    if feed:
        bits.append(f'<a id="feed" href="{_e(feed)}" type="application/atom+xml">'
                    "incidents and maintenance feed (Atom)</a>")
    return f'<footer class="muted">{" &middot; ".join(bits)}</footer>'


def render_page(data: dict[str, Any]) -> str:
    parts = [_banner(data), _components(data), _availability(data), _maintenance(data),
             _incidents(data), _nodes(data)]
    refresh = max(1, int(data["refresh_seconds"]))
    feed = (data.get("links") or {}).get("atom")
    alternate = (f'<link rel="alternate" type="application/atom+xml" '
                 f'title="{_e(data["title"])}: incidents and maintenance" href="{_e(feed)}">\n'
                 if feed else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta http-equiv="refresh" content="{refresh}">
{alternate}<title>{_e(data["title"])}: {_e(data["state_text"])}</title>
<style>{_CSS}</style></head>
<body class="{"public" if data["public"] else "admin"}"><main>{"".join(parts)}
{_footer(data, refresh)}</main>
</body></html>"""


_CSS = """
:root{--bg:#f3f4f6;--card:#fff;--text:#111827;--muted:#4b5563;--line:#e5e7eb;--soft:#f9fafb;
--track:#e5e7eb;--nodata:#d1d5db;--good:#16a34a;--warn:#ca8a04;--bad:#dc2626;--link:#1d4ed8;
--warn-text:#a16207;--bad-text:#b91c1c}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
sans-serif;background:var(--bg);color:var(--text)}main{max-width:880px;margin:0 auto;
padding:24px 16px}
.banner{display:flex;gap:16px;align-items:center;color:#fff;border-radius:12px;
padding:20px 24px;margin-bottom:16px}.banner h1{margin:0;font-size:1.6rem;line-height:1.25}
.banner p{margin:4px 0 0;opacity:.92}.banner .notice{opacity:1;font-weight:500}
.icon{flex:none;width:44px;height:44px;fill:none;stroke:currentColor;stroke-width:2.2;
stroke-linecap:round;stroke-linejoin:round}
.card{background:var(--card);border-radius:12px;padding:18px 22px;margin-bottom:16px;
box-shadow:0 1px 2px rgba(0,0,0,.06)}
.card-head{display:flex;justify-content:space-between;align-items:baseline;gap:12px;
flex-wrap:wrap}h2{font-size:1.05rem;margin:0 0 12px}h3{font-size:.9rem;margin:18px 0 8px}
.metrics{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:12px}
.metric{background:var(--soft);border-radius:8px;padding:10px 12px;border-left:3px solid
var(--good)}.metric.below{border-left-color:var(--warn)}.metric.target{border-left-color:
var(--line)}.metric .label{display:block;font-size:.75rem;color:var(--muted);
letter-spacing:.02em}.metric .value{font-size:1.25rem;font-weight:600;
font-variant-numeric:tabular-nums}.metric.below .value{color:var(--warn-text)}
.budget-row{display:flex;justify-content:space-between;gap:12px;margin:16px 0 6px}
#budget.warn{color:var(--warn-text)}#budget.bad{color:var(--bad-text)}
.budget{display:block}.budget .track{fill:var(--track)}.burn{margin:8px 0 0}
.uptime{display:block;width:100%;height:34px}.day:hover{opacity:.7}
.day.good,.fill.good,.key .good{fill:var(--good);background:var(--good)}
.day.warn,.fill.warn,.key .warn{fill:var(--warn);background:var(--warn)}
.day.bad,.fill.bad,.key .bad{fill:var(--bad);background:var(--bad)}
.day.nodata,.key .nodata{fill:var(--nodata);background:var(--nodata)}
.legend{display:flex;justify-content:space-between;gap:8px;margin-top:6px;font-size:.75rem;
color:var(--muted)}.key i{display:inline-block;width:9px;height:9px;border-radius:2px;
margin:0 4px 0 10px;vertical-align:-1px}
.list{list-style:none;margin:0;padding:0}.list>li{padding:10px 0;border-top:1px solid
var(--line)}.list>li:first-child{border:0;padding-top:0}.row{display:flex;flex-wrap:wrap;
align-items:baseline;gap:4px 10px}.muted{color:var(--muted);font-size:.85rem}
.tag{font-size:.7rem;font-weight:600;background:#fee2e2;color:#991b1b;padding:1px 8px;
border-radius:999px;text-transform:uppercase;letter-spacing:.03em}
.resolved .tag{background:#dcfce7;color:#166534}.tag.sev{background:var(--soft);
color:var(--muted)}.tag.scheduled{background:#dbeafe;color:#1e40af}.tag.active{
background:#1d4ed8;color:#fff}.when{color:var(--link);font-weight:500}
.causes{margin:4px 0 0;padding-left:18px;font-size:.85rem;color:var(--muted)}
.updates{margin:6px 0 0;padding-left:0;list-style:none;font-size:.9rem}
.updates li{padding:3px 0;border-left:2px solid var(--line);padding-left:8px;margin:2px 0}
.components{list-style:none;padding:0;margin:0}.components li{display:flex;
justify-content:space-between;align-items:baseline;gap:12px;padding:8px 0;border-top:1px
solid var(--line)}.components li:first-child{border:0;padding-top:0}
.components .cname{font-weight:500;overflow-wrap:anywhere}.components .members{
display:block;font-weight:400}.cstate{white-space:nowrap}
footer a{color:var(--link)}
table{width:100%;border-collapse:collapse;font-size:.9rem}th{text-align:left;
color:var(--muted);font-weight:500;font-size:.75rem;text-transform:uppercase;
white-space:nowrap}td,th{
padding:7px 8px;border-bottom:1px solid var(--line);vertical-align:top}
tbody tr:last-child td{border-bottom:0}.num{font-variant-numeric:tabular-nums}
.addr{display:block;font:.75rem/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
color:var(--muted);white-space:nowrap}.state{white-space:nowrap}.reason{color:var(--muted)}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}
footer{text-align:center;margin-top:8px}
@media (max-width:640px){main{padding:12px 10px}.banner{padding:16px;gap:12px}
.banner h1{font-size:1.3rem}.icon{width:34px;height:34px}.card{padding:14px 16px}
.key{display:none}.nodes thead{display:none}.nodes tr{display:grid;
grid-template-columns:repeat(3,1fr);gap:4px 8px;padding:10px 0;border-top:1px solid
var(--line)}.nodes tr:first-child{border-top:0}.nodes td{border:0;padding:0}
.nodes .name{grid-column:span 2}.addr{white-space:normal;
overflow-wrap:anywhere}.nodes .state{text-align:right}.nodes .reason{
grid-column:1/-1}.nodes td[data-label]::before{content:attr(data-label);display:block;
font-size:.7rem;color:var(--muted);text-transform:uppercase}}
@media (prefers-color-scheme:dark){:root{--bg:#0b1120;--card:#1f2937;--text:#f9fafb;
--muted:#9ca3af;--line:#374151;--soft:#111827;--track:#374151;--nodata:#4b5563;
--link:#93c5fd;--warn-text:#facc15;--bad-text:#f87171}.card{box-shadow:none}}
"""
