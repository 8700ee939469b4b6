"""The deploy state machine: which step comes next, and what a result means.

Synchronous, no I/O, an injectable clock: the runner asks ``next()``, performs the
step, and reports it with ``started()`` and ``finished()``. Failures turn the plan
around (rollback of every node the action touched, newest first) or halt it.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config.schema import DeployConfig
from monitor.deploy.record import OUTPUT_LIMIT, DeployRecord, NodeRun, Status, StepRecord


@dataclass(frozen=True, slots=True)
class Step:
    #: gate, drain, action, verify or bake.
    kind: str
    nodes: tuple[str, ...]
    version: str | None = None
    rollback: bool = False

    def __str__(self) -> str:
        target = f" -> {self.version}" if self.version else ""
        return f"{'rollback ' if self.rollback else ''}{self.kind} {', '.join(self.nodes)}{target}"


def batches_of(names: list[str], size: int) -> list[list[str]]:
    it = iter(names)
    return [list(chunk) for chunk in iter(lambda: list(itertools.islice(it, size)), [])]


class Deploy:
    def __init__(self, record: DeployRecord, config: DeployConfig, clock: Clock) -> None:
        self.record = record
        self.config = config
        self.clock = clock
        self._pending: deque[Step] = deque()
        self.aborted = record.status is Status.ABORTED

    @classmethod
    def new(cls, deploy_id: str, version: str, nodes: list[tuple[str, str | None]],
            config: DeployConfig, clock: Clock, *, batch_size: int, forced: bool = False,
            force_reason: str = "") -> Deploy:
        names = [name for name, _ in nodes]
        record = DeployRecord(
            id=deploy_id, version=version, status=Status.RUNNING, created=clock.time(),
            batches=batches_of(names, max(1, batch_size)),
            nodes={name: NodeRun(name, previous) for name, previous in nodes},
            forced=forced, force_reason=force_reason, updated=clock.time())
        return cls(record, config, clock)

    def __repr__(self) -> str:
        return f"<Deploy {self.record.id} {self.record.version} {self.record.status}>"

    # -- planning ------------------------------------------------------------------------

    @property
    def rolling_back(self) -> bool:
        return self.record.status is Status.ROLLING_BACK

    def _target(self, name: str) -> str | None:
        return self.record.nodes[name].previous_version if self.rolling_back else \
            self.record.version

    def _plan_batch(self) -> bool:
        record = self.record
        batches = record.rollback_batches if self.rolling_back else record.batches
        if record.batch_index >= len(batches):
            self._finish(Status.ROLLED_BACK if self.rolling_back else Status.SUCCEEDED)
            return False
        batch = tuple(batches[record.batch_index])
        back = self.rolling_back
        steps = [] if back else [Step("gate", batch)]
        steps.append(Step("drain", batch, rollback=back))
        steps += [Step("action", (n,), self._target(n), back) for n in batch]
        steps += [Step("verify", (n,), self._target(n), back) for n in batch]
        if not back and self.config.bake_time > 0:
            steps.append(Step("bake", batch))
        self._pending = deque(steps)
        return True

    def next(self) -> Step | None:
        """The step to run now, or None when the deploy is over (or interrupted)."""
        if self.record.status not in (Status.RUNNING, Status.ROLLING_BACK):
            return None
        if not self._pending and not self._plan_batch():
            return None
        return self._pending[0]

    # -- results -------------------------------------------------------------------------

    def started(self, step: Step) -> None:
        now = self.clock.time()
        for name in step.nodes:
            run = self.record.nodes[name]
            run.steps.append(StepRecord(step.kind, step.version, now, rollback=step.rollback))
            if step.kind == "drain" and run.out_since is None:
                run.out_since = now
            if step.kind == "action" and not step.rollback:
                run.moved = True
        self.record.updated = now

    def finished(self, step: Step, ok: bool, detail: str = "", output: str = "") -> None:
        now = self.clock.time()
        for name in step.nodes:
            run = self.record.nodes[name]
            if run.steps and run.steps[-1].ended is None:
                last = run.steps[-1]
                last.ended, last.ok, last.detail = now, ok, detail
                last.output = output[-OUTPUT_LIMIT:]
            if ok and step.kind == "verify" and run.out_since is not None:
                run.out_seconds += now - run.out_since
                run.out_since = None
        self.record.updated = now
        if not ok:
            self.fail(f"{step.kind} on {', '.join(step.nodes)} failed: {detail}")
            return
        if self._pending and self._pending[0] == step:
            self._pending.popleft()
        if not self._pending:
            # The batch's last step went well: its nodes are done (or back where they were).
            for name in self._current_batch():
                run = self.record.nodes[name]
                if self.rolling_back:
                    run.rolled_back = True
                else:
                    run.done = True
            self.record.batch_index += 1

    def cancelled(self, step: Step, detail: str) -> None:
        """Close the records of a step that was stopped (abort, shutdown) without judging it."""
        now = self.clock.time()
        for name in step.nodes:
            run = self.record.nodes[name]
            if run.steps and run.steps[-1].ended is None:
                run.steps[-1].ended, run.steps[-1].ok, run.steps[-1].detail = now, False, detail
        self.record.updated = now

    def _current_batch(self) -> list[str]:
        batches = self.record.rollback_batches if self.rolling_back else self.record.batches
        return batches[self.record.batch_index] if self.record.batch_index < len(batches) else []

    def fail(self, reason: str) -> None:
        record = self.record
        self._pending.clear()
        if self.rolling_back:
            record.reason = f"{record.reason}; rollback failed: {reason}"
            self._finish(Status.FAILED)
            return
        record.reason = reason
        moved = [n for batch in record.batches for n in batch if record.nodes[n].moved]
        if self.config.on_failure == "halt" or not moved:
            self._finish(Status.FAILED)
            return
        size = max(1, len(record.batches[0]) if record.batches else 1)
        record.rollback_batches = batches_of(list(reversed(moved)), size)
        record.batch_index = 0
        record.status = Status.ROLLING_BACK

    def abort(self, reason: str) -> None:
        self.aborted = True
        if self.record.status is Status.INTERRUPTED:
            self.record.status = self.record.interrupted_status or Status.RUNNING
            self.record.interrupted_status = None
        if self.rolling_back:
            # Already going back: an abort stops the rollback where it is.
            self.record.reason = f"{self.record.reason}; {reason}"
            self._pending.clear()
            self._finish(Status.ABORTED)
            return
        self.fail(reason)

    def interrupt(self) -> None:
        """The gateway is stopping (or found this deploy running after a restart)."""
        if self.record.status in (Status.RUNNING, Status.ROLLING_BACK):
            self.record.interrupted_status = self.record.status
            self.record.status = Status.INTERRUPTED
            self._pending.clear()

    def resume(self) -> None:
        """Continue an interrupted deploy: the current batch starts over from its drain."""
        if self.record.status is Status.INTERRUPTED:
            self.record.status = self.record.interrupted_status or Status.RUNNING
            self.record.interrupted_status = None
            self._pending.clear()

    def _finish(self, status: Status) -> None:
        if self.aborted and status is not Status.ABORTED:
            self.record.reason = self.record.reason or "aborted"
            status = Status.ABORTED
        self.record.status = status
        self.record.finished = self.clock.time()
        self._pending.clear()

    @property
    def in_flight_batch(self) -> list[str]:
        """Nodes the deploy holds right now (drained or being redeployed)."""
        if not self.record.active:
            return []
        return self._current_batch()
