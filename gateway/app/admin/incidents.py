"""Admin API routes for incidents: list, show, notes, and the review skeleton."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.app.admin.core import GATEWAY, BadInput, field, json_response, read_json
from monitor.incident.report import render
from monitor.incident.tracker import Incident


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


async def add_note(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    incident = _find(request)
    data = await read_json(request, required=True)
    text = field(data, "text", str)
    if not text or not text.strip():
        raise BadInput("text: expected a non-empty string")
    note = await gw.incidents.note(incident.id, text.strip())
    return json_response(note, status=201)


async def report(request: web.Request) -> web.Response:
    # Text for people and tools; never sniffed or run as a page.
    return web.Response(text=render(_find(request)), content_type="text/markdown", headers={
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/incidents", list_incidents)
    app.router.add_get("/incidents/{id}", get_incident)
    app.router.add_post("/incidents/{id}/notes", add_note)
    app.router.add_get("/incidents/{id}/report", report)
