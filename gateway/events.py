"""The bounded event history behind ``GET /events``: node transitions, drains, deploy steps...

Subscribers (metrics, incidents, logs) see every event as it is recorded; the
history itself keeps only the newest ``capacity`` events.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("hagw.events")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    at: float
    kind: str
    message: str
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "at": self.at, "kind": self.kind,
                               "message": self.message}
        if self.node is not None:
            out["node"] = self.node
        if self.data:
            out["data"] = self.data
        return out


Subscriber = Callable[[Event], None]


class EventLog:
    def __init__(self, capacity: int = 1000, clock: Clock = SYSTEM_CLOCK) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._subscribers: list[Subscriber] = []
        self.clock = clock

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def record(self, kind: str, message: str, *, node: str | None = None,
               level: int = logging.INFO, **data: Any) -> Event:
        event = Event(next(self._ids), self.clock.time(), kind, message, node, data)
        self._events.append(event)
        log.log(level, "%s%s: %s", kind, f" {node}" if node else "", message)
        for fn in self._subscribers:
            fn(event)
        return event

    def since(self, after: int = 0, limit: int = 100, kind: str | None = None,
              node: str | None = None) -> list[Event]:
        picked = [e for e in self._events if e.id > after
                  and (kind is None or e.kind == kind or e.kind.startswith(kind + "."))
                  and (node is None or e.node == node)]
        return picked[-limit:] if limit else picked

    def __len__(self) -> int:
        return len(self._events)

    def __repr__(self) -> str:
        return f"<EventLog {len(self._events)} events>"
