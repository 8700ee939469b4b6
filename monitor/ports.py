"""The narrow interfaces the control plane depends on, and nothing else of the gateway.

Each component of ``monitor`` takes the ports it uses in its constructor, never the
gateway object; the composition root (``gateway.app``) plugs in the real ones, tests
plug in small fakes. The kernel types they speak in (``Node``, ``Event``, the config
dataclasses) come from the data plane's kernel, which imports nothing above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator
from typing import Any, Protocol

from gateway.events import Event
from gateway.maintenance import Phase
from gateway.node import Node
from monitor.slo import Counts


class Spawn(Protocol):
    """Start a background task, tracked in the process's TaskGroup; a failure is logged."""

    def __call__(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...


class Events(Protocol):
    """The event bus: publish once, subscribe by type."""

    def publish(self, event: Event) -> None: ...

    def subscribe(self, kind: type[Any], handler: Callable[[Any], None]) -> Callable[[], None]:
        ...


class WriteRefused(Exception):
    """A ``Store`` refused a write and this process may not go on acting on it: in a fleet,
    a leader-only write after this instance lost the lease, or while the shared state is
    unreachable. Whatever depended on the write stops where it is."""


class Store(Protocol):
    """Durable key-value records in namespaces (drains, deploys, windows, incidents)."""

    async def put(self, namespace: str, key: str, value: Any) -> None: ...

    async def get(self, namespace: str, key: str) -> Any: ...

    async def delete(self, namespace: str, key: str) -> None: ...

    async def items(self, namespace: str) -> dict[str, Any]: ...


class ClusterView(Protocol):
    """The fleet as the control plane drives it: its nodes and the capacity floor."""

    def __iter__(self) -> Iterator[Node]: ...

    def get(self, name: str) -> Node | None: ...

    @property
    def floor(self) -> int: ...

    def serving_primaries(self, excluding: Collection[str] = ()) -> int: ...

    def below_floor(self, excluding: Collection[str] = ()) -> bool: ...

    def pick(self, exclude: Collection[Node] = ()) -> Node | None: ...

    @property
    def panic(self) -> bool: ...

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool: ...


class ErrorBudget(Protocol):
    """What the SLO accounting tells the deploy gate and the incident watcher."""

    @property
    def totals(self) -> list[int]:
        """[good, bad, excluded] since the gateway started."""

    def budget_remaining(self) -> float: ...

    def window(self, seconds: float) -> Counts: ...

    def burn_rate(self, seconds: float) -> float: ...


class Forwarder(Protocol):
    """Sends a stored request through the data plane and returns the node's whole answer."""

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, request_id: str, max_answer: int = ..., *,
                      prefer: str | None = None,
                      before_send: Callable[[Node], Awaitable[None]] | None = None,
                      ) -> tuple[int, list[tuple[str, str]], bytes]: ...

    async def pipeline(self, node_name: str,
                       requests: list[tuple[str, str, list[tuple[str, str]], bytes, str]],
                       window: int, *, stop_on: frozenset[int] = ..., max_answer: int = ...,
                       ) -> tuple[list[tuple[int, list[tuple[str, str]], bytes]], int, str]:
        """Send stored requests to one node, pipelined in order, at most ``window`` ahead
        of its answers and none after an answer in ``stop_on``; its whole answers (a
        prefix), how many requests were sent, and why the rest got none. Raises NoNode,
        or UpstreamError if nothing was sent."""


class TrafficMode(Protocol):
    """What a maintenance window switches on the traffic listener."""

    phase: Phase
    window: dict[str, Any] | None


class ReplayRelay(Protocol):
    """In a fleet, how the replay's two ends talk: only the leader replays the shared
    queue, and each instance's traffic listener leaves its replay phase when it is over."""

    def ask_leader(self) -> None:
        """A write was queued here during the replay: the leader's replay must see it."""

    def replay_finished(self) -> None:
        """This instance (the leader) emptied the queue: the others leave replay too."""


class Advisory(Protocol):
    """The ``X-Maintenance-Scheduled`` header proxied answers carry before a window."""

    advisory: str | None


class PhaseView(Protocol):
    @property
    def phase(self) -> Phase: ...
