"""Events: one typed observer mechanism, and the bounded history behind ``GET /events``.

Whatever happens (a node changes, a drain is refused, a deploy step ends) is published
once, as one object, on an ``EventBus``. Subscribers ask for a type and get it and its
subclasses: the cluster reacts to ``NodeChanged``, metrics count ``NodeEjected``, the
incident watcher reads typed fields (never parses a message). ``EventLog`` is one more
subscriber: it keeps what each event says of itself (``Event.log_entry``) for operators.

The bus is synchronous and re-entrant: a handler may publish, and that event is
delivered before ``publish`` returns. So state changes stay in small synchronous
methods with no ``await`` inside, as the rest of the kernel.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("hagw.events")

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True)
class Entry:
    """What the event history keeps of one event: a kind, a sentence, the node it is about."""

    kind: str
    message: str
    node: str | None = None
    level: int = logging.INFO
    data: dict[str, Any] = field(default_factory=dict)


class Event:
    """The base of everything published on the bus."""

    __slots__ = ()

    def log_entry(self) -> Entry | None:
        """What ``GET /events`` shows of this event, or None for internal news."""
        return None


@dataclass(frozen=True, slots=True)
class News(Event):
    """An event that is only news for people: nothing subscribes to it by type."""

    kind: str
    message: str
    node: str | None = None
    level: int = logging.INFO
    data: dict[str, Any] = field(default_factory=dict)

    def log_entry(self) -> Entry:
        return Entry(self.kind, self.message, self.node, self.level, self.data)


Handler = Callable[[Any], None]
Publish = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Handler]] = {}
        self._cache: dict[type[Event], list[Handler]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call ``handler`` with every event of type ``kind`` (subclasses included), in
        subscription order. Returns the function that unsubscribes it."""
        self._handlers.setdefault(kind, []).append(handler)
        self._cache.clear()

        def unsubscribe() -> None:
            handlers = self._handlers.get(kind, [])
            if handler in handlers:
                handlers.remove(handler)
                self._cache.clear()

        return unsubscribe

    def publish(self, event: Event) -> None:
        handlers = self._cache.get(type(event))
        if handlers is None:
            handlers = self._cache[type(event)] = [
                h for base in type(event).__mro__ if issubclass(base, Event)
                for h in self._handlers.get(base, ())]
        for handler in list(handlers):
            handler(event)

    def __repr__(self) -> str:
        return f"<EventBus {sum(len(h) for h in self._handlers.values())} handlers>"


@dataclass(frozen=True, slots=True)
class Logged:
    """One entry of the history, numbered and stamped when it was published."""

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


class EventLog:
    """The newest ``capacity`` entries, also written to the ``hagw.events`` log."""

    def __init__(self, bus: EventBus, capacity: int = 1000, clock: Clock = SYSTEM_CLOCK) -> None:
        self._entries: deque[Logged] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self.clock = clock
        bus.subscribe(Event, self._on_event)

    def _on_event(self, event: Event) -> None:
        entry = event.log_entry()
        if entry is None:
            return
        logged = Logged(next(self._ids), self.clock.time(), entry.kind, entry.message,
                        entry.node, entry.data)
        self._entries.append(logged)
        log.log(entry.level, "%s%s: %s", entry.kind, f" {entry.node}" if entry.node else "",
                entry.message)

    def since(self, after: int = 0, limit: int = 100, kind: str | None = None,
              node: str | None = None) -> list[Logged]:
        picked = [e for e in self._entries if e.id > after
                  and (kind is None or e.kind == kind or e.kind.startswith(kind + "."))
                  and (node is None or e.node == node)]
        return picked[-limit:] if limit else picked

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<EventLog {len(self._entries)} entries>"
