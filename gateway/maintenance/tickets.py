"""Queue tickets: a queued write's status URL on the traffic listener, and how a replayed
write's stored answer is shown."""

from __future__ import annotations

import base64
from typing import Any

from gateway.errors import Answer, error_response, json_answer
from gateway.headers import RESPONSE_DROP
from gateway.queue.store import DONE, FAILED, QUEUED, Entry, QueueStore


async def ticket_status(queue: QueueStore, method: str, ticket: str,
                        request_id: str) -> Answer:
    if method not in ("GET", "HEAD"):
        return error_response(405, "ticket status is read-only", request_id)
    entry = await queue.get(ticket) if ticket else None
    if entry is None:
        return error_response(404, "unknown ticket, or its result has expired", request_id)
    body: dict[str, Any] = {"ticket": ticket, "status": entry.status,
                            "created": entry.created, "attempts": entry.attempts}
    if entry.status == QUEUED:
        body["position"] = await queue.position(entry)
        if entry.error:
            body["last_error"] = entry.error
    elif entry.status == DONE:
        body["result"] = result_json(entry)
        body["finished"] = entry.finished
    elif entry.status == FAILED:
        body["error"] = entry.error
        body["finished"] = entry.finished
    return json_answer(body, headers=[("X-Request-Id", request_id)])


def result_json(entry: Entry) -> dict[str, Any]:
    result: dict[str, Any] = {"status": entry.result_status,
                              "headers": dict(entry.result_headers or [])}
    body = entry.result_body or b""
    try:
        result["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        result["body_base64"] = base64.b64encode(body).decode()
    return result


def result_response(entry: Entry, request_id: str) -> Answer:
    """A write replayed while its client waited (``live_wait``): the node's own answer."""
    keep = [(k, v) for k, v in entry.result_headers or []
            if k.lower().encode() not in RESPONSE_DROP and k.lower() != "x-request-id"]
    keep += [("X-Request-Id", request_id), ("X-Queue-Ticket", entry.ticket)]
    return Answer(entry.result_status or 200, entry.result_body or b"", keep)
