"""Admin routes of the gateway's processes: the supervisor and its workers, an upgrade in
place (a new supervisor takes the listening sockets over), and the instance among its
peers (``GET /peers``)."""

from __future__ import annotations

from aiohttp import web

from gateway.app.admin.core import GATEWAY, json_response
from gateway.app.parts import UpgradeUnsupported


async def list_processes(request: web.Request) -> web.Response:
    return json_response(request.app[GATEWAY].processes())


async def upgrade(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        pid = gw.upgrade()
    except UpgradeUnsupported as exc:
        return json_response({"error": "upgrade_unsupported", "message": str(exc)},
                             status=409)
    return json_response({"status": "started", "pid": pid,
                          "message": f"pid {pid} takes the sockets over once its workers "
                                     "serve; this supervisor then drains and exits"},
                         status=202)


async def peers(request: web.Request) -> web.Response:
    """This instance among its peers: the Redis link, the leader and its epoch."""
    fleet = request.app[GATEWAY].fleet
    if fleet is None:
        return json_response({"enabled": False, "message": "no peers configured: this "
                                                           "gateway stands alone"})
    return json_response(fleet.status())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/processes", list_processes)
    app.router.add_get("/peers", peers)
    app.router.add_post("/upgrade", upgrade)
