"""What every admin route shares: the app key, JSON helpers, and the middlewares: errors as
JSON; the Host and Origin a browser sends checked against DNS rebinding; a bearer token,
compared in constant time, for every mutation (and every read with ``admin.read_token``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.app.fleet import NotLeader, NotReplicated
from gateway.app.parts import Parts
from gateway.node import Node

log = logging.getLogger("hagw.admin")

GATEWAY: web.AppKey[Parts] = web.AppKey("gateway")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Always open: a load balancer or an orchestrator asks these without a token.
_PROBES = frozenset({"/healthz", "/readyz"})
#: Set on a request that carried a valid token (admin or read): it may see deploy output.
AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("authenticated", bool)

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


def _bearer(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def _matches(given: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mutations need the admin token; reads need nothing, or admin.read_token (or the
    admin token) when it is set. A request with a valid token is marked AUTHENTICATED."""
    admin = request.app[GATEWAY].config.admin
    given = _bearer(request)
    read = request.method in _READ_METHODS
    if given is not None and (_matches(given, admin.token)
                              or (read and _matches(given, admin.read_token))):
        request[AUTHENTICATED] = True
        if not read and request.app[GATEWAY].state_released:
            # The moment of an upgrade when both supervisors accept on the admin socket.
            return web.json_response({"error": "handing_over", "message": "this gateway is "
                                      "handing over to a new process (an upgrade); retry in "
                                      "a moment"}, status=503, headers={"Retry-After": "1"})
        return await handler(request)
    if read and (admin.read_token is None or request.path in _PROBES):
        return await handler(request)
    needed = "admin.read_token (or the admin token)" if read else "the admin token"
    if given is None:
        return web.json_response({"error": "unauthorized", "message": "this call needs "
                                  f"Authorization: Bearer <{needed}>"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="hagw-admin"'})
    return web.json_response({"error": "forbidden", "message": f"wrong token: this call "
                                                              f"needs {needed}"}, status=403)


def authenticated(request: web.Request) -> bool:
    """The request carried a valid admin or read token."""
    return bool(request.get(AUTHENTICATED, False))


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """DNS rebinding: a web page whose name an attacker points at 127.0.0.1 could reach a
    plain-HTTP admin listener from a browser, so its Host must be an IP address,
    localhost, admin.listen's host or one of admin.hosts; and a browser's cross-origin
    request (an Origin for another host) is refused. With admin.tls the certificate
    already stops it."""
    admin = request.app[GATEWAY].config.admin
    if admin.tls is None:
        allowed = {"localhost", admin.listen.host.lower(), *(h.lower() for h in admin.hosts)}
        host = _hostname(request.headers.get("Host", ""))
        if host is None or not (host in allowed or _is_ip(host)):
            return web.json_response({"error": "forbidden", "message": "this Host is not "
                                      "one the admin API answers to (admin.hosts)"},
                                     status=403)
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1].lower() \
            != request.headers.get("Host", "").lower():
        return web.json_response({"error": "forbidden", "message": "cross-origin requests "
                                  "are refused"}, status=403)
    return await handler(request)


def _hostname(host: str) -> str | None:
    """The name part of a Host header, lower case (None if malformed)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else None
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def hide_server(request: web.Request, response: web.StreamResponse) -> None:
    """No ``Server: Python/3.x aiohttp/3.x``: what runs the API is nobody's business."""
    response.headers.popall("Server", None)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotReplicated as exc:
        # The fleet's shared state cannot take the change: nothing was changed anywhere.
        return web.json_response({"error": "not_replicated", "message": str(exc)},
                                 status=503, headers={"Retry-After": "5"})
    except NotLeader as exc:
        return web.json_response({"error": "not_leader", "message": str(exc)}, status=409)
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
