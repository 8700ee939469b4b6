"""Maintenance mode on the traffic listener, for whole-fleet windows.

Reads (GET/HEAD and ``read_routes``) get 503 with ``Retry-After`` set to the
window's end. Writes on ``queue_routes`` are made durable in the queue before the
answer, a 202 with a ticket whose status URL lives on this listener. Other writes
get 503. After the window, queued writes are replayed first and new writes on
queue routes join the back of the line, so nobody overtakes an earlier user.
"""

from __future__ import annotations

import asyncio
import enum
import html
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.config.schema import MaintenanceConfig, RouteMatch
from gateway.errors import error_response
from gateway.headers import HOP_BY_HOP, RESPONSE_DROP, connection_tokens
from gateway.queue.replay import Replayer
from gateway.queue.store import DONE, FAILED, QUEUED, Entry, QueueFull, QueueStore

if TYPE_CHECKING:
    from gateway.runtime import Gateway

MAINTENANCE = "maintenance"  # how these answers count for the SLO (see gateway.slo)
_NOT_STORED = HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for", b"x-request-id"}


class Phase(enum.StrEnum):
    NORMAL = "normal"
    #: A whole-fleet window is on.
    ACTIVE = "active"
    #: The window is over; the nodes are being verified before replay.
    RECOVERING = "recovering"
    #: Queued writes are replayed; new queue-route writes wait behind them.
    REPLAYING = "replaying"


def compile_route(route: RouteMatch) -> tuple[str, re.Pattern[str]]:
    pattern = re.escape(route.path).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return route.method, re.compile(pattern + r"/?")


class MaintenanceMode:
    def __init__(self, gateway: Gateway, queue: QueueStore, replayer: Replayer) -> None:
        self.gw = gateway
        self.queue = queue
        self.replayer = replayer
        self.phase = Phase.NORMAL
        #: The window behind ACTIVE/RECOVERING: id, reason and end (Unix seconds).
        self.window: dict[str, Any] | None = None
        self.configure(gateway.config.maintenance)

    def configure(self, config: MaintenanceConfig) -> None:
        self.config = config
        self._queue_routes = [compile_route(r) for r in config.queue_routes]
        self._read_routes = [compile_route(r) for r in config.read_routes]
        self._ticket_prefix = config.ticket_path + "/"

    @staticmethod
    def _matches(routes: list[tuple[str, re.Pattern[str]]], method: str, path: str) -> bool:
        return any((m == "*" or m == method) and p.fullmatch(path) for m, p in routes)

    def is_queue_route(self, method: str, path: str) -> bool:
        return self._matches(self._queue_routes, method, path)

    # -- the LocalRoute ------------------------------------------------------------------

    def matches(self, request: web.BaseRequest) -> bool:
        return self.phase is not Phase.NORMAL or request.path.startswith(self._ticket_prefix)

    async def answer(self, request: web.BaseRequest,
                     request_id: str) -> tuple[web.StreamResponse, str | None] | None:
        if request.path.startswith(self._ticket_prefix):
            return await self._ticket(request, request.path[len(self._ticket_prefix):],
                                      request_id), None
        phase = self.phase
        if phase is Phase.NORMAL:
            return None
        method, path = request.method, request.path
        queued = self.is_queue_route(method, path)
        if phase is Phase.REPLAYING:
            if not queued:
                return None
            return await self._enqueue(request, request_id, wait=True)
        if queued:
            return await self._enqueue(request, request_id, wait=False)
        read = method in ("GET", "HEAD") or self._matches(self._read_routes, method, path)
        return self._unavailable(request, request_id, read), MAINTENANCE

    def _retry_after(self) -> float:
        if self.phase is Phase.ACTIVE and self.window is not None:
            return max(1.0, float(self.window["end"]) - time.time())
        return 5.0  # recovering: the nodes are being verified

    def _unavailable(self, request: web.BaseRequest, request_id: str,
                     read: bool) -> web.Response:
        window = self.window or {}
        retry_after = self._retry_after()
        reason = window.get("reason", "planned maintenance")
        end = window.get("end")
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end)) if end else "shortly"
        message = (f"{'Down' if self.phase is Phase.ACTIVE else 'Coming back'} for "
                   f"maintenance: {reason}. Back at {until}."
                   + ("" if read else " This request was not accepted; please retry then."))
        accept = request.headers.get("Accept", "")
        if "text/html" in accept and "application/json" not in accept:
            page = _PAGE.format(reason=html.escape(reason), until=html.escape(until),
                                request_id=html.escape(request_id))
            return web.Response(status=503, text=page, content_type="text/html", headers={
                "Retry-After": str(int(retry_after + 0.999)), "X-Request-Id": request_id})
        response = error_response(503, message, request_id, error="maintenance",
                                  retry_after=retry_after)
        return response

    async def _enqueue(self, request: web.BaseRequest, request_id: str,
                       wait: bool) -> tuple[web.StreamResponse, str | None]:
        limit = self.config.max_queued_body
        if request.content_length is not None and request.content_length > limit:
            return error_response(413, f"a queued request body may be at most {limit} bytes",
                                  request_id), None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.gw.config.limits.client_body_timeout):
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        return error_response(413, f"a queued request body may be at most "
                                                   f"{limit} bytes", request_id,
                                              close=True), None
                    chunks.append(chunk)
        except TimeoutError:
            return error_response(408, "the request body did not arrive in time", request_id,
                                  close=True), None
        ticket = secrets.token_urlsafe(16)
        entry = Entry(ticket=ticket, created=time.time(), method=request.method,
                      target=request.raw_path, headers=_stored_headers(request, request_id),
                      body=b"".join(chunks),
                      idempotency_key=request.headers.get("Idempotency-Key") or ticket)
        try:
            entry = await self.queue.enqueue(entry)
        except QueueFull as exc:
            return error_response(503, f"{exc}; nothing was accepted, retry later",
                                  request_id, retry_after=self._retry_after()), MAINTENANCE
        self.gw.maintenance.queued(entry)
        if wait:
            self.replayer.ensure_running()
            done = await self.replayer.wait_result(ticket, self.config.live_wait)
            if done is not None and done.status == DONE and done.result_status is not None:
                return _result_response(done, request_id), None
        location = f"{self.config.ticket_path}/{ticket}"
        body = {"status": "queued", "ticket": ticket, "position": entry.position,
                "status_url": location, "request_id": request_id}
        if self.window is not None and self.phase is not Phase.REPLAYING:
            body["replay_after"] = self.window.get("end")
        return web.json_response(body, status=202, headers={
            "Location": location, "X-Request-Id": request_id}), MAINTENANCE

    async def _ticket(self, request: web.BaseRequest, ticket: str,
                      request_id: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "ticket status is read-only", request_id)
        entry = await self.queue.get(ticket) if ticket else None
        if entry is None:
            return error_response(404, "unknown ticket, or its result has expired",
                                  request_id)
        body: dict[str, Any] = {"ticket": ticket, "status": entry.status,
                                "created": entry.created, "attempts": entry.attempts}
        if entry.status == QUEUED:
            body["position"] = await self.queue.position(entry)
            if entry.error:
                body["last_error"] = entry.error
        elif entry.status == DONE:
            body["result"] = _result_json(entry)
            body["finished"] = entry.finished
        elif entry.status == FAILED:
            body["error"] = entry.error
            body["finished"] = entry.finished
        return web.Response(status=200, body=json.dumps(body).encode(),
                            content_type="application/json", headers={"X-Request-Id": request_id})


def _stored_headers(request: web.BaseRequest, request_id: str) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop ones, with the client recorded in XFF."""
    drop = _NOT_STORED | connection_tokens(request.raw_headers)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
               if k.lower() not in drop]
    forwarded = request.headers.get("X-Forwarded-For")
    client = request.remote or ""
    headers.append(("X-Forwarded-For", f"{forwarded}, {client}" if forwarded else client))
    headers.append(("X-Request-Id", request_id))
    return headers


def _result_json(entry: Entry) -> dict[str, Any]:
    result: dict[str, Any] = {"status": entry.result_status,
                              "headers": dict(entry.result_headers or [])}
    body = entry.result_body or b""
    try:
        result["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        result["body_base64"] = base64.b64encode(body).decode()
    return result


def _result_response(entry: Entry, request_id: str) -> web.Response:
    keep = {k: v for k, v in entry.result_headers or []
            if k.lower().encode() not in RESPONSE_DROP}
    keep["X-Request-Id"] = request_id
    keep["X-Queue-Ticket"] = entry.ticket
    return web.Response(status=entry.result_status or 200, body=entry.result_body or b"",
                        headers=keep)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Down for maintenance</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;
color:#1f2937}}h1{{font-size:1.6rem}}.muted{{color:#6b7280;font-size:.85rem}}</style></head>
<body><h1>Down for planned maintenance</h1><p>{reason}</p>
<p>We expect to be back at <strong>{until}</strong>.</p>
<p class="muted">Request id {request_id}</p></body></html>
"""
