"""Admin API routes for incidents: list, show, public updates, ack, resolve, notes, and the
review skeleton."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.app.admin.core import (
    GATEWAY,
    BadInput,
    error_json,
    field,
    json_response,
    read_json,
)
from monitor.incident.report import render
from monitor.incident.tracker import RESOLVED, STATUSES, Incident


def _find(request: web.Request) -> Incident:
    gw = request.app[GATEWAY]
    incident = gw.incidents.tracker.incidents.get(request.match_info["id"])
    if incident is None:
        raise web.HTTPNotFound(text=json.dumps({
            "error": "not_found", "message": f"no incident {request.match_info['id']!r}"}),
            content_type="application/json")
    return incident


async def list_incidents(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response({"incidents": [i.summary() for i in gw.incidents.tracker.recent(100)]})


async def get_incident(request: web.Request) -> web.Response:
    return json_response(_find(request).to_json())


def _leader_only(request: web.Request, what: str) -> None:
    """In a fleet the leader records incidents: a follower refuses (409 not_leader)."""
    fleet = request.app[GATEWAY].fleet
    if fleet is not None:
        fleet.require_leader(what)


async def add_note(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    incident = _find(request)
    _leader_only(request, "a note on an incident")
    data = await read_json(request, required=True)
    text = field(data, "text", str)
    if not text or not text.strip():
        raise BadInput("text: expected a non-empty string")
    note = await gw.incidents.note(incident.id, text.strip())
    return json_response(note, status=201)


async def post_update(request: web.Request) -> web.Response:
    """``{"status": "identified", "text": "..."}``: a public update (Statuspage's)."""
    gw = request.app[GATEWAY]
    incident = _find(request)
    _leader_only(request, "an incident update")
    data = await read_json(request, required=True)
    status = field(data, "status", str)
    if status not in STATUSES:
        raise BadInput(f"status: expected one of {', '.join(STATUSES)}, found {status!r}")
    text = (field(data, "text", str) or "").strip()
    if len(text) > 2000:
        raise BadInput("text: expected at most 2000 characters")
    try:
        update = await gw.incidents.update(incident.id, status, text)
    except ValueError as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(update, status=201)


async def acknowledge(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    incident = _find(request)
    _leader_only(request, "acknowledging an incident")
    try:
        await gw.incidents.acknowledge(incident.id)
    except ValueError as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(incident.summary())


async def resolve(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    incident = _find(request)
    _leader_only(request, "resolving an incident")
    data = await read_json(request)
    text = (field(data, "text", str) or "").strip()
    try:
        await gw.incidents.update(incident.id, RESOLVED, text)
    except ValueError as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(incident.summary())


async def report(request: web.Request) -> web.Response:
    # Text for people and tools; never sniffed or run as a page.
    return web.Response(text=render(_find(request)), content_type="text/markdown", headers={
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/incidents", list_incidents)
    app.router.add_get("/incidents/{id}", get_incident)
    app.router.add_post("/incidents/{id}/notes", add_note)
    app.router.add_post("/incidents/{id}/updates", post_update)
    app.router.add_post("/incidents/{id}/ack", acknowledge)
    app.router.add_post("/incidents/{id}/resolve", resolve)
    app.router.add_get("/incidents/{id}/report", report)
