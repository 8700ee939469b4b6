"""The admin API (JSON) on its own listener: nodes, drains, events, reload, probes, metrics,
deploys, maintenance windows, incidents and the status page.

Reads are open (or need ``admin.read_token``); every POST, PUT, PATCH and DELETE needs
``Authorization: Bearer <token>`` (401 without it, 403 with a wrong one), compared in
constant time. The Host and Origin headers are checked against DNS rebinding.
"""

from __future__ import annotations

from aiohttp import web

from gateway.app.admin import deploys, incidents, maintenance, nodes, openapi, processes, status
from gateway.app.admin.core import (
    GATEWAY,
    auth_middleware,
    error_middleware,
    hide_server,
    host_middleware,
)
from gateway.app.parts import Parts


def build_admin_app(gateway: Parts) -> web.Application:
    app = web.Application(middlewares=[error_middleware, host_middleware, auth_middleware],
                          client_max_size=1024 * 1024)
    app.on_response_prepare.append(hide_server)
    app[GATEWAY] = gateway
    for module in (nodes, processes, deploys, maintenance, incidents, status, openapi):
        module.add_routes(app)
    return app


__all__ = ["GATEWAY", "build_admin_app"]
