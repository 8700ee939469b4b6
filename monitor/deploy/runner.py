"""Runs deploys against the live gateway: the I/O around ``plan.Deploy``.

Because the gateway is the load balancer too, the order is guaranteed: a node is
out of rotation and idle before its action runs, and back only once verified.
The record is persisted after every step; a deploy found running at start-up is
reported as interrupted and its nodes are held out of rotation until an operator
resumes or aborts it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from gateway.node import Node, NodeState, Probe
from monitor.deploy.actions import ActionFailed, ActionTarget, run_action
from monitor.deploy.plan import Deploy, Step
from monitor.deploy.record import ACTIVE, DeployRecord, Status

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("hagw.deploy")
NAMESPACE = "deploys"
HISTORY = 50
_BAD_DURING_BAKE = frozenset({NodeState.UNHEALTHY, NodeState.EJECTED, NodeState.WARNING})


class DeployConflict(Exception):
    """Another deploy is active (409)."""


class DeployRefused(Exception):
    """The gate said no (422): capacity or error budget."""


class DeployNotFound(Exception):
    pass


class DeployMetrics:
    def __init__(self, gw: Gateway) -> None:
        registry = gw.metrics.registry
        self.in_progress = Gauge("hagw_deploy_in_progress", "1 while a deploy runs or waits "
                                 "interrupted", registry=registry)
        self.total = Counter("hagw_deploys", "Finished deploys, by result", ["result"],
                             registry=registry)
        self.step_seconds = Histogram(
            "hagw_deploy_step_duration_seconds", "How long each deploy step took", ["step"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=registry)
        self.out_of_rotation = Gauge(
            "hagw_deploy_node_out_of_rotation_seconds", "How long the last deploy kept each "
            "node out of rotation", ["node"], registry=registry)
        self.progress = Gauge("hagw_deploy_last_progress_timestamp_seconds",
                              "When the current or last deploy last changed step",
                              registry=registry)


class DeployOrchestrator:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.records: dict[str, DeployRecord] = {}
        self.current: Deploy | None = None
        self.metrics = DeployMetrics(gateway)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def config(self) -> Any:
        return self.gw.config.deploy

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        saved = await self.gw.store.items(NAMESPACE)
        for data in saved.values():
            record = DeployRecord.from_json(data)
            self.records[record.id] = record
            if record.status in ACTIVE:
                plan = Deploy(record, self.config, self.gw.clock)
                plan.interrupt()
                self.current = plan
                for name in plan.in_flight_batch:
                    node = self.gw.cluster.get(name)
                    if node is not None:
                        node.drain(f"deploy {record.id} interrupted: held until resumed or "
                                   f"aborted", "deploy")
                self.gw.events.record("deploy.interrupted", f"deploy {record.id} to "
                                      f"{record.version} was interrupted by a gateway restart; "
                                      f"resume or abort it", level=logging.WARNING,
                                      deploy=record.id)
                await self._save(record)
        self._update_gauges()

    async def stop(self) -> None:
        task = self._task
        if task is not None and not task.done():
            if self.current is not None:
                self.current.interrupt()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.current is not None:
                await self._save(self.current.record)
        if self._session is not None:
            await self._session.close()

    # -- the API -------------------------------------------------------------------------

    def get(self, deploy_id: str) -> DeployRecord:
        record = self.records.get(deploy_id)
        if record is None:
            raise DeployNotFound(deploy_id)
        return record

    def history(self) -> list[DeployRecord]:
        return sorted(self.records.values(), key=lambda r: r.created, reverse=True)

    def gate(self, batch: list[str], *, forced: bool) -> str | None:
        """Why a batch may not start now, or None. Capacity is never overridden by force."""
        cluster = self.gw.cluster
        serving_after = sum(1 for n in cluster if n.serving and not n.config.backup
                            and n.name not in batch)
        if serving_after < cluster.floor:
            return (f"capacity: taking {', '.join(batch)} out would leave {serving_after} "
                    f"serving, below min_healthy={cluster.floor}")
        remaining = self.gw.slo.budget_remaining()
        if not forced and remaining < self.config.min_error_budget:
            return (f"error budget: {remaining:.1%} left, below deploy.min_error_budget="
                    f"{self.config.min_error_budget:.0%} (--force overrides)")
        return None

    async def begin(self, version: str, *, force: bool = False,
                    force_reason: str = "") -> DeployRecord:
        if self.current is not None and self.current.record.active:
            record = self.current.record
            raise DeployConflict(f"deploy {record.id} to {record.version} is {record.status}")
        nodes = [(n.name, n.version) for n in self.gw.cluster]
        total = len(nodes)
        batch = max(1, self.config.max_unavailable.of(total, round_up=False))
        plan = Deploy.new(f"d-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
                          version, nodes, self.config, self.gw.clock, batch_size=batch,
                          forced=force, force_reason=force_reason)
        refused = self.gate(plan.record.batches[0], forced=force) if nodes else "no nodes"
        if refused is not None:
            self.gw.events.record("deploy.refused", f"deploy to {version} refused: {refused}",
                                  level=logging.WARNING)
            raise DeployRefused(refused)
        if force:  # record what the gate would have refused, when no reason was given
            plan.record.force_reason = (force_reason
                                        or self.gate(plan.record.batches[0], forced=False)
                                        or "forced")
        self.current = plan
        self.records[plan.record.id] = plan.record
        await self._save(plan.record)
        self.gw.events.record("deploy.started", f"deploy {plan.record.id} to {version}: "
                              f"{total} nodes in {len(plan.record.batches)} batches"
                              + (" (forced)" if force else ""), deploy=plan.record.id)
        self._launch(plan)
        return plan.record

    async def abort(self, deploy_id: str, reason: str = "aborted by operator") -> DeployRecord:
        record = self.get(deploy_id)
        plan = self.current
        if plan is None or plan.record is not record or not record.active:
            raise DeployConflict(f"deploy {deploy_id} is {record.status}, not active")
        plan.abort(reason)
        self.gw.events.record("deploy.aborting", f"deploy {deploy_id}: {reason}",
                              level=logging.WARNING, deploy=deploy_id)
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # stop the step in progress; the plan goes on from here
            await asyncio.gather(task, return_exceptions=True)
        self._release_unmoved(record)
        await self._save(record)
        if record.active:
            self._launch(plan)  # the rollback
        else:
            self._finished(record)
        return record

    async def resume(self, deploy_id: str) -> DeployRecord:
        record = self.get(deploy_id)
        plan = self.current
        if plan is None or plan.record is not record or record.status is not Status.INTERRUPTED:
            raise DeployConflict(f"deploy {deploy_id} is {record.status}, not interrupted")
        plan.resume()
        self.gw.events.record("deploy.resumed", f"deploy {deploy_id} resumed", deploy=deploy_id)
        await self._save(record)
        self._launch(plan)
        return record

    # -- running -------------------------------------------------------------------------

    def _launch(self, plan: Deploy) -> None:
        self._task = self.gw.spawn(self._run(plan), name=f"deploy {plan.record.id}")
        self._update_gauges()

    async def _run(self, plan: Deploy) -> None:
        record = plan.record
        while (step := plan.next()) is not None:
            plan.started(step)
            await self._save(record)
            self.gw.events.record("deploy.step", f"{step}: started", deploy=record.id,
                                  step=step.kind, nodes=list(step.nodes))
            began = time.monotonic()
            try:
                ok, detail, output = await self._execute(record, step)
            except asyncio.CancelledError:
                plan.cancelled(step, "interrupted by a gateway shutdown"
                               if record.status is Status.INTERRUPTED else "stopped by abort")
                raise
            self.metrics.step_seconds.labels(step.kind).observe(time.monotonic() - began)
            plan.finished(step, ok, detail, output)
            self.gw.events.record(
                "deploy.step", f"{step}: {'ok' if ok else 'failed'}" + (f" ({detail})"
                                                                        if detail else ""),
                level=logging.INFO if ok else logging.ERROR, deploy=record.id, step=step.kind,
                ok=ok, nodes=list(step.nodes))
            if not ok:
                self._release_unmoved(record)
            await self._save(record)
        if not record.active:
            self._finished(record)
        await self._save(record)

    def _finished(self, record: DeployRecord) -> None:
        self.metrics.total.labels(record.status.value).inc()
        for name, run in record.nodes.items():
            self.metrics.out_of_rotation.labels(name).set(run.out_seconds)
        level = logging.INFO if record.status is Status.SUCCEEDED else logging.ERROR
        self.gw.events.record(f"deploy.{record.status.value}", f"deploy {record.id} to "
                              f"{record.version}: {record.status.value}"
                              + (f": {record.reason}" if record.reason else ""), level=level,
                              deploy=record.id)
        self._update_gauges()

    def _release_unmoved(self, record: DeployRecord) -> None:
        """After a failure, nodes the deploy drained but never touched go back in."""
        for batch in record.batches:
            for name in batch:
                run = record.nodes[name]
                node = self.gw.cluster.get(name)
                if node is not None and not run.moved and node.drain_source == "deploy":
                    node.undrain(f"deploy {record.id} failed before touching this node")

    async def _save(self, record: DeployRecord) -> None:
        self.metrics.progress.set(record.updated)
        await self.gw.store.put(NAMESPACE, record.id, record.to_json())
        old = sorted(self.records.values(), key=lambda r: r.created)[:-HISTORY]
        for stale in old:
            if not stale.active:
                del self.records[stale.id]
                await self.gw.store.delete(NAMESPACE, stale.id)
        self._update_gauges()

    def _update_gauges(self) -> None:
        active = self.current is not None and self.current.record.active
        self.metrics.in_progress.set(1 if active else 0)

    # -- steps ---------------------------------------------------------------------------

    async def _execute(self, record: DeployRecord, step: Step) -> tuple[bool, str, str]:
        nodes = [self.gw.cluster.get(name) for name in step.nodes]
        missing = [name for name, node in zip(step.nodes, nodes, strict=True) if node is None]
        if missing:
            return False, f"{', '.join(missing)} no longer in the config", ""
        present = [n for n in nodes if n is not None]
        if step.kind == "gate":
            return await self._gate(record, list(step.nodes))
        if step.kind == "drain":
            return await self._drain(record, present, step)
        if step.kind == "action":
            return await self._action(record, present[0], step)
        if step.kind == "verify":
            return await self._verify(record, present[0], step)
        return await self._bake(present)

    async def _gate(self, record: DeployRecord, batch: list[str]) -> tuple[bool, str, str]:
        # Mid-deploy the fleet may be short for a moment; wait for it, bounded.
        reason = self.gate(batch, forced=record.forced)
        if reason is not None and not await self.gw.cluster.wait_until(
                lambda: self.gate(batch, forced=record.forced) is None, self.config.node_timeout):
            return False, reason, ""
        return True, "", ""

    async def _drain(self, record: DeployRecord, nodes: list[Node],
                     step: Step) -> tuple[bool, str, str]:
        why = (f"rollback {record.id}: back to the previous version" if step.rollback
               else f"deploy {record.id}: {record.version}")
        for node in nodes:
            if node.drain_source != "deploy":
                node.drain(why, "deploy")
        timeout = self.config.drain_timeout
        idle = await asyncio.gather(*(n.wait_idle(timeout) for n in nodes))
        busy = [f"{n.name} ({n.in_flight})" for n, ok in zip(nodes, idle, strict=True) if not ok]
        detail = f"still in flight after {timeout:g}s: {', '.join(busy)}" if busy else "idle"
        return True, detail, ""

    async def _action(self, record: DeployRecord, node: Node,
                      step: Step) -> tuple[bool, str, str]:
        assert self._session is not None
        run = record.nodes[node.name]
        target = ActionTarget(record.id, node.name, str(node.config.url), step.version or "",
                              run.previous_version if not step.rollback else record.version)
        try:
            output = await run_action(self._session, self.config, target)
        except ActionFailed as exc:
            return False, exc.detail, exc.output
        return True, "", output

    async def _verify(self, record: DeployRecord, node: Node,
                      step: Step) -> tuple[bool, str, str]:
        expected = step.version if self.config.verify_version else None
        node.expect_version(expected)
        node.restart_checks(f"redeployed to {step.version}: verifying")
        node.undrain(f"{'rollback' if step.rollback else 'deploy'} {record.id}: "
                     f"readmitting after verification")

        def verified() -> bool:
            return node.probe is Probe.HEALTHY and (expected is None or node.version == expected)

        ok = await self.gw.cluster.wait_until(verified, self.config.node_timeout)
        node.expect_version(None)
        if not ok:
            node.drain(f"deploy {record.id}: {node.name} failed verification", "deploy")
            return False, (f"not verified within {self.config.node_timeout:g}s "
                           f"({node.state}: {node.reason}; reports {node.version})"), ""
        return True, f"verified, version {node.version}", ""

    async def _bake(self, nodes: list[Node]) -> tuple[bool, str, str]:
        bake = self.config.bake_time
        before = list(self.gw.slo.totals)

        def bad_node() -> Node | None:
            return next((n for n in nodes if n.state in _BAD_DURING_BAKE), None)

        await self.gw.cluster.wait_until(lambda: bad_node() is not None, bake)
        node = bad_node()
        if node is not None:
            return False, f"{node.name} went {node.state} while baking: {node.reason}", ""
        good = self.gw.slo.totals[0] - before[0]
        bad = self.gw.slo.totals[1] - before[1]
        if good + bad >= 20 and bad / (good + bad) > self.config.max_5xx_ratio:
            return False, (f"the gateway's error ratio rose to {bad / (good + bad):.2%} "
                           f"while baking (max {self.config.max_5xx_ratio:.2%})"), ""
        return True, f"baked {bake:g}s: {good} good, {bad} bad", ""
