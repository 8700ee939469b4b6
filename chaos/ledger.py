"""Which writes the nodes really hold, across every incarnation of every node.

The demo node keeps its write log in memory, so a node that is SIGKILLed or
redeployed takes its log with it. The ledger keeps what each incarnation (node
name, pid) held: snapshots taken by the suite just before it kills a node, by
the deploy hook once the gateway has drained a node (so that snapshot is
complete), and of every live node at the end. A write is delivered if any
incarnation held it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Incarnation:
    node: str
    pid: int
    #: Request bodies in the node's arrival order (the longest snapshot seen).
    writes: list[str] = field(default_factory=list)
    #: Set when the suite SIGKILLed it: monotonic time, and how much of its log was saved.
    killed_at: float | None = None
    started_at: float | None = None


class Ledger:
    def __init__(self, hook_dir: Path) -> None:
        #: Where the deploy hook drops its snapshots (``{node}-{pid}.json``).
        self.hook_dir = hook_dir
        hook_dir.mkdir(parents=True, exist_ok=True)
        self.incarnations: dict[tuple[str, int], Incarnation] = {}

    def absorb(self, node: str, pid: int, log: list[dict[str, Any]]) -> Incarnation:
        """Record a snapshot of ``/_writes``; the log only grows, so the longest wins."""
        inc = self.incarnations.setdefault((node, pid), Incarnation(node, pid))
        if len(log) >= len(inc.writes):
            inc.writes = [str(entry.get("body", "")) for entry in log]
        return inc

    def started(self, node: str, pid: int, at: float) -> None:
        self.incarnations.setdefault((node, pid), Incarnation(node, pid)).started_at = at

    def killed(self, node: str, pid: int, at: float) -> None:
        self.incarnations.setdefault((node, pid), Incarnation(node, pid)).killed_at = at

    def load_hook_snapshots(self) -> int:
        count = 0
        for path in sorted(self.hook_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            self.absorb(str(data["node"]), int(data["pid"]), list(data["writes"]))
            count += 1
        return count

    def delivered(self) -> Counter[str]:
        """How many times each body is held, over all incarnations (2+ is a duplicate)."""
        seen: Counter[str] = Counter()
        for inc in self.incarnations.values():
            seen.update(inc.writes)
        return seen

    def holders(self, body: str) -> list[str]:
        """``node (pid N) xK`` for every incarnation holding ``body``."""
        return [f"{inc.node} (pid {inc.pid}) x{inc.writes.count(body)}"
                for inc in self.incarnations.values() if body in inc.writes]

    def vouched_by_killed_node(self, node: str, ack_seq: int, acked_at: float) -> bool:
        """A write the node acknowledged as its ``ack_seq``-th, from an incarnation the suite
        killed after its last snapshot: the node had it, but its memory died with it."""
        for inc in self.incarnations.values():
            if inc.node != node or inc.killed_at is None:
                continue
            started = inc.started_at if inc.started_at is not None else float("-inf")
            if started <= acked_at <= inc.killed_at + 1.0 and ack_seq > len(inc.writes):
                return True
        return False
