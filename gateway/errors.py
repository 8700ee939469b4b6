"""Answers the traffic listener produces itself (its refusals, maintenance mode, queue
tickets, the public status page): status, headers and a whole body, serialised in one
write. The gateway's own errors are short JSON bodies that carry the request id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_TITLES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
           408: "request_timeout", 413: "body_too_large", 429: "rate_limited",
           431: "headers_too_large", 502: "bad_gateway", 503: "unavailable",
           504: "gateway_timeout", 505: "http_version_not_supported"}
@dataclass(slots=True)
class Answer:
    """A whole answer: the connection adds Date, Content-Length and Connection."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None
    #: Close the connection after this answer (refused framing, a body left unread).
    close: bool = False

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def __repr__(self) -> str:
        return f"<Answer {self.status} {len(self.body)} bytes{' close' if self.close else ''}>"


def json_answer(data: Any, status: int = 200, *, headers: list[tuple[str, str]] | None = None,
                close: bool = False) -> Answer:
    return Answer(status, json.dumps(data, separators=(",", ":")).encode(), headers or [],
                  "application/json", close)


def error_response(status: int, message: str, request_id: str, *, error: str | None = None,
                   retry_after: float | None = None, close: bool = False) -> Answer:
    body = {"error": error or _TITLES.get(status, "error"), "message": message,
            "request_id": request_id}
    headers = [("X-Request-Id", request_id)]
    if retry_after is not None:
        headers.append(("Retry-After", str(max(1, int(retry_after + 0.999)))))
    if status == 405:
        headers.append(("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"))
    return json_answer(body, status, headers=headers, close=close)
