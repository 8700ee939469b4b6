"""The full status page on the admin listener: GET /status (HTML), /status.json and its
Atom feed /status.atom."""

from __future__ import annotations

from aiohttp import web

from gateway.app.admin.core import GATEWAY
from gateway.app.status.routes import atom_response, html_response, json_response


async def admin_page(request: web.Request) -> web.Response:
    return html_response(request.app[GATEWAY], public=False)


async def admin_json(request: web.Request) -> web.Response:
    return json_response(request.app[GATEWAY], public=False)


async def admin_feed(request: web.Request) -> web.Response:
    return atom_response(request.app[GATEWAY], public=False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/status", admin_page)
    app.router.add_get("/status.json", admin_json)
    app.router.add_get("/status.atom", admin_feed)
