"""Serving the status page: HTML and JSON, admin (everything) and public (service level)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.status.data import status_data
from gateway.status.page import render_page

if TYPE_CHECKING:
    from gateway.runtime import Gateway

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            # Inline CSS only: no scripts, no external anything.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src data:; frame-ancestors 'none'"}


def html_response(gw: Gateway, *, public: bool) -> web.Response:
    page = render_page(status_data(gw, public=public))
    return web.Response(text=page, content_type="text/html", headers=_HEADERS)


def json_response(gw: Gateway, *, public: bool) -> web.Response:
    body = json.dumps(status_data(gw, public=public), default=str)
    return web.Response(text=body, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def admin_page(request: web.Request) -> web.Response:
    from gateway.admin import GATEWAY

    return html_response(request.app[GATEWAY], public=False)


async def admin_json(request: web.Request) -> web.Response:
    from gateway.admin import GATEWAY

    return json_response(request.app[GATEWAY], public=False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/status", admin_page)
    app.router.add_get("/status.json", admin_json)


class PublicStatus:
    """The LocalRoute serving the public page on the traffic listener (status.public)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def matches(self, request: web.BaseRequest) -> bool:
        config = self.gw.config.status
        return config.public and request.path.startswith(config.path)

    async def answer(self, request: web.BaseRequest,
                     request_id: str) -> tuple[web.StreamResponse, str | None] | None:
        config = self.gw.config.status
        if request.method not in ("GET", "HEAD"):
            return None
        if request.path == config.path:
            return html_response(self.gw, public=True), None
        if request.path == config.path + ".json":
            return json_response(self.gw, public=True), None
        return None
