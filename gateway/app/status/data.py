"""What the status page shows, as data: the same dict is GET /status.json.

``public=True`` is the service-level view for users: no node names, addresses,
versions or internal reasons.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.app.fleet_budget import FleetBudget
from gateway.app.parts import Parts
from gateway.app.status.components import components, components_json
from gateway.clock import strftime_utc
from gateway.maintenance import Phase
from gateway.node import PLANNED_STATES
from monitor.slo import AVAILABILITY_WINDOWS

STATES = {
    "operational": "All systems operational",
    "degraded": "Degraded performance",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
    "maintenance": "Under maintenance",
    "monitoring": "Recovered, monitoring",
}


def overall_state(gw: Parts) -> str:
    if gw.maintenance.mode.phase.planned:
        return "maintenance"
    nodes = list(gw.cluster)
    serving = sum(1 for n in nodes if n.serving)
    if nodes and serving == 0:
        return "major_outage"
    current = gw.incidents.tracker.current
    # A recovered incident is "monitoring" (Statuspage's word), not an outage any more.
    if (current is not None and current.status != "monitoring") or gw.cluster.below_floor():
        return "partial_outage"
    unplanned = any(not n.serving and n.state not in PLANNED_STATES for n in nodes)
    warning = any(n.warning is not None for n in nodes)
    hour = gw.budget.window(3600)
    burning = hour.total >= 100 and gw.budget.burn(hour) > 1.0
    if unplanned or warning or burning or gw.cluster.panic or \
            gw.maintenance.mode.phase is Phase.REPLAYING:
        return "degraded"
    if current is not None:
        return "monitoring"
    return "operational"


def _window_json(window: Any, now: float, public: bool) -> dict[str, Any]:
    data = window.to_json()
    keep = {"id", "start", "end", "start_iso", "end_iso", "reason", "status", "scope"}
    out = {k: v for k, v in data.items() if k in keep}
    out["updated_at"] = window.updated_at
    out["starts_in"] = max(0.0, window.start - now)
    out["ends_in"] = max(0.0, window.end - now)
    if public:
        out["scope"] = "whole service" if window.whole_fleet else "some capacity (partial)"
    return out


def _incident_json(incident: Any, public: bool) -> dict[str, Any]:
    data: dict[str, Any] = incident.summary()
    if public:
        # Titles are written for people (monitor.incident.tracker.TITLES) and updates by
        # operators; the causes name nodes and internal reasons and stay on the admin side.
        data = {"id": data["id"], "status": data["status"], "severity": data["severity"],
                "opened_at": data["opened_at"], "resolved_at": data["resolved_at"],
                "title": data["title"],
                "updates": [{k: u[k] for k in ("at", "status", "text")}
                            for u in incident.updates]}
    else:
        data["causes"] = incident.causes
        data["notes"] = len(incident.notes)
    return data


def links(gw: Parts, *, public: bool) -> dict[str, str]:
    """Where the page and its other formats are: on the traffic listener at status.path
    (public), on the admin listener at /status."""
    page = gw.config.status.path if public else "/status"
    return {"html": page, "json": f"{page}.json", "atom": f"{page}.atom"}


def status_data(gw: Parts, *, public: bool,
                stats: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    now = gw.clock.time()
    slo = gw.budget  # in a fleet, the fleet's counts
    state = overall_state(gw)
    nodes = list(gw.cluster)
    schedule = gw.maintenance.schedule
    data: dict[str, Any] = {
        "generated_at": now,
        "title": gw.config.status.title,
        "public": public,
        "refresh_seconds": gw.config.status.refresh,
        "links": links(gw, public=public),
        "state": state,
        "state_text": STATES[state],
        "components": components_json(components(gw.config), {n.name: n for n in nodes},
                                      fleet_planned=gw.maintenance.mode.phase.planned,
                                      public=public),
        "slo": {
            "target": slo.config.target,
            "window_days": slo.config.window / 86400,
            # None, not 100%, when a window saw no traffic at all.
            "availability": {name: (counts.availability if counts.total else None)
                             for name, seconds in AVAILABILITY_WINDOWS.items()
                             if name in ("24h", "7d", "30d")
                             for counts in (slo.window(seconds),)},
            "error_budget_remaining": slo.budget_remaining(),
        },
        "uptime": [
            {"date": strftime_utc("%Y-%m-%d", start), "start": start,
             "availability": counts.availability if counts.total else None,
             # Request counts reveal traffic volume: admin view only.
             **({} if public else {"good": counts.good, "bad": counts.bad,
                                   "excluded": counts.excluded})}
            for start, counts in slo.daily()
        ],
        "capacity": {"nodes": len(nodes), "serving": sum(1 for n in nodes if n.serving),
                     "in_maintenance": sum(1 for n in nodes if n.maintenance is not None),
                     "min_healthy": gw.cluster.floor},
        "maintenance": {
            "mode": gw.maintenance.mode.phase.value,
            "active": [_window_json(w, now, public) for w in schedule.active()],
            "upcoming": [_window_json(w, now, public) for w in schedule.upcoming()],
            # Ended and cancelled ones, for the feed.
            "recent": [_window_json(w, now, public) for w in schedule.recent(10)],
        },
        "incidents": {
            "open": [_incident_json(i, public) for i in gw.incidents.tracker.recent(50)
                     if i.is_open],
            "recent": [_incident_json(i, public) for i in gw.incidents.tracker.recent(10)
                       if not i.is_open],
        },
    }
    if public:
        return data
    data["version"] = __version__
    data["slo"]["burn_rate"] = {name: slo.burn_rate(seconds) for name, seconds in
                                (("5m", 300), ("1h", 3600), ("6h", 21600))}
    data["nodes"] = [{**{k: v for k, v in n.snapshot().items() if k != "history"},
                      "stats": (stats or {}).get(n.name)} for n in nodes]
    deploys = gw.deploys.history()
    data["deploy"] = deploys[0].summary() if deploys else None
    data["queue_depth"] = gw.maintenance.queue.depth
    # The fleet (peers): the Redis link and the leader, or None for a gateway alone.
    data["peers"] = gw.fleet.status() if gw.fleet is not None else None
    if isinstance(slo, FleetBudget):
        # Whose counts the figures above are: the fleet's, or this instance's while the
        # fleet's are out of date (Redis away).
        data["slo"]["scope"] = slo.scope
    return data
