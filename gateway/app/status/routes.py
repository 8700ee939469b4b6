"""The status page as HTTP answers: HTML and JSON, admin (everything) and public (service
level). The admin listener routes them in gateway.app.admin.status; the traffic listener
serves the public ones when ``status.public`` is on."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.app.parts import Parts
from gateway.app.status.data import status_data
from gateway.app.status.page import render_page
from gateway.errors import Answer

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            # Inline CSS only: no scripts, no external anything.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src data:; frame-ancestors 'none'"}


def html_response(gw: Parts, *, public: bool) -> web.Response:
    page = render_page(status_data(gw, public=public,
                                   stats=None if public else gw.stats.sample()))
    return web.Response(text=page, content_type="text/html", headers=_HEADERS)


def json_response(gw: Parts, *, public: bool) -> web.Response:
    body = json.dumps(status_data(gw, public=public,
                                  stats=None if public else gw.stats.sample()), default=str)
    return web.Response(text=body, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def public_html(gw: Parts) -> Answer:
    """The public page as the traffic listener serves it (``status.public``)."""
    page = render_page(status_data(gw, public=True))
    return Answer(200, page.encode(), list(_HEADERS.items()), "text/html; charset=utf-8")


def public_json(gw: Parts) -> Answer:
    body = json.dumps(status_data(gw, public=True), default=str).encode()
    return Answer(200, body, [("Cache-Control", "no-store")], "application/json")
