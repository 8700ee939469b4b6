"""The incident state machine: conditions in, incidents opened, updated and resolved.

Synchronous with an injectable clock. The watcher (``watch.py``) feeds it the
outage conditions that hold right now and the events that happen; the tracker
decides when an incident opens, collects its timeline and impact, and closes it
once every condition has stayed clear for ``resolve_after``.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.clock import Clock
from gateway.config.schema import IncidentConfig

#: Statuspage's incident statuses. An automatic incident opens ``investigating``, turns
#: ``monitoring`` once every condition has cleared, and ``resolved`` after resolve_after.
#: Operators post updates with any of them (``hagw incident update``).
INVESTIGATING, IDENTIFIED, MONITORING, RESOLVED = (
    "investigating", "identified", "monitoring", "resolved")
STATUSES = (INVESTIGATING, IDENTIFIED, MONITORING, RESOLVED)
OPEN_STATUSES = frozenset({INVESTIGATING, IDENTIFIED, MONITORING})
#: What state_dir records written before these statuses said.
_LEGACY_STATUS = {"open": INVESTIGATING}
TIMELINE_LIMIT = 500
#: Most severe first: the title of an incident names its worst condition.
SEVERITY = ("all_nodes_out", "below_min_healthy", "fast_burn", "deploy_failed")
#: Titles for people (the public page shows them); the internal cause is in ``causes``.
TITLES = {
    "all_nodes_out": "Service unavailable",
    "below_min_healthy": "Reduced capacity",
    "fast_burn": "Elevated error rate",
    "deploy_failed": "Errors during a deploy",
}
#: The automatic public updates (no node names, no internal reasons).
_AUTO_TEXT = {
    INVESTIGATING: "We are investigating a problem with the service.",
    MONITORING: "The service has recovered. We are monitoring it.",
    RESOLVED: "This incident has been resolved.",
}


@dataclass
class Incident:
    id: str
    title: str
    opened_at: float
    started_at: float
    status: str = INVESTIGATING
    conditions: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    recovered_at: float | None = None
    resolved_at: float | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    #: SLO totals (good, bad, excluded) and budget left, when it opened and as of now.
    slo_open: list[int] = field(default_factory=lambda: [0, 0, 0])
    slo_now: list[int] = field(default_factory=lambda: [0, 0, 0])
    budget_open: float = 1.0
    budget_now: float = 1.0
    #: Public updates, oldest first: {at, status, text, author}; the public page shows them.
    updates: list[dict[str, Any]] = field(default_factory=list)
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    #: Opened by hand or by the watcher.
    automatic: bool = True

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def severity(self) -> str:
        return "major" if "all_nodes_out" in self.conditions else "partial"

    @property
    def failed(self) -> int:
        return self.slo_now[1] - self.slo_open[1]

    @property
    def counted(self) -> int:
        return (self.slo_now[0] + self.slo_now[1]) - (self.slo_open[0] + self.slo_open[1])

    @property
    def budget_consumed(self) -> float:
        return max(0.0, self.budget_open - self.budget_now)

    def impact(self) -> dict[str, Any]:
        return {"requests_failed": self.failed, "requests_total": self.counted,
                "budget_consumed": self.budget_consumed,
                "detection_seconds": self.opened_at - self.started_at,
                "recovery_seconds": (None if self.recovered_at is None
                                     else self.recovered_at - self.started_at),
                "duration_seconds": ((self.resolved_at or time.time()) - self.started_at)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity
        data["impact"] = self.impact()
        return data

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status,
                "severity": self.severity, "opened_at": self.opened_at,
                "resolved_at": self.resolved_at, "conditions": self.conditions,
                "acknowledged_at": self.acknowledged_at, "updates": list(self.updates),
                "impact": self.impact()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Incident:
        incident = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        incident.status = _LEGACY_STATUS.get(incident.status, incident.status)
        if incident.title.startswith(("every node", "only ", "error budget", "deploy ")):
            # A record from before human titles: its title was the raw cause.
            first = incident.conditions[0] if incident.conditions else ""
            incident.title = TITLES.get(first, "Service disruption")
        return incident

    def __repr__(self) -> str:
        return f"<Incident {self.id} {self.status} {self.title!r}>"


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # opened, monitoring, resolved
    incident: Incident


class IncidentTracker:
    def __init__(self, config: IncidentConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.incidents: dict[str, Incident] = {}
        self.current: Incident | None = None
        self._clear_since: float | None = None
        #: Conditions an operator resolved by hand while they held (quiet until they clear).
        self._suppressed: set[str] = set()
        #: Recent events, so an incident's timeline starts with its lead-up.
        self._recent: deque[dict[str, Any]] = deque(maxlen=200)

    def restore(self, incident: Incident) -> None:
        """Take ``incident`` as recorded (at start-up, or a fleet leader's newer copy)."""
        self.incidents[incident.id] = incident
        if incident.is_open:
            self.current = incident
        elif self.current is not None and self.current.id == incident.id:
            self.current = None

    def observe(self, entry: dict[str, Any]) -> None:
        """An event worth a timeline line (node transition, drain, deploy step, maintenance...)."""
        self._recent.append(entry)
        incident = self.current
        if incident is not None and len(incident.timeline) < TIMELINE_LIMIT:
            incident.timeline.append(entry)

    def evaluate(self, conditions: dict[str, str], slo_totals: list[int],
                 budget: float) -> list[Change]:
        """Feed the outage conditions that hold now, with the SLO counters."""
        now = self.clock.time()
        # A condition an operator resolved by hand stays quiet until it clears once.
        self._suppressed &= set(conditions)
        conditions = {k: v for k, v in conditions.items() if k not in self._suppressed}
        incident = self.current
        changes: list[Change] = []
        if incident is None and conditions:
            incident = self._open(conditions, slo_totals, budget, now)
            changes.append(Change("opened", incident))
        elif incident is not None:
            incident.slo_now, incident.budget_now = list(slo_totals), budget
            if conditions:
                self._clear_since = None
                incident.recovered_at = None
                if incident.status == MONITORING and incident.automatic:
                    self._update(incident, INVESTIGATING, "The problem is back. We are "
                                 "investigating.", "hagw", now)
                for name, cause in conditions.items():
                    if name not in incident.conditions:
                        incident.conditions.append(name)
                        incident.causes.append(cause)
                        self.observe({"at": now, "kind": "incident.condition", "message": cause})
                # The title names the worst condition seen (a partial outage that became a
                # total one is "Service unavailable").
                worst = min(incident.conditions,
                            key=lambda c: SEVERITY.index(c) if c in SEVERITY else 99)
                incident.title = TITLES.get(worst, incident.title)
            else:
                if self._clear_since is None:
                    self._clear_since = now
                    incident.recovered_at = now
                    self.observe({"at": now, "kind": "incident.recovered",
                                  "message": "every outage condition cleared"})
                    if incident.status != MONITORING:
                        self._update(incident, MONITORING, _AUTO_TEXT[MONITORING], "hagw", now)
                        changes.append(Change("monitoring", incident))
                if now - self._clear_since >= self.config.resolve_after:
                    self._close(incident, now, f"clear for {self.config.resolve_after:g}s: "
                                "resolved", _AUTO_TEXT[RESOLVED], "hagw")
                    changes.append(Change("resolved", incident))
        return changes

    def _update(self, incident: Incident, status: str, text: str, author: str,
                now: float) -> dict[str, Any]:
        update = {"at": now, "status": status, "text": text, "author": author}
        incident.updates.append(update)
        incident.status = status
        incident.timeline.append({"at": now, "kind": "incident.update",
                                  "message": f"{status}: {text}"})
        return update

    def _close(self, incident: Incident, now: float, why: str, text: str,
               author: str) -> None:
        self._update(incident, RESOLVED, text, author, now)
        incident.resolved_at = now
        self.observe({"at": now, "kind": "incident.resolved", "message": why})
        if self.current is incident:
            self.current = None
            self._clear_since = None

    def update(self, incident_id: str, status: str, text: str,
               author: str = "operator") -> dict[str, Any]:
        """An operator's public update; ``resolved`` closes the incident by hand (its
        conditions, if they still hold, open no new one until they have cleared)."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, found {status!r}")
        incident = self.incidents[incident_id]
        if not incident.is_open:
            raise ValueError(f"incident {incident_id} is resolved")
        now = self.clock.time()
        text = text or _AUTO_TEXT.get(status, status)
        if status == RESOLVED:
            if self.current is incident:
                self._suppressed |= set(incident.conditions)
            self._close(incident, now, f"resolved by {author}", text, author)
            return incident.updates[-1]
        incident.automatic = incident.automatic and status == MONITORING
        return self._update(incident, status, text, author, now)

    def acknowledge(self, incident_id: str, author: str = "operator") -> Incident:
        """Someone is on it: recorded, and the incident moves to ``identified`` only when
        the operator says so with an update."""
        incident = self.incidents[incident_id]
        if not incident.is_open:
            raise ValueError(f"incident {incident_id} is resolved")
        if incident.acknowledged_at is None:
            incident.acknowledged_at = self.clock.time()
            incident.acknowledged_by = author
            incident.timeline.append({"at": incident.acknowledged_at, "kind": "incident.ack",
                                      "message": f"acknowledged by {author}"})
        return incident

    def _open(self, conditions: dict[str, str], slo_totals: list[int], budget: float,
              now: float) -> Incident:
        ordered = sorted(conditions, key=lambda c: SEVERITY.index(c) if c in SEVERITY else 99)
        # The first sign: the earliest unplanned event in the lead-up window.
        recent = [e for e in self._recent if e["at"] >= now - self.config.lookback]
        started = min((e["at"] for e in recent if e.get("unplanned")), default=now)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        incident = Incident(
            id=f"inc-{stamp}-{secrets.token_hex(2)}",
            title=TITLES.get(ordered[0], "Service disruption"),
            opened_at=now, started_at=started, conditions=ordered,
            causes=[conditions[c] for c in ordered], slo_open=list(slo_totals),
            slo_now=list(slo_totals), budget_open=budget, budget_now=budget)
        incident.timeline = recent
        incident.timeline.append({"at": now, "kind": "incident.opened",
                                  "message": f"incident opened: {incident.title}: "
                                             f"{incident.causes[0]}"})
        incident.updates.append({"at": now, "status": INVESTIGATING,
                                 "text": _AUTO_TEXT[INVESTIGATING], "author": "hagw"})
        self.incidents[incident.id] = incident
        self.current = incident
        self._clear_since = None
        return incident

    def note(self, incident_id: str, text: str, author: str = "operator") -> dict[str, Any]:
        incident = self.incidents[incident_id]
        note = {"at": self.clock.time(), "text": text, "author": author}
        incident.notes.append(note)
        incident.timeline.append({"at": note["at"], "kind": "incident.note",
                                  "message": f"note: {text}"})
        return note

    def recent(self, limit: int = 20) -> list[Incident]:
        return sorted(self.incidents.values(), key=lambda i: i.opened_at, reverse=True)[:limit]
