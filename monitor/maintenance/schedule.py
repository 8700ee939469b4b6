"""Maintenance windows and what is due when: announcements, start, end.

Synchronous, with an injectable clock: ``due()`` says what should happen now,
``apply()`` records that it did, ``next_deadline()`` says when to look again.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.clock import Clock
from gateway.units import format_duration

SCHEDULED, ACTIVE, ENDED, CANCELLED = "scheduled", "active", "ended", "cancelled"


def iso(ts: float) -> str:
    # isoformat, not strftime: glibc's %Y does not pad years before 1000 to four digits.
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


@dataclass
class Window:
    id: str
    start: float
    end: float
    reason: str
    #: Node names; empty for the whole fleet.
    nodes: tuple[str, ...] = ()
    source: str = "api"
    status: str = SCHEDULED
    #: Announcements sent, by key: "scheduled", "before:3600", "started", "ended".
    announced: list[str] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    #: When it was scheduled and, if so, cancelled (None in records from before 0.2).
    created_at: float | None = None
    cancelled_at: float | None = None

    @property
    def whole_fleet(self) -> bool:
        return not self.nodes

    @property
    def scope(self) -> str:
        return "whole fleet" if self.whole_fleet else ", ".join(self.nodes)

    @property
    def updated_at(self) -> float:
        """Its last change: scheduled, started, ended or cancelled."""
        times = [t for t in (self.created_at, self.started_at, self.ended_at,
                             self.cancelled_at) if t is not None]
        return max(times) if times else self.start

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = list(self.nodes)
        data["start_iso"], data["end_iso"] = iso(self.start), iso(self.end)
        data["scope"] = self.scope
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Window:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["nodes"] = tuple(fields.get("nodes", ()))
        return cls(**fields)

    def __repr__(self) -> str:
        return f"<Window {self.id} {self.status} {iso(self.start)}/{iso(self.end)} {self.scope}>"


@dataclass(frozen=True, slots=True)
class Due:
    #: announce, start or end
    kind: str
    window: Window
    #: For announcements: the key recorded in window.announced.
    key: str = ""

    @property
    def lead(self) -> float | None:
        return float(self.key.split(":", 1)[1]) if self.key.startswith("before:") else None


class Schedule:
    def __init__(self, lead_times: tuple[float, ...], clock: Clock) -> None:
        self.lead_times = tuple(sorted(lead_times, reverse=True))
        self.clock = clock
        self.windows: dict[str, Window] = {}

    def add(self, start: float, duration: float, reason: str, nodes: tuple[str, ...] = (),
            source: str = "api", window_id: str | None = None) -> Window:
        if not duration > 0:  # NaN too
            raise ValueError("expected a duration above zero")
        try:
            iso(start), iso(start + duration)
        except (OverflowError, ValueError, OSError):
            raise ValueError("expected a window that starts and ends between the years 1 "
                             "and 9999") from None
        now = self.clock.time()
        if start + duration <= now:
            raise ValueError(f"the window ends in the past ({iso(start + duration)})")
        if source != "config":
            clash = self.overlapping(start, start + duration, tuple(nodes))
            if clash is not None:
                raise ValueError(f"overlaps window {clash.id} ({iso(clash.start)} to "
                                 f"{iso(clash.end)}, {clash.scope}): cancel or end it first")
        window = Window(window_id or f"mw-{secrets.token_hex(3)}", start, start + duration,
                        reason, tuple(nodes), source, created_at=now)
        # Reminders whose time has already passed are not sent late; "scheduled" covers them.
        window.announced = [f"before:{lead:g}" for lead in self.lead_times
                            if start - lead <= now]
        self.windows[window.id] = window
        return window

    def overlapping(self, start: float, end: float, nodes: tuple[str, ...]) -> Window | None:
        """A scheduled or active window that shares time and nodes with this one (the whole
        fleet shares every node), or None."""
        for window in self.windows.values():
            if window.status not in (SCHEDULED, ACTIVE):
                continue
            if window.start >= end or start >= window.end:
                continue
            if not nodes or window.whole_fleet or set(nodes) & set(window.nodes):
                return window
        return None

    def restore(self, window: Window) -> None:
        self.windows[window.id] = window

    def merge(self, remote: Window) -> Window:
        """Another gateway's copy of a window (a fleet shares them): take what it adds,
        never undo what happened here. A window new here starts as scheduled, so this
        gateway's own schedule starts it (and holds its nodes) when due; a cancellation,
        an earlier end and the announcements sent carry over; times only move earlier."""
        local = self.windows.get(remote.id)
        if local is None:
            if remote.status in (SCHEDULED, ACTIVE):
                local = Window(remote.id, remote.start, remote.end, remote.reason,
                               remote.nodes, remote.source, SCHEDULED,
                               [k for k in remote.announced if k not in ("started", "ended")],
                               created_at=remote.created_at)
            else:
                local = Window.from_json(remote.to_json())
            self.windows[remote.id] = local
            return local
        local.announced += [k for k in remote.announced if k not in local.announced
                            and k not in ("started", "ended")]
        if remote.status == CANCELLED and local.status == SCHEDULED:
            local.status, local.cancelled_at = CANCELLED, remote.cancelled_at
        elif remote.status == ENDED and local.status == SCHEDULED:
            # Over before it began here: it never holds anything on this gateway.
            local.status, local.started_at = ENDED, remote.started_at
            local.ended_at = remote.ended_at
            local.end = min(local.end, remote.ended_at or remote.end)
        elif remote.status == ENDED and local.status == ACTIVE:
            local.end = min(local.end, remote.ended_at or remote.end)
        elif remote.end < local.end and local.status in (SCHEDULED, ACTIVE):
            local.end = remote.end
        return local

    def cancel(self, window_id: str) -> Window:
        window = self.windows[window_id]
        if window.status != SCHEDULED:
            raise ValueError(f"window {window_id} is {window.status}; only a scheduled window "
                             f"can be cancelled (end an active one)")
        window.status = CANCELLED
        window.cancelled_at = self.clock.time()
        return window

    def end_now(self, window_id: str) -> Window:
        window = self.windows[window_id]
        if window.status != ACTIVE:
            raise ValueError(f"window {window_id} is {window.status}, not active")
        window.end = min(window.end, self.clock.time())
        return window

    def due(self) -> list[Due]:
        now = self.clock.time()
        out: list[Due] = []
        for window in sorted(self.windows.values(), key=lambda w: w.start):
            if window.status == SCHEDULED:
                if "scheduled" not in window.announced:
                    out.append(Due("announce", window, "scheduled"))
                if now >= window.start:
                    out.append(Due("start", window))
                    continue
                for lead in self.lead_times:
                    key = f"before:{lead:g}"
                    if now >= window.start - lead and key not in window.announced:
                        out.append(Due("announce", window, key))
                        break  # only the nearest reminder if several are due at once
            elif window.status == ACTIVE and now >= window.end:
                out.append(Due("end", window))
        return out

    def apply(self, due: Due) -> None:
        window, now = due.window, self.clock.time()
        if due.kind == "announce":
            if due.lead is not None:
                # A nearer reminder makes the earlier ones pointless.
                window.announced += [f"before:{lead:g}" for lead in self.lead_times
                                     if lead >= due.lead and f"before:{lead:g}"
                                     not in window.announced]
            elif due.key not in window.announced:
                window.announced.append(due.key)
        elif due.kind == "start":
            window.status, window.started_at = ACTIVE, now
            window.announced.append("started")
        elif due.kind == "end":
            window.status, window.ended_at = ENDED, now
            window.announced.append("ended")

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for window in self.windows.values():
            if window.status == SCHEDULED:
                times.append(window.start)
                times += [window.start - lead for lead in self.lead_times
                          if f"before:{lead:g}" not in window.announced]
            elif window.status == ACTIVE:
                times.append(window.end)
        return min(times) if times else None

    def active(self) -> list[Window]:
        return [w for w in self.windows.values() if w.status == ACTIVE]

    def upcoming(self) -> list[Window]:
        return sorted((w for w in self.windows.values() if w.status == SCHEDULED),
                      key=lambda w: w.start)

    def recent(self, limit: int = 10) -> list[Window]:
        """Ended and cancelled windows, the latest change first."""
        done = (w for w in self.windows.values() if w.status in (ENDED, CANCELLED))
        return sorted(done, key=lambda w: w.updated_at, reverse=True)[:limit]

    def fleet_window(self) -> Window | None:
        """The active whole-fleet window, if any."""
        return next((w for w in self.active() if w.whole_fleet), None)

    def describe(self, window: Window, key: str) -> tuple[str, str]:
        """Title and text of an announcement."""
        span = (f"{iso(window.start)} to {iso(window.end)} "
                f"({format_duration(window.end - window.start)})")
        scope = window.scope
        if key == "scheduled":
            return f"Maintenance scheduled: {window.reason}", f"{span}, {scope}."
        if key.startswith("before:"):
            lead = format_duration(float(key.split(":", 1)[1]))
            return f"Maintenance in {lead}: {window.reason}", f"{span}, {scope}."
        if key == "started":
            return f"Maintenance started: {window.reason}", f"Until {iso(window.end)}, {scope}."
        if key == "ended":
            return f"Maintenance ended: {window.reason}", f"{scope} back in service."
        return f"Maintenance cancelled: {window.reason}", f"{span}, {scope}: cancelled."
