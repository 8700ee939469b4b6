"""Operator drains: held on the node, and kept in the state store so they survive a
restart. A deploy's or a window's hold is theirs to keep; only the operator's is here."""

from __future__ import annotations

from gateway.clock import Clock
from gateway.cluster import Cluster
from gateway.node import Node
from gateway.store import StateStore

NAMESPACE = "drains"
OPERATOR = "operator"


class OperatorDrains:
    def __init__(self, cluster: Cluster, store: StateStore, clock: Clock) -> None:
        self.cluster = cluster
        self.store = store
        self.clock = clock

    async def drain(self, node: Node, reason: str) -> None:
        node.drain(reason, OPERATOR)
        await self.store.put(NAMESPACE, node.name, {"reason": reason, "at": self.clock.time()})

    async def undrain(self, node: Node, reason: str, *, force: bool = False) -> None:
        """Release the operator's hold; ``force`` releases every hold (a deploy's too)."""
        if force:
            node.undrain_all(reason)
        else:
            node.undrain(reason, OPERATOR)
        await self.store.delete(NAMESPACE, node.name)

    async def restore(self) -> None:
        for name, record in (await self.store.items(NAMESPACE)).items():
            node = self.cluster.get(name)
            if node is not None:
                node.drain(f"{record['reason']} (restored after restart)", OPERATOR)

    def __repr__(self) -> str:
        return f"<OperatorDrains {self.store!r}>"
