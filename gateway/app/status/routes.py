"""The status page as HTTP answers: HTML, JSON and the Atom feed, admin (everything) and
public (service level). The admin listener routes them in gateway.app.admin.status; the
traffic listener serves the public ones when ``status.public`` is on, rendered here, or
in the supervisor for its workers (``PUBLIC_PAGES``, by kind)."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from gateway.app.parts import Parts
from gateway.app.status.data import status_data
from gateway.app.status.feed import CONTENT_TYPE as ATOM_TYPE
from gateway.app.status.feed import render_feed
from gateway.app.status.page import render_page
from gateway.errors import Answer, error_response

_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            # Inline CSS only: no scripts, no external anything.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src data:; frame-ancestors 'none'"}
#: A feed shown by a browser is XML: nothing in it may run or load.
_FEED_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}


def html_response(gw: Parts, *, public: bool) -> web.Response:
    page = render_page(status_data(gw, public=public,
                                   stats=None if public else gw.stats.sample()))
    return web.Response(text=page, content_type="text/html", headers=_HEADERS)


def json_response(gw: Parts, *, public: bool) -> web.Response:
    body = json.dumps(status_data(gw, public=public,
                                  stats=None if public else gw.stats.sample()), default=str)
    return web.Response(text=body, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def atom_response(gw: Parts, *, public: bool) -> web.Response:
    return web.Response(body=render_feed(status_data(gw, public=public)),
                        headers={**_FEED_HEADERS, "Content-Type": ATOM_TYPE})


def public_html(gw: Parts) -> Answer:
    """The public page as the traffic listener serves it (``status.public``)."""
    page = render_page(status_data(gw, public=True))
    return Answer(200, page.encode(), list(_HEADERS.items()), "text/html; charset=utf-8")


def public_json(gw: Parts) -> Answer:
    body = json.dumps(status_data(gw, public=True), default=str).encode()
    return Answer(200, body, [("Cache-Control", "no-store")], "application/json")


def public_atom(gw: Parts) -> Answer:
    return Answer(200, render_feed(status_data(gw, public=True)),
                  list(_FEED_HEADERS.items()), ATOM_TYPE)


#: The public page's formats by kind (gateway.listener.PAGE_FORMATS names them).
PUBLIC_PAGES: dict[str, Callable[[Parts], Answer]] = {
    "html": public_html, "json": public_json, "atom": public_atom}


def public_page(gw: Parts, kind: str) -> Answer:
    render = PUBLIC_PAGES.get(kind)
    if render is None:
        return error_response(404, f"no status page format {kind!r}", "")
    return render(gw)
