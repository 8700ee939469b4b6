"""The answer to a request a whole-fleet window refuses: JSON, or an HTML page for
browsers, with ``Retry-After`` set to the window's end."""

from __future__ import annotations

import html
from typing import Protocol

from gateway.clock import strftime_utc
from gateway.errors import Answer, error_response


class Asking(Protocol):
    """What of a request the page looks at."""

    @property
    def headers(self) -> _Headers: ...


class _Headers(Protocol):
    def get(self, name: str, default: str = "") -> str: ...

#: The maintenance page may show nothing but itself: no scripts, no external anything.
PAGE_HEADERS = [("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                            "frame-ancestors 'none'"),
                ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]


def unavailable(request: Asking, request_id: str, *, reason: str, end: float | None,
                retry_after: float, coming_back: bool, read: bool,
                status_url: str | None = None) -> Answer:
    until = strftime_utc("%Y-%m-%d %H:%M UTC", end) if end else "shortly"
    message = (f"{'Coming back' if coming_back else 'Down'} for maintenance: {reason}. "
               f"Back at {until}."
               + ("" if read else " This request was not accepted; please retry then."))
    accept = request.headers.get("Accept", "")
    if "text/html" in accept and "application/json" not in accept:
        link = (f'<p><a href="{html.escape(status_url)}">Service status</a></p>'
                if status_url else "")
        page = _PAGE.format(reason=html.escape(reason), until=html.escape(until),
                            request_id=html.escape(request_id), status=link)
        return Answer(503, page.encode(), [("Retry-After", str(int(retry_after + 0.999))),
                                           ("X-Request-Id", request_id), *PAGE_HEADERS],
                      "text/html; charset=utf-8")
    answer = error_response(503, message, request_id, error="maintenance",
                            retry_after=retry_after)
    if status_url:
        answer.headers.append(("Link", f'<{status_url}>; rel="status"'))
    return answer


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Down for maintenance</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;
color:#1f2937}}h1{{font-size:1.6rem}}.muted{{color:#6b7280;font-size:.85rem}}</style></head>
<body><h1>Down for planned maintenance</h1><p>{reason}</p>
<p>We expect to be back at <strong>{until}</strong>.</p>{status}
<p class="muted">Request id {request_id}</p></body></html>
"""
