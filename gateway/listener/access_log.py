"""The access log: one line per request on the ``hagw.access`` logger, in the Combined Log
Format (Apache's and nginx's ``combined``, with the request id, trace id, duration and
upstream appended) or as one JSON object (``access_log_format: json``).

JSON fields: ``time`` (ISO 8601 UTC), ``client``, ``method``, ``path`` (the target as
sent, query included), ``protocol``, ``status``, ``bytes`` (sent to the client, headers
included), ``duration_ms``, ``upstream_node``, ``upstream_ms`` (until the node's response
headers), ``attempts``, ``request_id``, ``trace_id``, ``user_agent``, ``referer``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

log = logging.getLogger("hagw.access")


@dataclass(slots=True)
class AccessEntry:
    """Filled in while a request is handled (only when the access log is on)."""

    client: str
    method: str
    target: str
    protocol: str
    request_id: str
    trace_id: str
    user_agent: str
    referer: str
    started: float
    bytes_before: int
    upstream_node: str | None = None
    upstream_seconds: float | None = None
    attempts: int = 0

    def json_line(self, status: int, sent: int, seconds: float) -> str:
        return json.dumps({
            "time": _iso(self.started), "client": self.client, "method": self.method,
            "path": self.target, "protocol": self.protocol, "status": status, "bytes": sent,
            "duration_ms": round(seconds * 1000, 3), "upstream_node": self.upstream_node,
            "upstream_ms": (None if self.upstream_seconds is None
                            else round(self.upstream_seconds * 1000, 3)),
            "attempts": self.attempts, "request_id": self.request_id,
            "trace_id": self.trace_id, "user_agent": self.user_agent or None,
            "referer": self.referer or None}, separators=(",", ":"))

    def combined_line(self, status: int, sent: int, seconds: float) -> str:
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(self.started))
        upstream = (f"{self.upstream_node} {self.upstream_seconds * 1000:.1f}ms"
                    if self.upstream_node and self.upstream_seconds is not None else "-")
        return (f'{self.client} - - [{stamp}] "{_q(self.method)} {_q(self.target)} '
                f'HTTP/{self.protocol}" {status} {sent} "{_q(self.referer) or "-"}" '
                f'"{_q(self.user_agent) or "-"}" rid={self.request_id} '
                f"trace={self.trace_id} {seconds * 1000:.1f}ms upstream={upstream}")

    def write(self, fmt: str, status: int, sent: int, seconds: float) -> None:
        line = (self.json_line if fmt == "json" else self.combined_line)(status, sent, seconds)
        log.info(line)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def _q(text: str) -> str:
    """A quoted field of the combined format: no quote or control character gets in."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else f"\\x{ord(c):02x}"
                   for c in text)
