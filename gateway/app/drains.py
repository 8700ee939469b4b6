"""Operator drains: held on the node, and kept in the state store so they survive a
restart. A deploy's or a window's hold is theirs to keep; only the operator's is here.

With ``peers`` they are the fleet's: a drain or undrain is written to the shared records
first (refused with NotReplicated while Redis cannot take it, so that no instance drifts
from the others), then held here; every other instance applies it from the change
notice (within a second) and mirrors it in its own state store, which is what a restart
without Redis restores. A resynchronisation replaces whatever this instance knew.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.app.fleet import Fleet
from gateway.clock import Clock
from gateway.cluster import Cluster
from gateway.node import Node
from gateway.store import StateStore
from monitor.peers.records import Change, Notice, Resync
from monitor.ports import Spawn

log = logging.getLogger("hagw.drains")

NAMESPACE = "drains"
OPERATOR = "operator"


class OperatorDrains:
    def __init__(self, cluster: Cluster, store: StateStore, clock: Clock, *,
                 fleet: Fleet | None = None, spawn: Spawn | None = None) -> None:
        self.cluster = cluster
        self.store = store
        self.clock = clock
        self.fleet = fleet
        self.spawn = spawn
        if fleet is not None:
            fleet.watch(NAMESPACE, self.on_notice)

    async def drain(self, node: Node, reason: str) -> None:
        record: dict[str, Any] = {"reason": reason, "at": self.clock.time()}
        if self.fleet is not None:
            record["by"] = self.fleet.name
            await self.fleet.put(NAMESPACE, node.name, record, f"draining {node.name}")
        node.drain(reason, OPERATOR)
        await self.store.put(NAMESPACE, node.name, record)

    async def undrain(self, node: Node, reason: str, *, force: bool = False) -> None:
        """Release the operator's hold; ``force`` releases every hold (a deploy's too)."""
        if self.fleet is not None:
            await self.fleet.delete(NAMESPACE, node.name, f"undraining {node.name}")
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

    # -- the fleet's drains, from the shared records --------------------------------------

    def on_notice(self, notice: Notice) -> None:
        """Apply another instance's drain or undrain, or the whole set after a resync. In
        one synchronous step; the local mirror is written around it."""
        if isinstance(notice, Resync):
            records = notice.records.get(NAMESPACE, {})
            for node in self.cluster:
                record = records.get(node.name)
                if record is not None:
                    self._hold(node, record)
                elif OPERATOR in node.holds:
                    node.undrain("undrained elsewhere in the fleet", OPERATOR)
            self._mirror(None, records)
            return
        if not isinstance(notice, Change):
            return
        target = self.cluster.get(notice.key)
        if target is not None:
            if notice.deleted:
                target.undrain(f"undrained by {notice.writer}", OPERATOR)
            elif isinstance(notice.value, dict):
                self._hold(target, notice.value)
        self._mirror(notice, {})

    def _hold(self, node: Node, record: dict[str, Any]) -> None:
        by = record.get("by")
        reason = str(record.get("reason", "drained by operator"))
        if by and self.fleet is not None and by != self.fleet.name:
            reason = f"{reason} (by {by})"
        if node.holds.get(OPERATOR) != reason:
            node.drain(reason, OPERATOR)

    def _mirror(self, change: Change | None, records: dict[str, Any]) -> None:
        """Keep the local store in step with the fleet (what a restart without Redis
        restores)."""
        if self.spawn is None:
            return
        self.spawn(self._write_mirror(change, records), name="mirror shared drains")

    async def _write_mirror(self, change: Change | None, records: dict[str, Any]) -> None:
        if change is not None:
            if change.deleted:
                await self.store.delete(NAMESPACE, change.key)
            else:
                await self.store.put(NAMESPACE, change.key, change.value)
            return
        for name in await self.store.items(NAMESPACE):
            if name not in records:
                await self.store.delete(NAMESPACE, name)
        for name, record in records.items():
            await self.store.put(NAMESPACE, name, record)

    def __repr__(self) -> str:
        shared = " shared" if self.fleet is not None else ""
        return f"<OperatorDrains{shared} {self.store!r}>"
