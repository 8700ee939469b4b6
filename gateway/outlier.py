"""Passive outlier detection: eject nodes that keep failing live traffic (Envoy's
consecutive_gateway_failure), without waiting for the next health probe."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from gateway.cluster import Cluster
from gateway.config.schema import OutlierDetectionConfig
from gateway.events import Entry, Event, News
from gateway.node import Node


@dataclass(frozen=True, slots=True)
class NodeEjected(Event):
    node: Node
    #: Monotonic time the ejection ends.
    until: float
    reason: str

    def log_entry(self) -> Entry | None:
        return None  # the node's own transition to EJECTED says it


class OutlierDetector:
    def __init__(self, cluster: Cluster, config: OutlierDetectionConfig) -> None:
        self.cluster = cluster
        self.config = config

    def success(self, node: Node) -> None:
        node.gateway_success()

    def failure(self, node: Node, what: str) -> None:
        """A gateway failure: connect error, reset, or a 502/503/504 from the node."""
        run = node.gateway_failure()
        if (self.config.enabled and node.ejected_until is None
                and run >= self.config.consecutive_failures):
            self._eject(node, what)

    def stalled(self, node: Node, reason: str) -> bool:
        """Stall detection found ``node`` silent while others answer: eject it now, within
        the ejection cap and without pushing the cluster into panic. True if ejected."""
        if not self.config.enabled or node.ejected_until is not None:
            return False
        refusal = self._refusal(node, panic=True)
        if refusal is not None:
            self.cluster.bus.publish(News("node.ejection_refused", f"{reason}, but {refusal}",
                                            node.name, logging.WARNING))
            return False
        self._eject(node, reason, reason)
        return True

    def eject_reported(self, node: Node, until: float, reason: str) -> bool:
        """A worker ejected ``node`` on its own view: eject it fleet-wide if the cap allows
        (its own ejection lasts until the supervisor's snapshot says otherwise)."""
        if not self.config.enabled or node.ejected_until is not None:
            return node.ejected_until is not None
        refusal = self._refusal(node, panic=False)
        if refusal is not None:
            self.cluster.bus.publish(News("node.ejection_refused", f"{reason}, but {refusal}",
                                          node.name, logging.WARNING))
            return False
        node.eject(until, reason)
        self.cluster.bus.publish(NodeEjected(node, until, reason))
        return True

    def cap(self, nodes: int) -> int:
        """How many of ``nodes`` may be ejected at once (at least one)."""
        return max(1, math.floor(nodes * self.config.max_ejection_percent + 1e-9))

    def _refusal(self, node: Node, *, panic: bool) -> str | None:
        """Why ``node`` may not be ejected now, or None."""
        cfg = self.config
        nodes = list(self.cluster)
        ejected = sum(1 for n in nodes if n.ejected_until is not None)
        cap = self.cap(len(nodes))
        if ejected >= cap:
            return (f"{ejected} of {len(nodes)} nodes are ejected already "
                    f"(max_ejection_percent={cfg.max_ejection_percent:.0%})")
        threshold = self.cluster.config.panic_threshold
        primaries = [n for n in nodes if not n.config.backup]
        serving = sum(1 for n in primaries if n.serving and n is not node)
        if panic and threshold > 0 and primaries and serving / len(primaries) < threshold:
            return (f"ejecting it would leave {serving} of {len(primaries)} serving, below "
                    f"panic_threshold={threshold:.0%}")
        return None

    def _eject(self, node: Node, what: str, detail: str | None = None) -> None:
        cfg = self.config
        count = node.gateway_failures
        if detail is None:
            refusal = self._refusal(node, panic=False)
            if refusal is not None:
                node.gateway_success()  # count afresh
                self.cluster.bus.publish(News(
                    "node.ejection_refused", f"{count} consecutive gateway failures ({what}), "
                    f"but {refusal}", node.name, logging.WARNING))
                return
        now = self.cluster.clock.monotonic()
        # The multiplier resets once a node has stayed in for the longest ejection time.
        multiplier = node.ejection_multiplier(now, cfg.max_ejection_time)
        duration = min(cfg.base_ejection_time * multiplier, cfg.max_ejection_time)
        why = detail or f"{count} consecutive gateway failures ({what})"
        node.eject(now + duration, f"{why}; ejected for {duration:g}s")
        self.cluster.bus.publish(NodeEjected(node, now + duration, why))
