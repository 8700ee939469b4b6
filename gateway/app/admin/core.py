"""What every admin route shares: the app key, JSON helpers, and the two middlewares
(errors as JSON; a bearer token, compared in constant time, for every mutation)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.app.parts import Parts
from gateway.node import Node

log = logging.getLogger("hagw.admin")

GATEWAY: web.AppKey[Parts] = web.AppKey("gateway")
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
    if request.app[GATEWAY].state_released:
        # The moment of an upgrade when both supervisors accept on the admin socket.
        return web.json_response({"error": "handing_over", "message": "this gateway is "
                                  "handing over to a new process (an upgrade); retry in a "
                                  "moment"}, status=503, headers={"Retry-After": "1"})
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
