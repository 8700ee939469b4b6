"""The admin API (JSON) on its own listener: nodes, drains, events, reload, probes, metrics.

Reads are open; every POST, PUT, PATCH and DELETE needs ``Authorization: Bearer
<token>`` (401 without it, 403 with a wrong one), compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__
from gateway.config import ConfigError
from gateway.node import Node

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("hagw.admin")

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadInput(web.HTTPBadRequest):
    """A 400 whose JSON body says what was wrong with the request."""

    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": "bad_request", "message": reason}),
                         content_type="application/json")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


def error_json(status: int, error: str, message: str) -> web.Response:
    """The admin API's error shape: {"error": <code>, "message": <why>}."""
    return json_response({"error": error, "message": message}, status=status)


async def read_json(request: web.Request, *, required: bool = False) -> dict[str, Any]:
    """The request's JSON object body; a missing body is {} unless required."""
    if not request.can_read_body:
        if required:
            raise BadInput("expected a JSON object body")
        return {}
    try:
        data = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInput("the body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadInput(f"expected a JSON object, found {type(data).__name__}")
    return data


def field(data: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = data.get(key, default)
    wrong_type = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if value is not None and wrong_type:
        raise BadInput(f"{key}: expected {kind.__name__}, found {type(value).__name__}")
    return value


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in _READ_METHODS:
        return await handler(request)
    token = request.app[GATEWAY].config.admin.token
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return web.json_response({"error": "unauthorized", "message": "this call needs "
                                  "Authorization: Bearer <admin token>"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="hagw-admin"'})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return web.json_response({"error": "forbidden", "message": "wrong admin token"},
                                 status=403)
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return web.json_response({"error": exc.reason.lower().replace(" ", "_"),
                                  "message": exc.text or exc.reason}, status=exc.status,
                                 headers={k: v for k, v in exc.headers.items()
                                          if k.lower() in ("allow", "retry-after")})


def node_or_404(request: web.Request) -> Node:
    name = request.match_info["name"]
    node = request.app[GATEWAY].cluster.get(name)
    if node is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "not_found",
                                                "message": f"no node named {name!r}"}),
                               content_type="application/json")
    return node


# -- handlers ------------------------------------------------------------------------------

async def index(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response({
        "service": "hagw", "version": __version__, "ready": gw.ready,
        "traffic": gw.traffic_url if gw.traffic_address else None,
        "endpoints": sorted({r.resource.canonical for r in request.app.router.routes()
                             if r.resource is not None}),
    })


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    summary = gw.cluster.summary()
    body = {"ready": gw.ready, "serving_nodes": summary["serving"], "panic": summary["panic"]}
    return json_response(body, status=200 if gw.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.Response(body=generate_latest(gw.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_nodes(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response({"cluster": gw.cluster.summary(),
                          "nodes": [n.snapshot() for n in gw.cluster]})


async def get_node(request: web.Request) -> web.Response:
    return json_response(node_or_404(request).snapshot())


async def drain_node(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    node = node_or_404(request)
    data = await read_json(request)
    reason = field(data, "reason", str) or "drained by operator"
    await gw.drain(node, reason)
    return json_response(node.snapshot())


async def undrain_node(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    node = node_or_404(request)
    data = await read_json(request)
    force = field(data, "force", bool, False)
    reason = field(data, "reason", str) or "undrained by operator"
    if node.drain_source not in (None, "operator") and not force:
        raise web.HTTPConflict(text=json.dumps({
            "error": "conflict", "message": f"{node.name} is held by a {node.drain_source} "
                                            f"({node.drain_reason}); pass force=true to override"}),
            content_type="application/json")
    await gw.undrain(node, reason)
    return json_response(node.snapshot())


async def events(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        after = int(request.query.get("since", "0"))
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadInput("since and limit must be whole numbers") from None
    picked = gw.events.since(after, max(0, min(limit, 1000)), request.query.get("kind"),
                             request.query.get("node"))
    return json_response({"events": [e.to_json() for e in picked]})


async def reload_config(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        gw.reload()
    except ConfigError as exc:
        return json_response({"error": "invalid_config", "message": str(exc),
                              "kept": "the running config"}, status=422)
    return json_response({"status": "reloaded", "nodes": [n.name for n in gw.cluster]})


def build_admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[error_middleware, auth_middleware],
                          client_max_size=1024 * 1024)
    app[GATEWAY] = gateway
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/nodes", list_nodes)
    app.router.add_get("/nodes/{name}", get_node)
    app.router.add_post("/nodes/{name}/drain", drain_node)
    app.router.add_post("/nodes/{name}/undrain", undrain_node)
    app.router.add_get("/events", events)
    app.router.add_post("/reload", reload_config)
    from gateway import openapi
    from gateway.status import routes as status_routes
    from monitor.deploy import api as deploy_api
    from monitor.incident import api as incident_api
    from monitor.maintenance import api as maintenance_api

    deploy_api.add_routes(app)
    maintenance_api.add_routes(app)
    incident_api.add_routes(app)
    status_routes.add_routes(app)
    openapi.add_routes(app)
    return app
