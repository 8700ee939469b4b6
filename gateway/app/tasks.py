"""Every background task of the process, in one TaskGroup: the ``Spawn`` port that the
control plane's components take."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("hagw")


class Tasks:
    """Spawns into the TaskGroup that the gateway's main task holds open while it runs."""

    def __init__(self) -> None:
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def bind(self, group: asyncio.TaskGroup | None) -> None:
        self._group = group

    @property
    def running(self) -> bool:
        return self._group is not None

    def __call__(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the group; a failure is logged, never silent, and never takes
        the other tasks down with it."""
        if self._group is None:
            coro.close()
            raise RuntimeError("the gateway is not running")

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", name)

        return self._spawn(guarded(), name)

    def request(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run one client request in the group: as ``__call__`` without its guard, which a
        request does not need (its connection catches and logs whatever it raises), and
        which would cost a coroutine more on every request."""
        return self._spawn(coro, "request")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._group is None:
            coro.close()
            raise RuntimeError("the gateway is not running")
        task = self._group.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<Tasks {len(self._tasks)} running>"
