"""Per-node uptime: time each node spent serving, and out of rotation split by cause.

Planned: drained by an operator or a deploy, in maintenance, or being readmitted
after one of those. Unplanned: failing probes, ejected, drained for warning signs.
"""

from __future__ import annotations

from gateway.clock import Clock
from gateway.node import PLANNED_STATES, Node, NodeState

SERVING, PLANNED, UNPLANNED = "serving", "planned", "unplanned"
CATEGORIES = (SERVING, PLANNED, UNPLANNED)


class NodeUptime:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seconds: dict[str, dict[str, float]] = {}
        self._current: dict[str, tuple[str, float]] = {}
        #: Seconds per node and state (this process only), for hagw_node_state_seconds_total.
        self.state_seconds: dict[str, dict[str, float]] = {}
        self._state: dict[str, tuple[str, float]] = {}

    def category(self, node: Node, previous: str | None) -> str:
        if node.serving:
            return SERVING
        if node.state in PLANNED_STATES:
            return PLANNED
        if node.state is NodeState.STARTING and previous == PLANNED:
            return PLANNED  # coming back from a deploy or maintenance
        return UNPLANNED

    def observe(self, node: Node) -> None:
        """Called on every change of ``node`` (cheap when its category stays the same)."""
        now = self.clock.monotonic()
        state = self._state.get(node.name)
        if state is None or state[0] != node.state.value:
            if state is not None:
                per_state = self.state_seconds.setdefault(node.name, {})
                per_state[state[0]] = per_state.get(state[0], 0.0) + now - state[1]
            self._state[node.name] = (node.state.value, now)
        current = self._current.get(node.name)
        previous = current[0] if current else None
        category = self.category(node, previous)
        if current is not None:
            if current[0] == category:
                return
            self._add(node.name, current[0], now - current[1])
        self._current[node.name] = (category, now)

    def forget(self, name: str) -> None:
        """A node left the config: close its open intervals so its counters stop (and never
        go down); its history stays for the counters' sake until the process restarts."""
        now = self.clock.monotonic()
        current = self._current.pop(name, None)
        if current is not None:
            self._add(name, current[0], now - current[1])
        state = self._state.pop(name, None)
        if state is not None:
            per_state = self.state_seconds.setdefault(name, {})
            per_state[state[0]] = per_state.get(state[0], 0.0) + now - state[1]

    def states(self) -> dict[str, dict[str, float]]:
        """Seconds per node and state, the current state's open interval included."""
        now = self.clock.monotonic()
        out = {name: dict(states) for name, states in self.state_seconds.items()}
        for name, (state, since) in self._state.items():
            per_state = out.setdefault(name, {})
            per_state[state] = per_state.get(state, 0.0) + now - since
        return out

    def _add(self, name: str, category: str, seconds: float) -> None:
        totals = self.seconds.setdefault(name, dict.fromkeys(CATEGORIES, 0.0))
        totals[category] += seconds

    def totals(self) -> dict[str, dict[str, float]]:
        """Seconds per node and category, the open interval included."""
        now = self.clock.monotonic()
        out = {name: dict(cats) for name, cats in self.seconds.items()}
        for name, (category, since) in self._current.items():
            cats = out.setdefault(name, dict.fromkeys(CATEGORIES, 0.0))
            cats[category] += now - since
        return out

    def load(self, saved: dict[str, dict[str, float]]) -> None:
        for name, cats in saved.items():
            for category, seconds in cats.items():
                if category in CATEGORIES:
                    self._add(name, category, float(seconds))
