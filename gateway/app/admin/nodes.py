"""Admin routes of the gateway itself: its index, liveness and readiness, metrics, nodes and
drains, events and reload."""

from __future__ import annotations

import json

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__
from gateway.app.admin.core import GATEWAY, BadInput, field, json_response, node_or_404, read_json
from gateway.config import ConfigError
from gateway.config.redact import redact_urls


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
    await gw.before_scrape()
    return web.Response(body=generate_latest(gw.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_nodes(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    stats = await gw.node_stats()
    return json_response({"cluster": gw.cluster.summary(),
                          "nodes": [{**n.snapshot(), "stats": stats.get(n.name)}
                                    for n in gw.cluster]})


async def get_node(request: web.Request) -> web.Response:
    return json_response(node_or_404(request).snapshot())


async def drain_node(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    node = node_or_404(request)
    data = await read_json(request)
    reason = field(data, "reason", str) or "drained by operator"
    await gw.drains.drain(node, reason)
    await gw.converge()  # no worker sends it a new request once this answers
    return json_response(node.snapshot())


async def undrain_node(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    node = node_or_404(request)
    data = await read_json(request)
    force = field(data, "force", bool, False)
    reason = field(data, "reason", str) or "undrained by operator"
    others = {source: why for source, why in node.holds.items() if source != "operator"}
    if others and "operator" not in node.holds and not force:
        held = ", ".join(f"a {source} ({why})" for source, why in others.items())
        raise web.HTTPConflict(text=json.dumps({
            "error": "conflict", "message": f"{node.name} is held by {held}; pass force=true "
                                            "to override"}),
            content_type="application/json")
    await gw.drains.undrain(node, reason, force=force)
    await gw.converge()
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
    # A URL in an event (a webhook's, a notifier's) may carry a token: its origin only.
    return json_response({"events": [{**e.to_json(), "message": redact_urls(e.message)}
                                     for e in picked]})


async def reload_config(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        gw.reload()
    except ConfigError as exc:
        return json_response({"error": "invalid_config", "message": str(exc),
                              "kept": "the running config"}, status=422)
    await gw.reload_workers()  # new workers on the new config, one at a time
    return json_response({"status": "reloaded", "nodes": [n.name for n in gw.cluster],
                          "changed": gw.changed_keys,
                          "restart_needed": gw.restart_needed})




def add_routes(app: web.Application) -> None:
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
