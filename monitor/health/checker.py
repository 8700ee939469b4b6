"""The health checker: one probe task per node, the warning evaluator, readmission checks.

Probes run concurrently in the gateway's TaskGroup, one task per node, so a
slow node never delays another's probes. Results go into the node's state
machine; the cluster then decides drains against the capacity floor.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.accounting import LATENCY_BUCKETS
from gateway.clock import Clock
from gateway.config.schema import GatewayConfig
from gateway.events import News
from gateway.node import Node, NodeChanged, NodeState, Probe
from monitor.health.probe import ProbeResult, ProbeTls, probe, verify
from monitor.health.warning import WarningDetector
from monitor.ports import ClusterView, Events, Spawn

log = logging.getLogger("hagw.monitor")

#: How often live-traffic warning signs are judged.
EVALUATE_EVERY = 1.0


class HealthChecker:
    def __init__(self, cluster: ClusterView, config: GatewayConfig, *, clock: Clock,
                 spawn: Spawn, events: Events, registry: CollectorRegistry,
                 client_tls: ssl.SSLContext | None = None) -> None:
        self.cluster = cluster
        self.spawn = spawn
        self.events = events
        #: https:// nodes are probed with the gateway's upstream client context.
        self.tls = ProbeTls(client_tls, config.upstream_tls.server_name)
        #: The warning detector; the router feeds it every try's outcome (``record``).
        self.detector = WarningDetector(config.warning, clock)
        self.checks = Counter("hagw_health_checks", "Active health checks, by result",
                              ["node", "result"], registry=registry)
        self.durations = Histogram(
            "hagw_health_check_duration_seconds", "How long active health checks took",
            ["node"], buckets=LATENCY_BUCKETS, registry=registry)
        self._tasks: dict[Node, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._evaluator: asyncio.Task[None] | None = None
        self._first_round: dict[Node, asyncio.Event] = {}
        #: Set to cut a node's wait for its next probe short (it is being readmitted).
        self._wake: dict[Node, asyncio.Event] = {}
        self._rng = random.Random()
        #: Nodes whose last health answer carried an invalid version (said once, not per probe).
        self._invalid_version: set[str] = set()
        events.subscribe(NodeChanged, self._on_change)

    def __repr__(self) -> str:
        return f"<HealthChecker probing={len(self._tasks)}>"

    def configure(self, config: GatewayConfig, client_tls: ssl.SSLContext | None) -> None:
        self.detector.config = config.warning
        self.tls = ProbeTls(client_tls, config.upstream_tls.server_name)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            headers={"User-Agent": "hagw-health-check"})
        for node in self.cluster:
            self.add(node)
        self._evaluator = self.spawn(self._evaluate_loop(), name="warning evaluator")
        await self.first_round(timeout=max((n.check.timeout for n in self.cluster),
                                           default=1.0) + 0.5)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._evaluator is not None:
            self._evaluator.cancel()
        tasks = [*self._tasks.values(), *([self._evaluator] if self._evaluator else [])]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    async def first_round(self, timeout: float) -> None:
        """Wait (bounded) until every node has had its first probe, so start-up is informed."""
        events = [e.wait() for e in self._first_round.values()]
        if events:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*events)
            except TimeoutError:
                log.warning("not every node answered its first health check within %.1fs",
                            timeout)

    def add(self, node: Node) -> None:
        if not node.check.enabled or node in self._tasks:
            return
        self._first_round[node] = asyncio.Event()
        self._wake[node] = asyncio.Event()
        self._tasks[node] = self.spawn(self._probe_loop(node), name=f"probe {node.name}")

    def remove(self, node: Node) -> None:
        task = self._tasks.pop(node, None)
        if task is not None:
            task.cancel()
        self._first_round.pop(node, None)
        self._wake.pop(node, None)
        self._invalid_version.discard(node.name)
        self.detector.forget(node.name)

    # -- the loops -----------------------------------------------------------------------

    async def _probe_loop(self, node: Node) -> None:
        assert self._session is not None
        while True:
            check = node.check
            result = await probe(self._session, node.config.url, check, self.tls)
            self._apply(node, result)
            first = self._first_round.get(node)
            if first is not None:
                first.set()
            if node.awaiting_verify:
                problem = await verify(self._session, node.config.url, check,
                                       node.expected_version, node.version, self.tls)
                if problem is None:
                    node.verify_passed("verified" + (f" version {node.version}"
                                                     if node.expected_version else ""))
                else:
                    node.verify_failed(problem)
            await self._sleep(node, self._next_wait(node))

    async def _sleep(self, node: Node, seconds: float) -> None:
        """Until the next probe, or until the node is readmitted (a window or a deploy
        ended): then it is probed at once rather than a healthy interval later."""
        wake = self._wake.get(node)
        if wake is None:
            await asyncio.sleep(seconds)
            return
        wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass

    def _next_wait(self, node: Node) -> float:
        check = node.check
        if node.probe is Probe.HEALTHY and node.failures:
            # A healthy node just failed a probe: confirm at once, so a hung node is
            # UNHEALTHY within about timeout x unhealthy_threshold.
            return 0.0
        base = check.interval if node.probe is Probe.HEALTHY else check.unhealthy_interval
        return base * (1.0 + check.jitter * self._rng.random())

    def _apply(self, node: Node, result: ProbeResult) -> None:
        self.checks.labels(node.name, result.result).inc()
        self.durations.labels(node.name).observe(result.latency)
        self._note_version(node, result)
        if result.ok:
            node.probe_passed(result.detail, result.version)
            self.detector.observe_probe(node.name, result.latency, result.warn)
        else:
            node.probe_failed(result.detail)
        self._judge(node)

    def _note_version(self, node: Node, result: ProbeResult) -> None:
        if result.invalid_version is None:
            if result.version is not None:
                self._invalid_version.discard(node.name)
            return
        if node.name in self._invalid_version:
            return
        self._invalid_version.add(node.name)
        self.events.publish(News(
            "node.invalid_version", f"{node.name} reported an invalid version "
            f"{result.invalid_version} in its health answer; treated as unknown (never used "
            "by a deploy)", node=node.name, level=logging.WARNING))

    async def _evaluate_loop(self) -> None:
        while True:
            await asyncio.sleep(EVALUATE_EVERY)
            for node in list(self.cluster):
                self._judge(node)

    def _judge(self, node: Node) -> None:
        if node.probe is Probe.UNHEALTHY or node.removed:
            return
        verdict = self.detector.evaluate(node.name)
        node.observe_warning(verdict.sign, verdict.clear)

    def _on_change(self, event: NodeChanged) -> None:
        if event.transition is not None and event.transition.new is NodeState.STARTING:
            # Old evidence must not condemn a node that is being readmitted, and it is
            # probed now rather than when its last healthy interval would have ended.
            self.detector.reset(event.transition.node)
            wake = self._wake.get(event.node)
            if wake is not None:
                wake.set()
