"""Admin API routes for deploys: POST /deploys, GET /deploys[/{id}], abort, resume."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.app.admin.core import (
    GATEWAY,
    BadInput,
    authenticated,
    error_json,
    field,
    json_response,
    read_json,
)
from monitor.deploy.runner import DeployConflict, DeployNotFound, DeployRefused, DeployUnchanged
from monitor.versions import validate_version


async def create(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = await read_json(request, required=True)
    version = field(data, "version", str)
    if not version or not version.strip():
        raise BadInput("version: expected a non-empty string")
    try:
        # Checked as given (no stripping): it ends up in deploy commands and scripts.
        version = validate_version(version)
    except ValueError as exc:
        raise BadInput(f"version: {exc}") from None
    if gw.fleet is not None:
        # A deploy needs the fleet's shared state and runs on its leader only.
        gw.fleet.require_leader(f"a deploy to {version}")
    try:
        record = await gw.deploys.begin(version, force=bool(field(data, "force", bool)),
                                        force_reason=field(data, "reason", str) or "")
    except DeployConflict as exc:
        return error_json(409, "conflict", str(exc))
    except DeployRefused as exc:
        return error_json(422, "refused", str(exc))
    except DeployUnchanged as exc:
        # Not an error: the fleet is where the operator wants it. Nothing is recorded.
        return json_response({"id": None, "version": version, "status": "unchanged",
                              "message": str(exc)})
    return json_response({**record.summary(), "location": f"/deploys/{record.id}"}, status=202)


async def list_deploys(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response({"deploys": [r.summary() for r in gw.deploys.history()]})


#: What an unauthenticated read sees instead of a step's output.
HIDDEN_OUTPUT = "[hidden: deploy output needs Authorization: Bearer <admin or read token>]"


def shown(request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
    """A deploy record as this request may read it: what the deploy commands printed (they
    may print anything, secrets included) only with a token."""
    if authenticated(request):
        return record
    for run in record.get("nodes", {}).values():
        for step in run.get("steps", []):
            if step.get("output"):
                step["output"] = HIDDEN_OUTPUT
    return record


async def get_deploy(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    deploy_id = request.match_info["id"]
    if deploy_id == "current":
        history = gw.deploys.history()
        if not history:
            return error_json(404, "not_found", "no deploy has run yet")
        return json_response(shown(request, history[0].to_json()))
    try:
        return json_response(shown(request, gw.deploys.get(deploy_id).to_json()))
    except DeployNotFound:
        return error_json(404, "not_found", f"no deploy {deploy_id!r}")


async def abort(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = await read_json(request)
    if gw.fleet is not None:
        gw.fleet.require_leader(f"aborting deploy {request.match_info['id']}")
    try:
        record = await gw.deploys.abort(request.match_info["id"], field(data, "reason", str)
                                        or "aborted by operator")
    except DeployNotFound:
        return error_json(404, "not_found", f"no deploy {request.match_info['id']!r}")
    except DeployConflict as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(record.summary())


async def resume(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.fleet is not None:
        gw.fleet.require_leader(f"resuming deploy {request.match_info['id']}")
    try:
        record = await gw.deploys.resume(request.match_info["id"])
    except DeployNotFound:
        return error_json(404, "not_found", f"no deploy {request.match_info['id']!r}")
    except DeployConflict as exc:
        return error_json(409, "conflict", str(exc))
    return json_response(record.summary())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/deploys", create)
    app.router.add_get("/deploys", list_deploys)
    app.router.add_get("/deploys/{id}", get_deploy)
    app.router.add_post("/deploys/{id}/abort", abort)
    app.router.add_post("/deploys/{id}/resume", resume)
