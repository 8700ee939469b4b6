"""Admin API routes for maintenance windows: POST/GET /maintenance, DELETE, end."""

from __future__ import annotations

from aiohttp import web

from gateway.app.admin.core import GATEWAY, BadInput, error_json, field, json_response, read_json
from gateway.config.schema import parse_instant, parse_start
from gateway.units import parse_duration


async def create(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = await read_json(request, required=True)
    now = gw.maintenance.clock.time()
    start_value = data.get("start", "now")
    try:
        start = parse_start(start_value, now)
        if "end" in data:
            duration = parse_instant(data["end"]) - start
        else:
            raw = data.get("duration", "1h")
            duration = float(raw) if isinstance(raw, int | float) and not isinstance(
                raw, bool) else parse_duration(raw)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    nodes = data.get("nodes")
    if nodes is None:
        nodes = []
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise BadInput("nodes: expected a list of node names")
    reason = field(data, "reason", str) or "planned maintenance"
    if gw.fleet is not None:
        gw.fleet.require_connected("a new maintenance window")
    try:
        window = await gw.maintenance.schedule_window(start, duration, reason, tuple(nodes))
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return json_response(window.to_json(), status=201)


async def summary(request: web.Request) -> web.Response:
    return json_response(await request.app[GATEWAY].maintenance.summary())


async def cancel(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    window_id = request.match_info["id"]
    if window_id not in gw.maintenance.schedule.windows:
        return error_json(404, "not_found", f"no maintenance window {window_id!r}")
    if gw.fleet is not None:
        gw.fleet.require_connected(f"cancelling maintenance window {window_id}")
    try:
        window = await gw.maintenance.cancel(window_id)
    except ValueError as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(window.to_json())


async def end(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    window_id = request.match_info["id"]
    if window_id == "current":
        current = gw.maintenance.current()
        if current is None:
            return error_json(409, "conflict", "no maintenance window is active")
        window_id = current.id
    if window_id not in gw.maintenance.schedule.windows:
        return error_json(404, "not_found", f"no maintenance window {window_id!r}")
    if gw.fleet is not None:
        gw.fleet.require_connected(f"ending maintenance window {window_id}")
    try:
        window = await gw.maintenance.end(window_id)
    except ValueError as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(window.to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/maintenance", create)
    app.router.add_get("/maintenance", summary)
    app.router.add_delete("/maintenance/{id}", cancel)
    app.router.add_post("/maintenance/{id}/end", end)
