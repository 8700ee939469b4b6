"""Maintenance mode on the traffic listener, for whole-fleet windows.

Reads (GET/HEAD and ``read_routes``) get 503 with ``Retry-After`` set to the window's
end. Writes on ``queue_routes`` are made durable in the queue before the answer, a 202
with a ticket whose status URL lives on this listener. Other writes get 503. After the
window, queued writes are replayed first and new writes on queue routes join the back
of the line, so nobody overtakes an earlier user.

The control plane (monitor.maintenance) decides the phase; this is only its face.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.admission import Admission
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.schema import MaintenanceConfig, OverloadConfig
from gateway.errors import Answer, error_response, json_answer
from gateway.events import Event, Publish
from gateway.maintenance.intake import BodyRefused, read_entry
from gateway.maintenance.page import unavailable
from gateway.maintenance.routes import RouteSet
from gateway.maintenance.tickets import NO_STORE, result_response, ticket_status
from gateway.queue.store import DONE, ClientOverQuota, Entry, QueueFull, QueueStore
from gateway.request import Request

MAINTENANCE = "maintenance"  # how these answers count for the SLO (see monitor.slo)


class Phase(enum.StrEnum):
    NORMAL = "normal"
    #: A whole-fleet window is on.
    ACTIVE = "active"
    #: The window is over; the nodes are being verified before replay.
    RECOVERING = "recovering"
    #: Queued writes are replayed; new queue-route writes wait behind them.
    REPLAYING = "replaying"

    @property
    def planned(self) -> bool:
        """Out of service on purpose: refusals now are planned, not an outage."""
        return self in (Phase.ACTIVE, Phase.RECOVERING)


@dataclass(frozen=True, slots=True)
class ModeChanged(Event):
    """Maintenance mode or the advisory header changed (workers must follow)."""


@dataclass(frozen=True, slots=True)
class WriteQueued(Event):
    """A write was committed to the queue (its client gets a 202 next)."""

    entry: Entry


class ReplayWaiter(Protocol):
    """The replay (in the control plane), as a write queued during it needs it."""

    def ensure_running(self) -> None: ...

    async def wait_result(self, ticket: str, timeout: float) -> Entry | None: ...


class MaintenanceMode:
    def __init__(self, config: MaintenanceConfig, queue: QueueStore, replay: ReplayWaiter,
                 publish: Publish, *, body_timeout: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.queue = queue
        self.replay = replay
        self.publish = publish
        self.body_timeout = body_timeout
        #: maintenance.queue_rate_limit: per-client buckets on queued writes (per process).
        self.limiter = Admission(config.queue_rate_limit.buckets, OverloadConfig(max_requests=0),
                                 clock)
        self._phase = Phase.NORMAL
        self._window: dict[str, Any] | None = None
        #: The public status page (``status.public``), linked from the 503 page.
        self.status_url: str | None = None
        self.configure(config)

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, value: Phase) -> None:
        if value is not self._phase:
            self._phase = value
            self.publish(ModeChanged())

    @property
    def window(self) -> dict[str, Any] | None:
        """The window behind ACTIVE/RECOVERING: id, reason and end (Unix seconds)."""
        return self._window

    @window.setter
    def window(self, value: dict[str, Any] | None) -> None:
        if value != self._window:
            self._window = value
            self.publish(ModeChanged())

    def configure(self, config: MaintenanceConfig, body_timeout: float | None = None) -> None:
        self.config = config
        if body_timeout is not None:
            self.body_timeout = body_timeout
        self.queue_routes = RouteSet(config.queue_routes)
        self.read_routes = RouteSet(config.read_routes)
        self._ticket_prefix = config.ticket_path + "/"
        self._keep = frozenset(h.lower().encode("latin-1") for h in config.store_headers)
        self.limiter.configure(config.queue_rate_limit.buckets, OverloadConfig(max_requests=0))

    def is_queue_route(self, method: str, path: str) -> bool:
        return self.queue_routes.matches(method, path)

    def __repr__(self) -> str:
        return f"<MaintenanceMode {self.phase.value} queue_routes={len(self.queue_routes)}>"

    # -- the LocalRoute ------------------------------------------------------------------

    def matches(self, request: Request) -> bool:
        return self.phase is not Phase.NORMAL or request.path.startswith(self._ticket_prefix)

    async def answer(self, request: Request,
                     request_id: str) -> tuple[Answer, str | None] | None:
        if request.path.startswith(self._ticket_prefix):
            ticket = request.path[len(self._ticket_prefix):]
            return await ticket_status(self.queue, request.method, ticket, request_id,
                                       request.headers.get("Authorization") or None), None
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
        read = method in ("GET", "HEAD") or self.read_routes.matches(method, path)
        window = self.window or {}
        return unavailable(request, request_id, reason=window.get("reason",
                                                                  "planned maintenance"),
                           end=window.get("end"), retry_after=self._retry_after(),
                           coming_back=phase is not Phase.ACTIVE, read=read,
                           status_url=self.status_url), MAINTENANCE

    def _retry_after(self) -> float:
        if self.phase is Phase.ACTIVE and self.window is not None:
            return max(1.0, float(self.window["end"]) - time.time())
        return 5.0  # recovering: the nodes are being verified

    async def _enqueue(self, request: Request, request_id: str,
                       wait: bool) -> tuple[Answer, str | None]:
        limiter = self.limiter
        refused = limiter.admit(request.client)
        if refused is not None:
            return error_response(429, f"{refused.message} (maintenance.queue_rate_limit); "
                                       "nothing was accepted", request_id,
                                  retry_after=refused.retry_after, close=True), None
        try:
            return await self._accept(request, request_id, wait)
        finally:
            limiter.done(request.client)

    async def _accept(self, request: Request, request_id: str,
                      wait: bool) -> tuple[Answer, str | None]:
        try:
            entry = await read_entry(request, request_id, limit=self.config.max_queued_body,
                                     timeout=self.body_timeout, keep=self._keep)
        except BodyRefused as refused:
            return refused.response, None
        try:
            entry = await self.queue.enqueue(entry)
        except ClientOverQuota as exc:
            return error_response(429, f"{exc}; nothing was accepted, retry after the "
                                       "replay", request_id,
                                  retry_after=self._retry_after()), None
        except QueueFull as exc:
            return error_response(503, f"{exc}; nothing was accepted, retry later",
                                  request_id, retry_after=self._retry_after()), MAINTENANCE
        self.publish(WriteQueued(entry))
        if wait:
            self.replay.ensure_running()
            done = await self.replay.wait_result(entry.ticket, self.config.live_wait)
            if done is not None and done.status == DONE and done.result_status is not None:
                return result_response(done, request_id), None
        location = f"{self.config.ticket_path}/{entry.ticket}"
        body = {"status": "queued", "ticket": entry.ticket, "position": entry.position,
                "status_url": location, "request_id": request_id}
        if self.window is not None and self.phase is not Phase.REPLAYING:
            body["replay_after"] = self.window.get("end")
        return json_answer(body, 202, headers=[("Location", location),
                                               ("X-Request-Id", request_id), NO_STORE]), \
            MAINTENANCE
