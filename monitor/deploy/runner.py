"""Runs deploys against the live gateway: the I/O around ``plan.Deploy``.

Because the gateway is the load balancer too, the order is guaranteed: a node is
out of rotation and idle before its action runs, and back only once verified.
The record is persisted after every step; a deploy found running at start-up is
reported as interrupted and its nodes are held out of rotation until an operator
resumes or aborts it. In a fleet (``peers``) the records are shared and only the leader
runs deploys: every save is a write fenced by its epoch, so a leader that lost the lease
(paused, partitioned) cannot record, nor start, another step; the next leader takes the
deploy over (``take_over``) where the record stands.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.clock import Clock
from gateway.config.schema import DeployConfig
from gateway.events import Entry, Event, News
from gateway.node import PLANNED_STATES, Node, NodeState, Probe
from monitor.deploy.actions import ActionFailed, ActionTarget, run_action
from monitor.deploy.plan import Deploy, Step
from monitor.deploy.record import ACTIVE, DeployRecord, Status
from monitor.ports import ClusterView, ErrorBudget, Events, Spawn, Store, WriteRefused
from monitor.versions import valid_or_none, validate_version

log = logging.getLogger("hagw.deploy")
NAMESPACE = "deploys"
HISTORY = 50
_BAD_DURING_BAKE = frozenset({NodeState.UNHEALTHY, NodeState.EJECTED, NodeState.WARNING})


class DeployConflict(Exception):
    """Another deploy is active (409)."""


class DeployRefused(Exception):
    """The gate said no (422): capacity or error budget."""


class DeployUnchanged(Exception):
    """Every node already runs the version asked for: nothing to do (not an error)."""


class DeployNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class DeployFinished(Event):
    """A deploy ended: succeeded, rolled back, failed, halted or aborted."""

    record: DeployRecord

    def log_entry(self) -> Entry:
        record = self.record
        return Entry(f"deploy.{record.status.value}", f"deploy {record.id} to "
                     f"{record.version}: {record.status.value}"
                     + (f": {record.reason}" if record.reason else ""),
                     level=logging.INFO if record.status is Status.SUCCEEDED else logging.ERROR,
                     data={"deploy": record.id})


class DeployMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
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


class DeployRunner:
    def __init__(self, config: DeployConfig, *, cluster: ClusterView, budget: ErrorBudget,
                 store: Store, events: Events, spawn: Spawn, clock: Clock,
                 registry: CollectorRegistry) -> None:
        self.config = config
        self.cluster = cluster
        self.budget = budget
        self.store = store
        self.events = events
        self.spawn = spawn
        self.clock = clock
        self.records: dict[str, DeployRecord] = {}
        self.current: Deploy | None = None
        self.metrics = DeployMetrics(registry)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        current = self.current.record if self.current is not None else None
        return (f"<DeployRunner {len(self.records)} records"
                + (f", {current.id} {current.status.value}>" if current else ">"))

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, *, load: bool = True) -> None:
        """Open the session and, unless ``load`` is False (an instance that does not lead
        the fleet), pick up the records: a deploy found running was interrupted."""
        self._session = aiohttp.ClientSession()
        if load:
            await self._load(took_over=False)

    async def take_over(self) -> None:
        """This instance now leads the fleet: pick up the deploys the previous leader
        left. An active one goes on where it stood (the batch in flight starts over from
        its drain), as after an upgrade."""
        await self._load(took_over=True)

    async def let_go(self) -> None:
        """Another instance leads now: stop the deploy running here without writing its
        record (the new leader owns it, and Redis would refuse this one's writes)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.current is not None:
                record = self.current.record
                self.events.publish(News("deploy.stopped", f"deploy {record.id} stopped "
                                         "here: another instance leads the fleet and takes "
                                         "it over", level=logging.WARNING,
                                         data={"deploy": record.id}))
        self.current = None
        self._update_gauges()

    def mirror(self, data: dict[str, Any]) -> None:
        """A follower's copy of a deploy record the fleet's leader saved (read only: its
        ``GET /deploys`` and status page show it)."""
        if self._task is not None and not self._task.done():
            return  # this instance runs deploys itself
        record = DeployRecord.from_json(data)
        self.records[record.id] = record

    async def refresh(self) -> None:
        """A follower (again): every record as the fleet's leader saved it, replacing this
        instance's own, possibly stale, copies."""
        for data in (await self.store.items(NAMESPACE)).values():
            self.mirror(data)

    async def _load(self, *, took_over: bool) -> None:
        saved = await self.store.items(NAMESPACE)
        self.records = {}
        self.current = None
        for data in saved.values():
            record = DeployRecord.from_json(data)
            self.records[record.id] = record
            if record.status in ACTIVE:
                plan = Deploy(record, self.config, self.clock)
                plan.interrupt()
                self.current = plan
                if record.handed_over or took_over:
                    # The gateway was upgraded mid-deploy, or the leader changed: go on
                    # where it stood (the batch in flight starts over from its drain).
                    record.handed_over = False
                    plan.resume()
                    why = "the fleet's leader changed" if took_over else "an upgrade"
                    self.events.publish(News("deploy.resumed", f"deploy {record.id} to "
                                             f"{record.version} resumed after {why}",
                                             data={"deploy": record.id}))
                    await self._save(record)
                    self._launch(plan)
                    continue
                for name in plan.in_flight_batch:
                    node = self.cluster.get(name)
                    if node is not None:
                        node.drain(f"deploy {record.id} interrupted: held until resumed or "
                                   f"aborted", "deploy")
                self.events.publish(News("deploy.interrupted", f"deploy {record.id} to "
                                         f"{record.version} was interrupted by a gateway "
                                         "restart; resume or abort it", level=logging.WARNING,
                                         data={"deploy": record.id}))
                await self._save(record)
        self._update_gauges()

    async def stop(self, *, hand_over: bool = False) -> None:
        """Stop a running deploy where it stands. ``hand_over``: a new gateway process takes
        over (an upgrade) and resumes it on start; otherwise it waits for an operator."""
        task = self._task
        if task is not None and not task.done():
            if self.current is not None:
                self.current.interrupt()
                self.current.record.handed_over = hand_over
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if self.current is not None:
                try:
                    await self._save(self.current.record)
                except WriteRefused as exc:  # not the fleet's leader any more
                    log.warning("deploy %s: the stop was not recorded: %s",
                                self.current.record.id, exc)
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
        cluster = self.cluster
        # Nodes already out of rotation cost no capacity: a deploy that would heal a
        # half-dead fleet starts with them (see begin) and is not refused for it.
        serving_batch = [n.name for n in cluster if n.name in batch and n.serving]
        if serving_batch and cluster.below_floor(excluding=batch):
            serving_after = cluster.serving_primaries(excluding=batch)
            return (f"capacity: taking {', '.join(batch)} out would leave {serving_after} "
                    f"serving, below min_healthy={cluster.floor}")
        remaining = self.budget.budget_remaining()
        if not forced and remaining < self.config.min_error_budget:
            return (f"error budget: {remaining:.1%} left, below deploy.min_error_budget="
                    f"{self.config.min_error_budget:.0%} (--force overrides)")
        return None

    def previous_version(self, node: Node) -> str | None:
        """What a rollback returns ``node`` to: the version the newest finished deploy that
        touched it left it at; failing that, the version the node reports, if it is valid
        (a node's own word is the last resort: a compromised one could say anything); else
        None, and a rollback of the node fails rather than guess."""
        for record in self.history():
            if not record.active and record.touched(node.name):
                recorded = record.left_at(node.name)
                if recorded is not None:
                    return recorded
                break  # that deploy left the node in an unknown state: older ones are stale
        return valid_or_none(node.version)

    async def begin(self, version: str, *, force: bool = False,
                    force_reason: str = "") -> DeployRecord:
        """Start a deploy of ``version``; ValueError if it is not a valid version."""
        version = validate_version(version)
        if self.current is not None and self.current.record.active:
            record = self.current.record
            raise DeployConflict(f"deploy {record.id} to {record.version} is {record.status}")
        fleet = list(self.cluster)
        if fleet and all(n.version == version and n.serving for n in fleet):
            raise DeployUnchanged(f"every node already runs {version} and is serving: "
                                  "nothing to deploy")
        # Nodes out of rotation for an unplanned reason go first, as Kubernetes replaces
        # unready pods first: they cost no capacity, and the new version may heal them.
        fleet.sort(key=lambda n: 0 if not n.serving and n.state not in PLANNED_STATES else 1)
        nodes = [(n.name, self.previous_version(n)) for n in fleet]
        total = len(nodes)
        batch = max(1, self.config.max_unavailable.of(total, round_up=False))
        plan = Deploy.new(f"d-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
                          version, nodes, self.config, self.clock, batch_size=batch,
                          forced=force, force_reason=force_reason)
        refused = self.gate(plan.record.batches[0], forced=force) if nodes else "no nodes"
        if refused is not None:
            self.events.publish(News("deploy.refused", f"deploy to {version} refused: "
                                     f"{refused}", level=logging.WARNING))
            raise DeployRefused(refused)
        if force:  # record what the gate would have refused, when no reason was given
            plan.record.force_reason = (force_reason
                                        or self.gate(plan.record.batches[0], forced=False)
                                        or "forced")
        self.current = plan
        self.records[plan.record.id] = plan.record
        await self._save(plan.record)
        self.events.publish(News("deploy.started", f"deploy {plan.record.id} to {version}: "
                                 f"{total} nodes in {len(plan.record.batches)} batches"
                                 + (" (forced)" if force else ""),
                                 data={"deploy": plan.record.id}))
        self._launch(plan)
        return plan.record

    async def abort(self, deploy_id: str, reason: str = "aborted by operator") -> DeployRecord:
        record = self.get(deploy_id)
        plan = self.current
        if plan is None or plan.record is not record or not record.active:
            raise DeployConflict(f"deploy {deploy_id} is {record.status}, not active")
        plan.abort(reason)
        self.events.publish(News("deploy.aborting", f"deploy {deploy_id}: {reason}",
                                 level=logging.WARNING, data={"deploy": deploy_id}))
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
        self.events.publish(News("deploy.resumed", f"deploy {deploy_id} resumed",
                                 data={"deploy": deploy_id}))
        await self._save(record)
        self._launch(plan)
        return record

    # -- running -------------------------------------------------------------------------

    def _launch(self, plan: Deploy) -> None:
        self._task = self.spawn(self._run(plan), name=f"deploy {plan.record.id}")
        self._update_gauges()

    async def _run(self, plan: Deploy) -> None:
        try:
            await self._steps(plan)
        except WriteRefused as exc:
            # The fleet's leader changed under us: the record is the next leader's now.
            self.events.publish(News("deploy.stopped", f"deploy {plan.record.id} stopped "
                                     f"here: {exc}", level=logging.WARNING,
                                     data={"deploy": plan.record.id}))
            if self.current is plan:
                self.current = None
            self._update_gauges()

    async def _steps(self, plan: Deploy) -> None:
        record = plan.record
        while (step := plan.next()) is not None:
            plan.started(step)
            began = time.monotonic()
            try:
                # From the moment the step is on record, a stop (abort, shutdown) ends it
                # with its reason, even one arriving while the record is being saved.
                await self._save(record)
                self.events.publish(News("deploy.step", f"{step}: started", data={
                    "deploy": record.id, "step": step.kind, "nodes": list(step.nodes)}))
                ok, detail, output = await self._execute(record, step)
            except asyncio.CancelledError:
                plan.cancelled(step, "interrupted by a gateway shutdown"
                               if record.status is Status.INTERRUPTED else "stopped by abort")
                raise
            self.metrics.step_seconds.labels(step.kind).observe(time.monotonic() - began)
            plan.finished(step, ok, detail, output)
            self.events.publish(News(
                "deploy.step", f"{step}: {'ok' if ok else 'failed'}" + (f" ({detail})"
                                                                        if detail else ""),
                level=logging.INFO if ok else logging.ERROR, data={
                    "deploy": record.id, "step": step.kind, "ok": ok,
                    "nodes": list(step.nodes)}))
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
        self.events.publish(DeployFinished(record))
        self._update_gauges()

    def _release_unmoved(self, record: DeployRecord) -> None:
        """After a failure, nodes the deploy drained but never touched go back in."""
        for batch in record.batches:
            for name in batch:
                run = record.nodes[name]
                node = self.cluster.get(name)
                if node is not None and not run.moved and "deploy" in node.holds:
                    node.undrain(f"deploy {record.id} failed before touching this node",
                                 "deploy")

    async def _save(self, record: DeployRecord) -> None:
        self.metrics.progress.set(record.updated)
        await self.store.put(NAMESPACE, record.id, record.to_json())
        old = sorted(self.records.values(), key=lambda r: r.created)[:-HISTORY]
        for stale in old:
            if not stale.active:
                del self.records[stale.id]
                await self.store.delete(NAMESPACE, stale.id)
        self._update_gauges()

    def _update_gauges(self) -> None:
        active = self.current is not None and self.current.record.active
        self.metrics.in_progress.set(1 if active else 0)

    # -- steps ---------------------------------------------------------------------------

    async def _execute(self, record: DeployRecord, step: Step) -> tuple[bool, str, str]:
        nodes = [self.cluster.get(name) for name in step.nodes]
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
        if reason is not None and not await self.cluster.wait_until(
                lambda: self.gate(batch, forced=record.forced) is None, self.config.node_timeout):
            return False, reason, ""
        return True, "", ""

    async def _drain(self, record: DeployRecord, nodes: list[Node],
                     step: Step) -> tuple[bool, str, str]:
        why = (f"rollback {record.id}: back to the previous version" if step.rollback
               else f"deploy {record.id}: {record.version}")
        for node in nodes:
            if "deploy" not in node.holds:
                node.drain(why, "deploy")  # beside any operator's hold, never instead of it
        timeout = self.config.drain_timeout
        idle = await asyncio.gather(*(n.wait_idle(timeout) for n in nodes))
        busy = [f"{n.name} ({n.in_flight})" for n, ok in zip(nodes, idle, strict=True) if not ok]
        detail = f"still in flight after {timeout:g}s: {', '.join(busy)}" if busy else "idle"
        return True, detail, ""

    async def _action(self, record: DeployRecord, node: Node,
                      step: Step) -> tuple[bool, str, str]:
        assert self._session is not None
        run = record.nodes[node.name]
        if step.rollback and step.version is None:
            return False, (f"no version to roll {node.name} back to: no earlier deploy "
                           "recorded one and the node reported no valid version when this "
                           "deploy started"), ""
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
                     f"readmitting after verification", "deploy")

        def verified() -> bool:
            return node.probe is Probe.HEALTHY and (expected is None or node.version == expected)

        ok = await self.cluster.wait_until(verified, self.config.node_timeout)
        node.expect_version(None)
        if not ok:
            # The real cause: the last probe's answer while it fails; the version only when
            # the probes pass and the node reports another one.
            if node.probe is not Probe.HEALTHY:
                why = node.probe_reason or f"{node.state}: {node.reason}"
            else:
                why = f"it reports version {node.version}, expected {expected}"
            node.drain(f"deploy {record.id}: {node.name} failed verification", "deploy")
            return False, f"not verified within {self.config.node_timeout:g}s: {why}", ""
        return True, f"verified, version {node.version}", ""

    async def _bake(self, nodes: list[Node]) -> tuple[bool, str, str]:
        bake = self.config.bake_time
        before = list(self.budget.totals)

        def bad_node() -> Node | None:
            return next((n for n in nodes if n.state in _BAD_DURING_BAKE), None)

        await self.cluster.wait_until(lambda: bad_node() is not None, bake)
        node = bad_node()
        if node is not None:
            return False, f"{node.name} went {node.state} while baking: {node.reason}", ""
        good = self.budget.totals[0] - before[0]
        bad = self.budget.totals[1] - before[1]
        if good + bad >= 20 and bad / (good + bad) > self.config.max_5xx_ratio:
            return False, (f"the gateway's error ratio rose to {bad / (good + bad):.2%} "
                           f"while baking (max {self.config.max_5xx_ratio:.2%})"), ""
        return True, f"baked {bake:g}s: {good} good, {bad} bad", ""
