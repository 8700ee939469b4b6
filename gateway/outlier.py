"""Passive outlier detection: eject nodes that keep failing live traffic (Envoy's
consecutive_gateway_failure), without waiting for the next health probe."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from gateway.cluster import Cluster
from gateway.config.schema import OutlierDetectionConfig
from gateway.node import Node


class OutlierDetector:
    def __init__(self, cluster: Cluster, config: OutlierDetectionConfig) -> None:
        self.cluster = cluster
        self.config = config
        #: Called after each ejection (metrics; the runtime re-arms its tick timer).
        self.on_eject: list[Callable[[Node], None]] = []

    def success(self, node: Node) -> None:
        node.gateway_failures = 0

    def failure(self, node: Node, what: str) -> None:
        """A gateway failure: connect error, reset, or a 502/503/504 from the node."""
        node.gateway_failures += 1
        if (self.config.enabled and node.ejected_until is None
                and node.gateway_failures >= self.config.consecutive_failures):
            self._eject(node, what)

    def stalled(self, node: Node, reason: str) -> bool:
        """Stall detection found ``node`` silent while others answer: eject it now, within
        the ejection cap and without pushing the cluster into panic. True if ejected."""
        if not self.config.enabled or node.ejected_until is not None:
            return False
        refusal = self._refusal(node, panic=True)
        if refusal is not None:
            self.cluster.events.record("node.ejection_refused", f"{reason}, but {refusal}",
                                       node=node.name, level=logging.WARNING)
            return False
        self._eject(node, reason, reason)
        return True

    def _refusal(self, node: Node, *, panic: bool) -> str | None:
        """Why ``node`` may not be ejected now, or None."""
        cfg = self.config
        nodes = list(self.cluster)
        ejected = sum(1 for n in nodes if n.ejected_until is not None)
        cap = max(1, math.floor(len(nodes) * cfg.max_ejection_percent + 1e-9))
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
                node.gateway_failures = 0
                self.cluster.events.record(
                    "node.ejection_refused", f"{count} consecutive gateway failures ({what}), "
                    f"but {refusal}", node=node.name, level=logging.WARNING)
                return
        now = self.cluster.clock.monotonic()
        # The multiplier resets once a node has stayed in for the longest ejection time.
        ended = node.last_ejection_end
        if ended is not None and now - ended > cfg.max_ejection_time:
            node.ejections = 0
        duration = min(cfg.base_ejection_time * (node.ejections + 1), cfg.max_ejection_time)
        why = detail or f"{count} consecutive gateway failures ({what})"
        node.eject(now + duration, f"{why}; ejected for {duration:g}s")
        for fn in self.on_eject:
            fn(node)
