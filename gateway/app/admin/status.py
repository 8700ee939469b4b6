"""The full status page on the admin listener: GET /status (HTML) and /status.json."""

from __future__ import annotations

from aiohttp import web

from gateway.app.admin.core import GATEWAY
from gateway.app.status.routes import html_response, json_response


async def admin_page(request: web.Request) -> web.Response:
    return html_response(request.app[GATEWAY], public=False)


async def admin_json(request: web.Request) -> web.Response:
    return json_response(request.app[GATEWAY], public=False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/status", admin_page)
    app.router.add_get("/status.json", admin_json)
