"""What a deploy did: per node, every step with its timing, output and outcome.

The record is the deploy's whole persisted state: after a restart the plan is
rebuilt from it (see ``plan.Deploy``), so nothing is left half-done in silence.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from monitor.versions import valid_or_none


class Status(enum.StrEnum):
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    #: Failed and stopped where it was (on_failure: halt, or a rollback that failed too).
    FAILED = "failed"
    ABORTED = "aborted"
    #: The gateway stopped mid-deploy; an operator must resume or abort it.
    INTERRUPTED = "interrupted"


ACTIVE = frozenset({Status.RUNNING, Status.ROLLING_BACK, Status.INTERRUPTED})
#: Characters of an action's output kept with its step (the tail: errors come last).
OUTPUT_LIMIT = 20_000


@dataclass
class StepRecord:
    kind: str
    version: str | None
    started: float
    ended: float | None = None
    ok: bool | None = None
    detail: str = ""
    output: str = ""
    rollback: bool = False

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass
class NodeRun:
    name: str
    previous_version: str | None
    steps: list[StepRecord] = field(default_factory=list)
    #: The action ran on this node (so a rollback must undo it).
    moved: bool = False
    done: bool = False
    rolled_back: bool = False
    #: When the node left rotation for this deploy, and how long it stayed out in total.
    out_since: float | None = None
    out_seconds: float = 0.0


@dataclass
class DeployRecord:
    id: str
    version: str
    status: Status
    created: float
    batches: list[list[str]]
    nodes: dict[str, NodeRun]
    forced: bool = False
    force_reason: str = ""
    reason: str = ""
    finished: float | None = None
    #: Where the plan stands: which batch of which list, forward or rollback.
    batch_index: int = 0
    rollback_batches: list[list[str]] = field(default_factory=list)
    #: Status before an interruption, so a resume knows which direction it was going.
    interrupted_status: Status | None = None
    #: Interrupted by an upgrade of the gateway (a handover): the next one resumes it.
    handed_over: bool = False
    updated: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def touched(self, name: str) -> bool:
        """This deploy ran its action on node ``name``."""
        run = self.nodes.get(name)
        return run is not None and run.moved

    def left_at(self, name: str) -> str | None:
        """The version this deploy left node ``name`` at, if it knows: the new version when
        the node's batch passed and no rollback action ran on it, the previous version when
        the rollback verified it. None when unknown (the deploy failed or stopped mid-way on
        the node, or a rollback of it failed), not touched, or not a valid version (a record
        written before versions were checked)."""
        run = self.nodes.get(name)
        if run is None or not run.moved or self.active:
            return None
        if run.rolled_back:
            return valid_or_none(run.previous_version)
        rollback_ran = any(s.rollback and s.kind == "action" for s in run.steps)
        if run.done and not rollback_ran:
            return valid_or_none(self.version)
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["interrupted_status"] = (self.interrupted_status.value
                                      if self.interrupted_status else None)
        return data

    def summary(self) -> dict[str, Any]:
        done = sum(1 for n in self.nodes.values() if n.done)
        return {"id": self.id, "version": self.version, "status": self.status.value,
                "created": self.created, "finished": self.finished, "reason": self.reason,
                "forced": self.forced, "nodes_done": done, "nodes": len(self.nodes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeployRecord:
        nodes = {name: NodeRun(**{**run, "steps": [StepRecord(**s) for s in run["steps"]]})
                 for name, run in data["nodes"].items()}
        interrupted = data.get("interrupted_status")
        return cls(**{**data, "status": Status(data["status"]), "nodes": nodes,
                      "interrupted_status": Status(interrupted) if interrupted else None})
