"""Answers the gateway produces itself: short JSON bodies that carry the request id."""

from __future__ import annotations

import json

from aiohttp import web

_TITLES = {400: "bad_request", 404: "not_found", 408: "request_timeout", 413: "body_too_large",
           429: "rate_limited", 431: "headers_too_large", 502: "bad_gateway",
           503: "unavailable", 504: "gateway_timeout"}


def error_response(status: int, message: str, request_id: str, *, error: str | None = None,
                   retry_after: float | None = None, close: bool = False) -> web.Response:
    body = {"error": error or _TITLES.get(status, "error"), "message": message,
            "request_id": request_id}
    headers = {"X-Request-Id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    resp = web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/json", headers=headers)
    if close:
        resp.force_close()
    return resp
