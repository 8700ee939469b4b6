"""The admin API's OpenAPI 3.1 document (``gateway/openapi.json``), served at
``GET /openapi.json``.

The document is written by hand from the handlers and checked against them by
``tests/test_openapi.py``: every route the admin app registers is documented and vice
versa, and schemathesis fuzzes a live gateway with it.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from gateway import __version__

PATH = "/openapi.json"


@cache
def _load() -> dict[str, Any]:
    text = resources.files("gateway.app.admin").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    document["info"]["version"] = __version__
    return document


def document() -> dict[str, Any]:
    """A copy of the document, free to change."""
    return copy.deepcopy(_load())


async def serve(request: web.Request) -> web.Response:
    """The document, with this admin listener as its server (so tools call the right URL)."""
    served = {**_load(), "servers": [{"url": f"{request.scheme}://{request.host}",
                                      "description": "This admin listener"}]}
    return web.Response(text=json.dumps(served, ensure_ascii=False),
                        content_type="application/json",
                        headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, serve)
