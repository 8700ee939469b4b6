"""What the gateway thinks of its nodes, over time: ``GET /nodes`` polled every 100 ms.

The suite uses it to learn when a faulted node left rotation (which bounds the
window in which a client could have had a request in flight on it) and to wait
for recovery without sleeping blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from chaos.gateway import Admin


@dataclass(frozen=True)
class Sighting:
    at: float
    state: str
    serving: bool
    reason: str


class RotationWatch:
    def __init__(self, admin: Admin, interval: float = 0.1) -> None:
        self.admin = admin
        self.interval = interval
        self.history: dict[str, list[Sighting]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="rotation watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                self._record((await self.admin.get("/nodes"))["nodes"])
            await asyncio.sleep(self.interval)

    def _record(self, nodes: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for node in nodes:
            self.latest[node["name"]] = node
            seen = self.history.setdefault(node["name"], [])
            sighting = Sighting(now, node["state"], bool(node["serving"]), node["reason"])
            if not seen or (seen[-1].state, seen[-1].serving) != (sighting.state,
                                                                  sighting.serving):
                seen.append(sighting)
        self._changed.set()

    def left_rotation(self, node: str, after: float) -> float | None:
        """When the gateway first showed ``node`` out of rotation after ``after``."""
        return next((s.at for s in self.history.get(node, [])
                     if s.at >= after and not s.serving), None)

    def states_between(self, node: str, start: float, end: float) -> list[str]:
        return [s.state for s in self.history.get(node, []) if start <= s.at <= end]

    async def wait(self, predicate: Callable[[dict[str, dict[str, Any]]], bool],
                   timeout: float) -> bool:
        """Until the latest view of the nodes satisfies ``predicate`` (bounded)."""
        try:
            async with asyncio.timeout(timeout):
                while not (self.latest and predicate(self.latest)):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_node(self, node: str, timeout: float, *, serving: bool | None = None,
                        state: str | None = None) -> bool:
        def ok(nodes: dict[str, dict[str, Any]]) -> bool:
            seen = nodes.get(node)
            return seen is not None and (serving is None or seen["serving"] == serving) and (
                state is None or seen["state"] == state)

        return await self.wait(ok, timeout)

    def forget(self) -> None:
        """After a gateway restart the old view is stale."""
        self.latest.clear()
