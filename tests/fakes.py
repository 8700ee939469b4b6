"""Small fakes of the control plane's ports (monitor.ports), for building one component
alone: no gateway, no admin app, no traffic listener."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import yaml

from gateway.clock import FakeClock
from gateway.cluster import Cluster
from gateway.config import GatewayConfig, parse_config
from gateway.events import Event, EventBus
from gateway.node import Node
from monitor.slo import Counts


def config(urls: list[str], **overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "admin": {"token": "t"},
        "nodes": [{"name": f"node-{i + 1}", "url": url} for i, url in enumerate(urls)],
    }
    data.update(overrides)
    return parse_config(yaml.safe_dump(data), "<test>")


def cluster_of(cfg: GatewayConfig, clock: FakeClock | None = None) -> tuple[Cluster, EventBus]:
    """A real cluster (a kernel object: plain synchronous state) on its own bus."""
    bus = EventBus()
    cluster = Cluster(cfg, clock=clock or FakeClock(), bus=bus, rng=random.Random(3))
    for node in cluster:
        node.probe_passed()
    return cluster, bus


class Recorder:
    """Subscribes to every event on a bus and keeps them."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(Event, self.events.append)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class Spawner:
    """The Spawn port: tasks the test cancels at the end."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class MemoryStore:
    """The Store port, in a dict."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], Any] = {}

    async def put(self, namespace: str, key: str, value: Any) -> None:
        self.data[(namespace, key)] = value

    async def get(self, namespace: str, key: str) -> Any:
        return self.data.get((namespace, key))

    async def delete(self, namespace: str, key: str) -> None:
        self.data.pop((namespace, key), None)

    async def items(self, namespace: str) -> dict[str, Any]:
        return {k: v for (ns, k), v in self.data.items() if ns == namespace}


class Budget:
    """The ErrorBudget port with fixed answers."""

    def __init__(self, remaining: float = 1.0) -> None:
        self.remaining = remaining
        self.totals = [0, 0, 0]

    def budget_remaining(self) -> float:
        return self.remaining

    def window(self, seconds: float) -> Counts:
        return Counts(self.totals[0], self.totals[1], self.totals[2])

    def burn_rate(self, seconds: float) -> float:
        return 0.0


class Forwarder:
    """The Forwarder port: records what the replay sends and answers ``status``."""

    def __init__(self, status: int = 201) -> None:
        self.status = status
        self.sent: list[tuple[str, str, dict[str, str], bytes]] = []

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, request_id: str, max_answer: int = 0, *,
                      prefer: str | None = None,
                      before_send: Callable[[Node], Awaitable[None]] | None = None,
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        self.sent.append((method, target, dict(headers), body))
        return self.status, [("Content-Type", "text/plain")], b"ok"

    async def pipeline(self, node_name: str,
                       requests: list[tuple[str, str, list[tuple[str, str]], bytes, str]],
                       window: int, *, stop_on: frozenset[int] = frozenset(),
                       max_answer: int = 0,
                       ) -> tuple[list[tuple[int, list[tuple[str, str]], bytes]], int, str]:
        answers = []
        for method, target, headers, body, request_id in requests:
            answers.append(await self.forward(method, target, headers, body, request_id))
            if answers[-1][0] in stop_on:
                break
        return answers, len(answers), ""


class Mode:
    """The TrafficMode and Advisory ports: what maintenance switches on the listener."""

    def __init__(self) -> None:
        from gateway.maintenance import Phase

        self.phase = Phase.NORMAL
        self.window: dict[str, Any] | None = None
        self.advisory: str | None = None


class Passive:
    """The router's PassiveObserver: every try's outcome."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, bool]] = []

    def record(self, node: str, seconds: float, error: bool) -> None:
        self.seen.append((node, seconds, error))
