"""Queue tickets: a queued write's status URL on the traffic listener, and how a replayed
write's stored answer is shown.

A ticket is a bearer credential for its write's result (128 random bits): it is shown
to its client alone (the 202, ``Location``), never sent to a node or written to a log,
and every answer about it says ``Cache-Control: no-store``. A write sent with
``Authorization`` is bound to it as well: the result is shown only to a ticket request
that carries the same ``Authorization``; anyone else holding the ticket sees the status
alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from gateway.errors import Answer, error_response, json_answer
from gateway.headers import RESPONSE_HIDDEN
from gateway.queue.store import (
    DONE,
    FAILED,
    QUEUED,
    Entry,
    QueueStore,
    QueueUnavailable,
    stored_result_headers,
)

#: On every answer about a ticket: it is one client's, and nothing in between may keep it.
NO_STORE = ("Cache-Control", "no-store")


def owner_of(ticket: str, authorization: str | None) -> str | None:
    """A digest of the credentials a write was sent with, salted with its ticket (None
    without any)."""
    if not authorization:
        return None
    return hashlib.sha256(f"hagw-ticket\0{ticket}\0{authorization}".encode()).hexdigest()


def _is_owner(entry: Entry, authorization: str | None) -> bool:
    if entry.owner is None:
        return True
    given = owner_of(entry.ticket, authorization)
    return given is not None and hmac.compare_digest(given, entry.owner)


async def ticket_status(queue: QueueStore, method: str, ticket: str, request_id: str,
                        authorization: str | None = None) -> Answer:
    headers = [("X-Request-Id", request_id), NO_STORE]
    if method not in ("GET", "HEAD"):
        answer = error_response(405, "ticket status is read-only", request_id)
        answer.headers.append(NO_STORE)
        return answer
    try:
        entry = await queue.get(ticket) if ticket else None
        position = await queue.position(entry) if entry is not None and \
            entry.status == QUEUED else None
    except QueueUnavailable as exc:
        answer = error_response(503, f"{exc}; ask again shortly", request_id,
                                retry_after=1)
        answer.headers.append(NO_STORE)
        return answer
    if entry is None:
        answer = error_response(404, "unknown ticket, or its result has expired", request_id)
        answer.headers.append(NO_STORE)
        return answer
    body: dict[str, Any] = {"ticket": ticket, "status": entry.status,
                            "created": entry.created, "attempts": entry.attempts}
    if entry.status == QUEUED:
        body["position"] = position
        if entry.error:
            body["last_error"] = entry.error
    elif entry.status == DONE:
        if _is_owner(entry, authorization):
            body["result"] = result_json(entry)
        else:
            body["result_withheld"] = ("the write was sent with Authorization: ask with "
                                       "the same to see its result")
        body["finished"] = entry.finished
    elif entry.status == FAILED:
        body["error"] = entry.error
        body["finished"] = entry.finished
    return json_answer(body, headers=headers)


def result_json(entry: Entry) -> dict[str, Any]:
    result: dict[str, Any] = {"status": entry.result_status,
                              "headers": dict(stored_result_headers(entry.result_headers or []))}
    body = entry.result_body or b""
    try:
        result["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        result["body_base64"] = base64.b64encode(body).decode()
    return result


def result_response(entry: Entry, request_id: str) -> Answer:
    """A write replayed while its client waited (``live_wait``): the node's own answer."""
    keep = [(k, v) for k, v in entry.result_headers or []
            if k.lower().encode() not in RESPONSE_HIDDEN and k.lower() != "x-request-id"]
    keep += [("X-Request-Id", request_id), ("X-Queue-Ticket", entry.ticket)]
    return Answer(entry.result_status or 200, entry.result_body or b"", keep)
