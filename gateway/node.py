"""One backend node (Envoy's "host") and its state machine.

A node's public state is derived from a few independent conditions, each owned
by one actor: active health checks (probe), the warning detector, outlier
detection (ejection), operators and deploys (drain) and maintenance windows.
Keeping the conditions apart means an operator's drain survives a failing probe,
and a readmission never forgets a maintenance hold. Drains are a set of holds keyed
by who holds them (operator, deploy, config), like Envoy's per-actor health flags:
the node serves only once no hold is left, so a deploy never releases an operator's
drain. Every method is synchronous and free of I/O, so there is nothing to lock and
everything is unit-testable with a FakeClock. Each change is published once on the
event bus as a ``NodeChanged``.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.clock import Clock
from gateway.config.schema import HealthCheckConfig, NodeConfig, SlowStartConfig, WarningConfig
from gateway.events import Entry, Event, Publish


class NodeState(enum.StrEnum):
    HEALTHY = "HEALTHY"
    WARNING = "WARNING"
    UNHEALTHY = "UNHEALTHY"
    DRAINING = "DRAINING"
    EJECTED = "EJECTED"
    MAINTENANCE = "MAINTENANCE"
    STARTING = "STARTING"


class Probe(enum.StrEnum):
    """What active health checking concluded."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


#: Out of rotation on purpose; planned, not a failure.
PLANNED_STATES = frozenset({NodeState.DRAINING, NodeState.MAINTENANCE})


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    node: str
    old: NodeState
    new: NodeState
    reason: str

    cause: str = "health_check"

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "node": self.node, "from": self.old.value, "to": self.new.value,
                "reason": self.reason, "cause": self.cause}


@dataclass(frozen=True, slots=True)
class NodeChanged(Event):
    """A node changed: a state transition, or only its weight or drain flags."""

    node: Node
    transition: Transition | None = None

    def log_entry(self) -> Entry | None:
        t = self.transition
        if t is None:
            return None
        return Entry("node.transition", f"{t.old} -> {t.new}: {t.reason}", t.node,
                     data={"from": t.old.value, "to": t.new.value, "reason": t.reason})


def _ignore(event: Event) -> None:
    pass

_CAUSES = {NodeState.WARNING: "warning", NodeState.EJECTED: "outlier",
           NodeState.MAINTENANCE: "maintenance"}


class Node:
    """A backend node. ``state`` is derived; change it only through the methods below."""

    def __init__(self, config: NodeConfig, check: HealthCheckConfig, *, clock: Clock,
                 slow_start: SlowStartConfig, warning: WarningConfig,
                 publish: Publish = _ignore, boot: bool = True) -> None:
        self.name = config.name
        #: What a request without a Host header gets (built once).
        self.host_header = config.url.authority.encode()
        self.clock = clock
        self.publish = publish
        self.config = config
        self.check = check
        self.slow_start = slow_start
        self.warning_config = warning
        # Conditions, each owned by one actor.
        self.probe = Probe.STARTING if check.enabled else Probe.HEALTHY
        self.passes = 0
        self.failures = 0
        #: At boot a single passing probe admits a node (as Envoy does); later, healthy_threshold.
        self.boot = boot
        self.verified = False
        self.probe_reason = ("waiting for the first health check" if check.enabled
                             else "health checks disabled")
        self.warning: str | None = None
        #: The cluster's note on a WARNING node: drained, or kept serving by the floor.
        self.warning_note: str | None = None
        self.warning_drained = False
        self._clear_since: float | None = None
        #: Drain holds: who holds the node out of rotation (operator, deploy, config) and
        #: why, oldest first. DRAINING while any is left.
        self.holds: dict[str, str] = {}
        self.maintenance: str | None = None
        self.ejected_until: float | None = None
        self.eject_reason = ""
        self.ejections = 0
        self.last_ejection_end: float | None = None
        self.gateway_failures = 0
        self.removed = False
        self.version: str | None = None
        self.expected_version: str | None = None
        self.ramp_start: float | None = None
        self.in_flight = 0
        #: Requests in flight in the worker processes (the supervisor's nodes only).
        self.remote_in_flight = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        # Derived.
        self.state = self._derive()
        self.reason = self._current_reason()
        self.since = clock.time()
        self.history: deque[Transition] = deque(maxlen=50)

    # -- derived views -------------------------------------------------------------------------

    def _derive(self) -> NodeState:
        if self.maintenance is not None:
            return NodeState.MAINTENANCE
        if self.holds:
            return NodeState.DRAINING
        if self.probe is Probe.UNHEALTHY:
            return NodeState.UNHEALTHY
        if self.ejected_until is not None:
            return NodeState.EJECTED
        if self.probe is Probe.STARTING:
            return NodeState.STARTING
        if self.warning is not None:
            return NodeState.WARNING
        return NodeState.HEALTHY

    def _current_reason(self) -> str:
        """Why the node is in its state: the reason of the condition that decides it."""
        state = self._derive()
        if state is NodeState.MAINTENANCE:
            return self.maintenance or ""
        if state is NodeState.DRAINING:
            return self.drain_reason or ""
        if state is NodeState.EJECTED:
            return self.eject_reason
        if state is NodeState.WARNING:
            return self.warning_note or self.warning or ""
        return self.probe_reason

    def _cause(self, old: NodeState, new: NodeState) -> str:
        """Which actor a transition belongs to: the owner of the state entered, or of the
        state left when a node comes back (to STARTING or HEALTHY)."""
        owner = old if new in (NodeState.HEALTHY, NodeState.STARTING) else new
        if owner is NodeState.DRAINING:
            return self.drain_source or "operator"
        return _CAUSES.get(owner, "health_check")

    @property
    def serving(self) -> bool:
        """Takes new requests in normal (non-panic) routing."""
        return not self.removed and (self.state is NodeState.HEALTHY or (
            self.state is NodeState.WARNING and not self.warning_drained))

    @property
    def planned_out(self) -> bool:
        """Out of rotation on purpose (drain, maintenance, removal): never routed to,
        not even in panic mode."""
        return self.removed or self.state in PLANNED_STATES

    @property
    def needed_passes(self) -> int:
        return 1 if self.boot else self.check.healthy_threshold

    @property
    def needs_verify(self) -> bool:
        return self.check.verify is not None or self.expected_version is not None

    @property
    def awaiting_verify(self) -> bool:
        """Passed enough probes while STARTING; the monitor should now run the verify check."""
        return (self.probe is Probe.STARTING and self.passes >= self.needed_passes
                and self.needs_verify and not self.verified)

    def weight_at(self, now: float) -> float:
        """The weight the balancer uses: the configured weight, cut while WARNING and
        ramped up after a readmission (slow start)."""
        weight = float(self.config.weight)
        if self.warning is not None:
            weight *= self.warning_config.reduced_weight
        if self.ramp_start is not None:
            window = self.slow_start.window
            elapsed = now - self.ramp_start
            if window <= 0 or elapsed >= window:
                self.ramp_start = None  # ramp finished; no transition, just stop computing
            else:
                low = self.slow_start.min_weight
                weight *= low + (1.0 - low) * (elapsed / window)
        return max(weight, 1e-6)

    @property
    def ramping(self) -> bool:
        start = self.ramp_start
        return start is not None and self.clock.monotonic() - start < self.slow_start.window

    # -- the one place state changes ------------------------------------------------------------

    def _settle(self, reason: str) -> None:
        new = self._derive()
        old = self.state
        if new is old:
            self.reason = self._current_reason()
            self.publish(NodeChanged(self))  # weights or drain flags may have changed
            return
        was_serving = self.serving
        self.state = new
        self.reason = self._current_reason()
        self.since = self.clock.time()
        if self.serving and not was_serving and not self.boot and self.slow_start.window > 0:
            self.ramp_start = self.clock.monotonic()
        if new in (NodeState.HEALTHY, NodeState.WARNING):
            self.boot = False
        transition = Transition(self.since, self.name, old, new, reason, self._cause(old, new))
        self.history.append(transition)
        self.publish(NodeChanged(self, transition))

    # -- active health checks --------------------------------------------------------------------

    def probe_passed(self, detail: str = "probe ok", version: str | None = None) -> None:
        if version is not None:
            self.version = version
        self.failures = 0
        if self.probe is Probe.HEALTHY:
            return
        if self.probe is Probe.UNHEALTHY:
            self.probe = Probe.STARTING
            self.passes = 0
            self.verified = False
        self.passes += 1
        if self.passes < self.needed_passes:
            self.probe_reason = f"{detail} {self.passes}/{self.needed_passes}"
            self._settle(self.probe_reason)
        elif self.needs_verify and not self.verified:
            self.probe_reason = f"{detail} {self.passes}/{self.needed_passes}, verifying"
            self._settle(self.probe_reason)
        else:
            self._admit(f"{detail} {min(self.passes, self.needed_passes)}/{self.needed_passes}")

    def probe_failed(self, reason: str) -> None:
        self.failures += 1
        self.passes = 0
        if self.probe is Probe.UNHEALTHY:
            return
        if self.probe is Probe.STARTING or self.failures >= self.check.unhealthy_threshold:
            count = (f" {self.failures}/{self.check.unhealthy_threshold}"
                     if self.probe is Probe.HEALTHY else "")
            self.probe = Probe.UNHEALTHY
            self.verified = False
            self.probe_reason = reason + count
            self._settle(self.probe_reason)

    def verify_passed(self, detail: str = "verified") -> None:
        if not self.awaiting_verify:
            return
        self.verified = True
        self._admit(detail)

    def verify_failed(self, reason: str) -> None:
        if self.awaiting_verify:
            self.probe_reason = f"verify failed: {reason}"
            self._settle(self.probe_reason)

    def _admit(self, reason: str) -> None:
        self.probe = Probe.HEALTHY
        self.passes = 0
        self.probe_reason = reason
        self._settle(reason)

    def restart_checks(self, reason: str) -> None:
        """After a redeploy or maintenance: back to STARTING, full healthy_threshold needed."""
        if not self.check.enabled:
            return
        self.probe = Probe.STARTING
        self.passes = 0
        self.failures = 0
        self.verified = False
        self.boot = False
        self.probe_reason = reason
        self._settle(reason)

    # -- warning ------------------------------------------------------------------------------

    def observe_warning(self, sign: str | None, clear: bool) -> None:
        """Feed one evaluation: a warning sign, or whether every sign is clearly gone.

        Between the two (a metric under the warning threshold but not yet under the
        lower clear threshold) nothing changes: that gap is the hysteresis.
        """
        if sign is not None:
            self._clear_since = None
            if self.warning is None:
                self.warning = sign
                self.warning_note = None
                self._settle(sign)
            else:
                self.warning = sign
            return
        if self.warning is None:
            return
        now = self.clock.monotonic()
        if not clear:
            self._clear_since = None
            return
        if self._clear_since is None:
            self._clear_since = now
        if now - self._clear_since >= self.warning_config.recover_after:
            self.warning = None
            self.warning_note = None
            self._clear_since = None
            reason = f"warning signs clear for {self.warning_config.recover_after:g}s"
            if self.warning_drained:
                self.warning_drained = False
                self.restart_checks(reason)  # drained: verify before readmission
            else:
                self.probe_reason = reason
                self._settle(reason)

    def set_warning_drained(self, drained: bool, note: str) -> None:
        """The cluster decides this, because only it knows the capacity floor."""
        self.warning_note = note
        if self.warning_drained != drained:
            self.warning_drained = drained
        self._settle(note)

    # -- operators, deploys, maintenance, config --------------------------------------------

    @property
    def drain_reason(self) -> str | None:
        """The newest hold's reason (what the node's state says), or None."""
        return next(reversed(self.holds.values()), None)

    @property
    def drain_source(self) -> str | None:
        return next(reversed(self.holds), None)

    def drain(self, reason: str, source: str = "operator") -> None:
        """Add (or renew) ``source``'s hold; the newest hold gives the reason."""
        self.holds.pop(source, None)
        self.holds[source] = reason
        self._settle(reason)

    def undrain(self, reason: str, source: str = "operator") -> None:
        """Release ``source``'s hold; the node serves again once no hold is left."""
        if self.holds.pop(source, None) is None:
            return
        self._settle(reason)

    def undrain_all(self, reason: str) -> None:
        """An operator's ``--force``: release every hold (except a removal from config)."""
        released = [s for s in self.holds if s != "config"]
        if not released:
            return
        for source in released:
            del self.holds[source]
        self._settle(reason)

    def enter_maintenance(self, reason: str) -> None:
        self.maintenance = reason
        self._settle(reason)

    def exit_maintenance(self, reason: str) -> None:
        if self.maintenance is None:
            return
        self.maintenance = None
        if self.check.enabled:
            self.probe = Probe.STARTING
            self.passes = 0
            self.verified = False
            self.boot = False
            self.probe_reason = reason
        self._settle(reason)

    def expect_version(self, version: str | None) -> None:
        self.expected_version = version

    def remove(self) -> None:
        self.removed = True
        self.drain("removed from the config", "config")

    def configure(self, config: NodeConfig, check: HealthCheckConfig, slow_start: SlowStartConfig,
                  warning: WarningConfig) -> None:
        self.config = config
        self.check = check
        self.slow_start = slow_start
        self.warning_config = warning
        if not check.enabled and self.probe is not Probe.HEALTHY:
            self.probe = Probe.HEALTHY
            self.probe_reason = "health checks disabled"
        self._settle(self.probe_reason)

    # -- outlier detection ----------------------------------------------------------------

    def gateway_failure(self) -> int:
        """One more consecutive gateway failure (outlier detection); returns the run."""
        self.gateway_failures += 1
        return self.gateway_failures

    def gateway_success(self) -> None:
        self.gateway_failures = 0

    def ejection_multiplier(self, now: float, reset_after: float) -> int:
        """How many times longer than the base this ejection lasts: one more than the
        earlier ejections, counted afresh once the node stayed in for ``reset_after``."""
        ended = self.last_ejection_end
        if ended is not None and now - ended > reset_after:
            self.ejections = 0
        return self.ejections + 1

    def eject(self, until: float, reason: str) -> None:
        self.ejected_until = until
        self.ejections += 1
        self.eject_reason = reason
        self._settle(reason)

    def uneject(self, reason: str) -> None:
        if self.ejected_until is None:
            return
        self.ejected_until = None
        self.gateway_failures = 0
        self.last_ejection_end = self.clock.monotonic()
        self._settle(reason)

    # -- in-flight accounting (hot path) ----------------------------------------------------

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle_waiters:
            self._woken()

    @property
    def busy(self) -> int:
        """Requests in flight here and in the workers."""
        return self.in_flight + self.remote_in_flight

    def set_remote_in_flight(self, count: int) -> None:
        """What the workers report they have in flight on this node."""
        self.remote_in_flight = count
        if self.busy == 0 and self._idle_waiters:
            self._woken()

    def _woken(self) -> None:
        if self.busy:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` passed first. Each
        waiter has its own future, so overlapping waiters (a retire and a deploy's drain)
        are all woken."""
        if self.busy == 0:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
            return True
        except TimeoutError:
            return self.busy == 0
        finally:
            if waiter in self._idle_waiters:
                self._idle_waiters.remove(waiter)

    # -- replicas (a worker's copy of the supervisor's node) ---------------------------------

    #: The conditions a snapshot carries; everything else is derived or local.
    _CONDITIONS = ("probe", "passes", "failures", "boot", "verified", "probe_reason", "warning",
                   "warning_note", "warning_drained", "holds", "maintenance", "ejected_until",
                   "eject_reason", "ejections", "version", "expected_version", "ramp_start",
                   "since")

    def conditions(self) -> dict[str, Any]:
        """The node's conditions as plain data, for the workers' replicas."""
        data = {name: getattr(self, name) for name in self._CONDITIONS}
        data["probe"] = self.probe.value
        data["holds"] = dict(self.holds)
        return data

    def restore(self, data: dict[str, Any]) -> None:
        """Take the supervisor's conditions in one step (monotonic times are the host's
        and mean the same in every process)."""
        for name in self._CONDITIONS:
            if name in data and name not in ("probe", "holds"):
                setattr(self, name, data[name])
        self.probe = Probe(data.get("probe", self.probe.value))
        self.holds = dict(data.get("holds", {}))
        since = self.since
        self._settle(self.probe_reason)
        self.since = since

    # -- views -----------------------------------------------------------------------------------

    def snapshot(self, *, public: bool = False) -> dict[str, Any]:
        now = self.clock.monotonic()
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
            "serving": self.serving,
            "weight": self.config.weight,
            "effective_weight": round(self.weight_at(now), 4) if self.serving else 0.0,
            "in_flight": self.busy,
            "version": self.version,
            "zone": self.config.zone,
            "backup": self.config.backup,
        }
        if public:
            return data
        data.update({
            "url": str(self.config.url),
            "health": {"probe": self.probe.value, "passes": self.passes, "failures": self.failures,
                       "verified": self.verified},
            "warning": self.warning,
            "warning_drained": self.warning_drained,
            "drain": ({"reason": self.drain_reason, "source": self.drain_source}
                      if self.holds else None),
            "holds": [{"source": source, "reason": reason}
                      for source, reason in self.holds.items()],
            "maintenance": self.maintenance,
            "ejected_for": (round(self.ejected_until - now, 3)
                            if self.ejected_until is not None else None),
            "ejections": self.ejections,
            "expected_version": self.expected_version,
            "slow_start": self.ramping,
            "history": [t.to_json() for t in self.history],
        })
        return data

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.state.value} in_flight={self.in_flight}>"
