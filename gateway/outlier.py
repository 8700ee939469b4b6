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

    def _eject(self, node: Node, what: str) -> None:
        cfg = self.config
        nodes = list(self.cluster)
        ejected = sum(1 for n in nodes if n.ejected_until is not None)
        cap = max(1, math.floor(len(nodes) * cfg.max_ejection_percent + 1e-9))
        count = node.gateway_failures
        if ejected >= cap:
            node.gateway_failures = 0
            self.cluster.events.record(
                "node.ejection_refused", f"{count} consecutive gateway failures ({what}), but "
                f"{ejected} of {len(nodes)} nodes are ejected already "
                f"(max_ejection_percent={cfg.max_ejection_percent:.0%})",
                node=node.name, level=logging.WARNING)
            return
        now = self.cluster.clock.monotonic()
        # The multiplier resets once a node has stayed in for the longest ejection time.
        ended = node.last_ejection_end
        if ended is not None and now - ended > cfg.max_ejection_time:
            node.ejections = 0
        duration = min(cfg.base_ejection_time * (node.ejections + 1), cfg.max_ejection_time)
        node.eject(now + duration, f"{count} consecutive gateway failures ({what}); "
                                   f"ejected for {duration:g}s")
        for fn in self.on_eject:
            fn(node)
