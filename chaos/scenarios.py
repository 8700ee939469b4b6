"""The scenarios. Each one: warm up under load, inject one fault, keep the load on,
recover, verify. Every scenario gets a fresh fleet, gateway and state directory.

The checks are the suite's figures of merit: no failed idempotent request for a
single-node crash, hang, warning or deploy; non-idempotent failures only for
requests in flight on the crashed node; and no lost accepted write, anywhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from chaos import netem, peers
from chaos.analysis import (
    GATEWAY_LOSS,
    NODE_LOSS,
    Check,
    FaultWindow,
    Tally,
    failures_only_in_flight,
    no_duplicated_writes,
    no_failed_gets,
    no_failed_posts,
    no_lost_writes,
    posts_fail_only_in_flight,
)
from chaos.gateway import defaults_config, operator_config
from chaos.report import ScenarioResult
from chaos.settings import Settings
from chaos.stage import Stage

VICTIM = "node-2"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[Stage], Awaitable[None]]
    #: Needs a test host in a network namespace with tc netem.
    netns: bool = False
    #: hagw, or a peer (nginx, haproxy) in front of the same fleet.
    proxy: str = "hagw"
    #: hagw on its documented defaults (chaos.gateway.defaults_config), not the operator
    #: config; the load then sends exactly ``Settings.compare_requests``.
    defaults: bool = False
    #: hagw instances sharing a redis-server behind haproxy in TCP mode (1: one gateway).
    instances: int = 1


class Skip(Exception):
    pass


# -- helpers --------------------------------------------------------------------------------

def _correctness(stage: Stage, t: Tally) -> None:
    stage.checks += [no_lost_writes(t), no_duplicated_writes(t)]


async def _back_in_rotation(stage: Stage, names: list[str]) -> Check:
    began = time.monotonic()
    ok = await stage.watch.wait(lambda nodes: all(nodes.get(n, {}).get("serving")
                                                  for n in names), stage.settings.wait_timeout)
    took = time.monotonic() - began
    stage.mark(f"{', '.join(names)} back in rotation" if ok else "still out of rotation")
    states = {n: stage.watch.latest.get(n, {}).get("state") for n in names}
    return Check("back in rotation after recovery", ok,
                 f"{took:.1f}s after the fault ended" if ok else f"states: {states}")


async def _fault_phase(stage: Stage, node: str, label: str, on: dict[str, Any],
                       off: dict[str, Any]) -> None:
    """A /_fault setting on one node for the fault phase, then its reset and recovery.
    A request the faulty node cut (or left unanswered) counts as in flight on it."""
    target = stage.node(node)
    await stage.fleet.fault(target, **on)
    start = stage.mark(f"{node}: {label}")
    await stage.hold(stage.settings.duration)
    await stage.fleet.fault(target, **off)
    restored = stage.mark(f"{node}: fault removed")
    stage.node_window(f"{node} {label}", node, start, restored)
    seen = stage.watch.states_between(node, start, restored)
    stage.notes.append(f"{node} states during the fault: {' -> '.join(seen) or 'unchanged'}")
    stage.checks.append(await _back_in_rotation(stage, [node]))
    await stage.hold(stage.settings.recovery)


# -- single-node faults ---------------------------------------------------------------------

async def node_kill(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    victim = stage.node(VICTIM)
    at = await stage.fleet.kill(victim)
    stage.mark(f"SIGKILL {VICTIM}")
    await stage.hold(stage.settings.duration)
    await stage.fleet.start(victim)
    restarted = stage.mark(f"{VICTIM} restarted (new process, empty memory)")
    stage.node_window(f"{VICTIM} SIGKILL", VICTIM, at, restarted)
    stage.checks.append(await _back_in_rotation(stage, [VICTIM]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks += [no_failed_gets(t), posts_fail_only_in_flight(t)]
    _correctness(stage, t)


async def node_hang(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    victim = stage.node(VICTIM)
    at = stage.fleet.freeze(victim)
    stage.mark(f"SIGSTOP {VICTIM} (hung: connections accepted, never answered)")
    await stage.hold(stage.settings.duration)
    thawed = stage.fleet.thaw(victim)
    stage.mark(f"SIGCONT {VICTIM}")
    stage.node_window(f"{VICTIM} SIGSTOP", VICTIM, at, thawed)
    stage.checks.append(await _back_in_rotation(stage, [VICTIM]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks += [no_failed_gets(t), posts_fail_only_in_flight(t)]
    _correctness(stage, t)


def _setting_fault(label: str, on: dict[str, Any], off: dict[str, Any],
                   note: str = "") -> Callable[[Stage], Awaitable[None]]:
    """A scenario that only flips one /_fault setting on the victim for the fault phase."""
    async def run(stage: Stage) -> None:
        await stage.open()
        await stage.warm_up()
        await _fault_phase(stage, VICTIM, label, on, off)
        t = await stage.finish()
        if note:
            stage.notes.append(note)
        _correctness(stage, t)
    return run


latency = _setting_fault("+300 ms latency", {"latency_ms": 300}, {"latency_ms": 0})
error_burst = _setting_fault(
    "every request answered 503", {"error_rate": 1.0, "error_status": 503},
    {"error_rate": 0.0},
    note="a node's own 503 to a POST is passed through: the write was not applied and "
         "the client may retry it")
resets = _setting_fault("20% of connections cut mid-response", {"reset_rate": 0.2},
                        {"reset_rate": 0.0})
drip = _setting_fault("answers drip at 2000 B/s", {"drip_bps": 2000}, {"drip_bps": 0})


async def warn(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    victim = stage.node(VICTIM)
    await stage.fleet.fault(victim, health="warn")
    start = stage.mark(f"{VICTIM}: /health reports warn")
    drained = await stage.watch.wait_node(VICTIM, stage.settings.wait_timeout,
                                          state="WARNING", serving=False)
    stage.mark(f"{VICTIM} WARNING, drained" if drained else f"{VICTIM} not drained")
    stage.checks.append(Check("warn node taken out of rotation", drained,
                              f"{time.monotonic() - start:.2f}s after the warn" if drained
                              else f"state {stage.watch.latest.get(VICTIM)}"))
    await stage.hold(stage.settings.duration)
    await stage.fleet.fault(victim, health="ok")
    stage.mark(f"{VICTIM}: /health reports ok")
    stage.checks.append(await _back_in_rotation(stage, [VICTIM]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks += [no_failed_gets(t), no_failed_posts(t)]
    _correctness(stage, t)


# -- hagw on its defaults, beside nginx and haproxy -------------------------------------------

#: Each node's own latency in the comparisons on defaults.
NODE_LATENCY_MS = 20


def _on_defaults(fault: str, proxy: str) -> Callable[[Stage], Awaitable[None]]:
    """The issue's setup: three nodes answering in 20 ms, 400 req/s open loop with 30%
    POSTs and no Idempotency-Key, one node SIGSTOPped (or SIGKILLed) for the fault phase;
    the same fleet, load and fault for hagw on its defaults, nginx and haproxy."""

    async def run(stage: Stage) -> None:
        await stage.open()
        for node in stage.fleet.nodes:
            await stage.fleet.fault(node, latency_ms=NODE_LATENCY_MS)
        await stage.warm_up()
        victim = stage.node(VICTIM)
        if fault == "hang":
            at = stage.fleet.freeze(victim)
            stage.mark(f"SIGSTOP {VICTIM}")
            await stage.hold(stage.settings.duration)
            restored = stage.fleet.thaw(victim)
            stage.mark(f"SIGCONT {VICTIM}")
        else:
            at = await stage.fleet.kill(victim)
            stage.mark(f"SIGKILL {VICTIM}")
            await stage.hold(stage.settings.duration)
            await stage.fleet.start(victim)
            await stage.fleet.fault(victim, latency_ms=NODE_LATENCY_MS)
            restored = stage.mark(f"{VICTIM} restarted")
        stage.node_window(f"{VICTIM} {fault}", VICTIM, at, restored,
                          signatures=(*NODE_LOSS, "status 502", "status 504"),
                          note=proxy == "hagw")
        await stage.run_out(stage.settings.wait_timeout * 2)
        t = await stage.finish()
        failed = t.failed_get + t.failed_post
        p99_all = _p99_all(stage)
        stage.notes.insert(0, f"{failed} failed of {t.requests} ({t.failed_get} GET, "
                           f"{t.failed_post} POST); {t.duplicates} POST(s) a node ran twice; "
                           f"p99 over all requests {p99_all * 1000:.0f} ms")
        if proxy != "hagw":
            return  # a reference row: figures only
        stage.checks.append(no_failed_gets(t))
        stage.checks.append(posts_fail_only_in_flight(t))
        stage.checks.append(no_duplicated_writes(t))
        if fault == "hang":
            # The failures come from the first moment of the stall, however long the run.
            stage.checks.append(Check("at most 5 failed requests", failed <= 5,
                                      f"{failed} failed of {t.requests}"))
            stage.checks.append(Check("p99 over all requests under 3 s", p99_all < 3.0,
                                      f"{p99_all * 1000:.0f} ms"))
        stage.checks.append(no_lost_writes(t))

    return run


def _p99_all(stage: Stage) -> float:
    """The 99th percentile over every request, failed ones included."""
    values = list(stage.load.latencies) + [o.done - o.sent for o in stage.load.outcomes
                                           if o.failure]
    values.sort()
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0


# -- whole-fleet faults and deploys ---------------------------------------------------------

async def all_down(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    nodes = stage.fleet.nodes
    killed = await asyncio.gather(*(stage.fleet.kill(n) for n in nodes))
    down = min(killed)
    stage.mark("SIGKILL every node")
    await stage.hold(stage.settings.duration)
    await asyncio.gather(*(stage.fleet.start(n) for n in nodes))
    up = stage.mark("every node restarted")
    for n in nodes:
        stage.node_window(f"{n.name} SIGKILL", n.name, down, up, note=False)
    stage.checks.append(await _back_in_rotation(stage, [n.name for n in nodes]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    first_ok = min((o.done for o in stage.load.outcomes
                    if o.method == "POST" and o.sent >= up and o.accepted), default=None)
    if first_ok is not None:
        stage.notes.append(f"first accepted write {first_ok - up:.2f}s after the restart")
    during = Counter(o.failure for o in stage.load.outcomes if o.failure and down <= o.sent <= up)
    stage.notes.insert(0, f"while every node was down: {sum(during.values())} failed, "
                       + ", ".join(f"{n} {kind}" for kind, n in during.most_common()))
    _correctness(stage, t)


async def _wait_deploy(stage: Stage, deploy_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + stage.settings.wait_timeout * 2
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        record = await stage.admin.get(f"/deploys/{deploy_id}")
        if record["status"] not in ("running", "rolling_back"):
            return record
        await asyncio.sleep(0.2)
    return record


async def _versions(stage: Stage) -> dict[str, str]:
    nodes = (await stage.admin.get("/nodes"))["nodes"]
    return {n["name"]: n.get("version") or "?" for n in nodes}


async def deploy(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    status, body = await stage.admin.post("/deploys", {"version": "v2"})
    if status != 202:
        raise RuntimeError(f"POST /deploys answered {status}: {body}")
    stage.mark(f"deploy {body['id']} to v2 started ({body['nodes']} nodes)")
    record = await _wait_deploy(stage, body["id"])
    stage.mark(f"deploy {record['status']}")
    stage.checks.append(Check("deploy succeeded", record["status"] == "succeeded",
                              record.get("reason") or record["status"]))
    versions = await _versions(stage)
    stage.checks.append(Check("every node on v2", set(versions.values()) == {"v2"},
                              str(versions)))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks += [no_failed_gets(t), no_failed_posts(t)]
    _correctness(stage, t)


# -- the gateway itself SIGKILLed ----------------------------------------------------------

async def _maintenance(stage: Stage) -> dict[str, Any]:
    return dict(await stage.admin.get("/maintenance"))


async def _whole_fleet_window(stage: Stage) -> dict[str, Any]:
    """A whole-fleet window for an hour (ended by the scenario)."""
    status, window = await stage.admin.post("/maintenance", {"duration": "1h",
                                                             "reason": "chaos: whole fleet"})
    if status != 201:
        raise RuntimeError(f"POST /maintenance answered {status}: {window}")
    stage.mark(f"maintenance window {window['id']} started (whole fleet"
               f"{', every instance' if len(stage.gateways) > 1 else ''})")
    return dict(window)


async def gateway_kill_maintenance(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    window = await _whole_fleet_window(stage)
    await stage.hold(stage.settings.duration / 2)
    await stage.restart_gateway()
    summary = await _maintenance(stage)
    stage.checks.append(Check("window survived the SIGKILL", summary["mode"] == "active",
                              f"mode {summary['mode']}, {summary['queue']['depth']} queued"))
    await stage.hold(stage.settings.duration / 2)
    depth = (await _maintenance(stage))["queue"]["depth"]
    await stage.admin.post(f"/maintenance/{window['id']}/end")
    stage.mark(f"window ended with {depth} writes queued: verify, then replay")
    # Kill it again in the middle of the replay: entries being sent must be re-sent once.
    replay_killed = False
    deadline = time.monotonic() + stage.settings.wait_timeout
    while time.monotonic() < deadline:
        summary = await _maintenance(stage)
        if summary["mode"] == "replaying" and summary["queue"]["done"] >= min(50, depth // 4):
            stage.mark(f"replaying: {summary['queue']['done']} done, "
                       f"{summary['queue']['depth']} waiting")
            await stage.restart_gateway()
            replay_killed = True
            break
        if summary["mode"] == "normal":
            break
        await asyncio.sleep(0.02)
    if not replay_killed:
        stage.notes.append("the replay finished before it could be interrupted")
    # Live writes keep arriving and queue behind the replay (FIFO): watch whether the
    # replay keeps up with them while the load is on.
    began, done_before = time.monotonic(), int((await _maintenance(stage))["queue"]["done"])
    phase_end = began + stage.settings.recovery * 2
    while time.monotonic() < phase_end:
        summary = await _maintenance(stage)
        if summary["mode"] == "normal":
            break
        await asyncio.sleep(0.5)
    replayed = int(summary["queue"]["done"]) - done_before
    rate = replayed / max(0.1, time.monotonic() - began)
    under_load = summary["mode"] == "normal"
    stage.mark("replay caught up under load" if under_load else
               f"still {summary['mode']} under load, {summary['queue']['depth']} waiting")
    offered = stage.settings.rate * 0.3
    stage.notes.append(f"replay ran at {rate:.0f} writes/s under load, against "
                       f"{offered:.0f} writes/s offered: " + (
                           "it caught up while the load was on" if under_load else
                           "it caught up only after the load stopped"))
    await stage.hold(stage.settings.recovery if under_load else 0)
    await stage.stop_load()
    drained = await _queue_drained(stage, stage.settings.wait_timeout * 3)
    summary = await _maintenance(stage)
    stage.mark(f"queue drained: {summary['queue']['done']} replayed, "
               f"{summary['queue']['failed']} failed" if drained else "queue not drained")
    stage.checks.append(Check("every queued write replayed after the window",
                              drained and summary["queue"]["failed"] == 0,
                              f"mode {summary['mode']}, {summary['queue']['done']} replayed, "
                              f"depth {summary['queue']['depth']}, failed "
                              f"{summary['queue']['failed']}"))
    t = await stage.count()
    _correctness(stage, t)


async def _queue_drained(stage: Stage, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = await _maintenance(stage)
        if summary["mode"] == "normal" and summary["queue"]["depth"] == 0:
            return True
        await asyncio.sleep(0.2)
    return False


async def gateway_kill_drain(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    reason = "chaos: disk swap"
    status, body = await stage.admin.post(f"/nodes/{VICTIM}/drain", {"reason": reason})
    if status != 200:
        raise RuntimeError(f"drain answered {status}: {body}")
    stage.mark(f"operator drained {VICTIM}")
    await stage.hold(stage.settings.duration / 2)
    await stage.restart_gateway()
    node = (await stage.admin.get(f"/nodes/{VICTIM}"))
    restored = (node["state"] == "DRAINING" and (node.get("drain") or {}).get("source")
                == "operator" and reason in node["reason"])
    stage.checks.append(Check("operator drain restored after restart", restored,
                              f"{node['state']}: {node['reason']}"))
    before = (await stage.fleet.stats(stage.node(VICTIM)))["requests"]
    await stage.hold(stage.settings.duration / 2)
    after = (await stage.fleet.stats(stage.node(VICTIM)))["requests"]
    stage.checks.append(Check("drained node gets no traffic after the restart", after == before,
                              f"{after - before} requests reached {VICTIM} while drained"))
    await stage.admin.post(f"/nodes/{VICTIM}/undrain", {"reason": "chaos: done"})
    stage.mark(f"operator undrained {VICTIM}")
    stage.checks.append(await _back_in_rotation(stage, [VICTIM]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    _correctness(stage, t)


async def gateway_kill_deploy(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    status, body = await stage.admin.post("/deploys", {"version": "v2"})
    if status != 202:
        raise RuntimeError(f"POST /deploys answered {status}: {body}")
    deploy_id = body["id"]
    stage.mark(f"deploy {deploy_id} to v2 started")
    # Kill the gateway while a node's action runs (the redeploy goes on without it).
    step = "?"
    deadline = time.monotonic() + stage.settings.wait_timeout
    while time.monotonic() < deadline:
        record = await stage.admin.get(f"/deploys/{deploy_id}")
        steps = [(name, s) for name, run in record["nodes"].items() for s in run["steps"]
                 if not s.get("ended")]
        if steps and steps[0][1]["kind"] == "action":
            step = f"{steps[0][0]} {steps[0][1]['kind']}"
            break
        await asyncio.sleep(0.02)
    stage.mark(f"mid-deploy ({step})")
    await stage.restart_gateway()
    record = await stage.admin.get(f"/deploys/{deploy_id}")
    stage.checks.append(Check("deploy reported interrupted after restart",
                              record["status"] == "interrupted", record["status"]))
    held = [n["name"] for n in (await stage.admin.get("/nodes"))["nodes"]
            if (n.get("drain") or {}).get("source") == "deploy"]
    stage.notes.append(f"held out of rotation after the restart: {', '.join(held) or 'none'}")
    status, body = await stage.admin.post(f"/deploys/{deploy_id}/resume")
    stage.mark(f"resume answered {status}")
    record = await _wait_deploy(stage, deploy_id)
    stage.mark(f"deploy {record['status']}")
    stage.checks.append(Check("resumed deploy succeeded", record["status"] == "succeeded",
                              record.get("reason") or record["status"]))
    versions = await _versions(stage)
    stage.checks.append(Check("every node on v2", set(versions.values()) == {"v2"},
                              str(versions)))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    _correctness(stage, t)


# -- the gateway's own processes: a worker dies, hagw is upgraded --------------------------

async def worker_kill(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    before = await stage.admin.get("/processes")
    victim = before["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed = stage.mark(f"SIGKILL worker {victim['id']} (pid {victim['pid']})")
    replaced = None
    deadline = time.monotonic() + stage.settings.wait_timeout
    while time.monotonic() < deadline:
        now = await stage.admin.get("/processes")
        serving = [w for w in now["workers"] if w["serving"]]
        if len(serving) == len(before["workers"]) and victim["pid"] not in {
                w["pid"] for w in now["workers"]}:
            replaced = stage.mark("a replacement worker serves")
            break
        await asyncio.sleep(0.02)
    stage.checks.append(Check("replacement worker serving", replaced is not None,
                              f"{replaced - killed:.2f}s after the SIGKILL" if replaced
                              else "not replaced"))
    stage.windows.append(FaultWindow("worker SIGKILL", killed, killed + 1.0, GATEWAY_LOSS))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks.append(failures_only_in_flight(t, most=10))
    _correctness(stage, t)


async def upgrade(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    reason = "chaos: disk swap"
    await stage.admin.post(f"/nodes/{VICTIM}/drain", {"reason": reason})
    status, window = await stage.admin.post("/maintenance", {
        "start": "+1h", "duration": "30m", "reason": "chaos: upcoming", "nodes": ["node-3"]})
    if status != 201:
        raise RuntimeError(f"POST /maintenance answered {status}: {window}")
    stage.mark(f"operator drained {VICTIM}; window {window['id']} scheduled")
    old = (await stage.admin.get("/processes"))["supervisor"]["pid"]
    status, body = await stage.admin.post("/upgrade")
    if status != 202:
        raise RuntimeError(f"POST /upgrade answered {status}: {body}")
    began = stage.mark(f"upgrade: pid {body['pid']} started to take over from {old}")
    took = None
    deadline = time.monotonic() + stage.settings.wait_timeout
    while time.monotonic() < deadline:
        now = await stage.admin.get("/processes")
        assert stage.gateway.child is not None  # the old supervisor: our child
        if now["supervisor"]["pid"] == body["pid"] and not stage.gateway.child.alive():
            took = stage.mark(f"pid {body['pid']} serves; pid {old} gone")
            break
        await asyncio.sleep(0.05)
    stage.checks.append(Check("the new supervisor took over", took is not None,
                              f"{took - began:.2f}s after POST /upgrade" if took
                              else "the old one is still there"))
    node = await stage.admin.get(f"/nodes/{VICTIM}")
    stage.checks.append(Check("operator drain kept across the upgrade",
                              node["state"] == "DRAINING" and reason in node["reason"],
                              f"{node['state']}: {node['reason']}"))
    upcoming = [w["id"] for w in (await _maintenance(stage))["upcoming"]]
    stage.checks.append(Check("scheduled window kept across the upgrade",
                              window["id"] in upcoming, f"upcoming: {upcoming}"))
    await stage.admin.post(f"/nodes/{VICTIM}/undrain", {"reason": "chaos: done"})
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks += [no_failed_gets(t), no_failed_posts(t)]
    _correctness(stage, t)


# -- the network: netem on a test host in a namespace ---------------------------------------

NETNS_NODE = "node-3"


def _host(stage: Stage) -> netem.NetnsHost:
    assert stage.netns is not None, "netem scenarios run with a test host"
    return stage.netns


async def netem_loss(stage: Stage) -> None:
    host = _host(stage)
    await stage.open()
    await stage.warm_up()
    host.netem("loss", "20%")
    start = stage.mark(f"netem: 20% packet loss both ways between the gateway and {NETNS_NODE}")
    await stage.hold(stage.settings.duration)
    host.clear()
    restored = stage.mark("netem removed")
    stage.notes.append(f"{NETNS_NODE} states during the loss: "
                       f"{' -> '.join(stage.watch.states_between(NETNS_NODE, start, restored))}")
    stage.checks.append(await _back_in_rotation(stage, [NETNS_NODE]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    _correctness(stage, t)


async def netem_partition(stage: Stage) -> None:
    host = _host(stage)
    await stage.open()
    await stage.warm_up()
    host.netem("loss", "100%")
    start = stage.mark(f"netem: partition (100% loss) between the gateway and {NETNS_NODE}")
    await stage.hold(stage.settings.duration)
    host.clear()
    restored = stage.mark("partition healed")
    stage.node_window(f"{NETNS_NODE} partition", NETNS_NODE, start, restored)
    stage.checks.append(await _back_in_rotation(stage, [NETNS_NODE]))
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks.append(posts_fail_only_in_flight(t))
    _correctness(stage, t)


# -- several instances on Redis (peers) ----------------------------------------------------

#: How long a new leader may take: the lease's TTL (chaos.instances) and slack.
TAKEOVER = 7.0


def _availability(t: Tally, floor: float) -> Check:
    failed = t.failed_get + t.failed_post
    availability = 1 - failed / max(1, t.requests)
    return Check(f"availability over the run >= {floor:.1%}", availability >= floor,
                 f"{availability:.3%}: {failed} of {t.requests} failed")


async def _kill_leader(stage: Stage) -> float:
    """SIGKILL the leader instance, supervisor and workers at once; the admin calls and
    the watch go to a survivor. Returns when the kill was sent."""
    leader = await stage.leader(stage.settings.wait_timeout)
    survivor = next(g for g in stage.gateways if g is not leader)
    stage.use(survivor)
    killed = await leader.kill_host()
    stage.mark(f"leader {leader.workdir.name} SIGKILLed (its whole process group)")
    # Until haproxy's checks (200 ms, fall 2) take it out, new connections may still be
    # sent to it and refused (then redispatched); what it had in flight is lost.
    stage.windows.append(FaultWindow(f"instance {leader.workdir.name} SIGKILL", killed,
                                     killed + 1.0, GATEWAY_LOSS))
    began = time.monotonic()
    new = await stage.leader(TAKEOVER)
    stage.mark(f"{new.workdir.name} leads, {time.monotonic() - began:.1f}s after the kill")
    stage.checks.append(Check("another instance took the lease", new is not leader,
                              f"{new.workdir.name} leads"))
    return killed


async def fleet_instance_kill(stage: Stage) -> None:
    await stage.open()
    await stage.warm_up()
    await _kill_leader(stage)
    await stage.hold(stage.settings.duration)
    t = await stage.finish()
    stage.checks += [failures_only_in_flight(t, int(stage.settings.rate)),
                     _availability(t, 0.999)]
    _correctness(stage, t)


async def fleet_queue(stage: Stage) -> None:
    """A whole-fleet window with writes queued through every instance; the leader
    SIGKILLed mid-replay; every accepted write delivered once."""
    await stage.open()
    await stage.warm_up()
    window = await _whole_fleet_window(stage)
    want = 200 if stage.settings.quick else 2000
    deadline = time.monotonic() + stage.settings.wait_timeout
    depth = 0
    while depth < want and time.monotonic() < deadline:
        await stage.hold(0.5)
        depth = int((await _maintenance(stage))["queue"]["depth"])
    stage.mark(f"{depth} writes queued across the instances")
    await stage.admin.post(f"/maintenance/{window['id']}/end")
    stage.mark("window ended: verify, then the leader replays")
    deadline = time.monotonic() + stage.settings.wait_timeout
    while time.monotonic() < deadline:
        summary = await _maintenance(stage)
        if summary["mode"] == "replaying" and summary["queue"]["done"] >= depth // 4:
            break
        if summary["mode"] == "normal":
            stage.notes.append("the replay finished before its leader could be killed")
            break
        await asyncio.sleep(0.02)
    await _kill_leader(stage)
    await stage.hold(stage.settings.recovery)
    await stage.stop_load()
    drained = await _queue_drained(stage, stage.settings.wait_timeout * 3)
    summary = await _maintenance(stage)
    stage.mark(f"queue drained: {summary['queue']['done']} replayed" if drained
               else "queue not drained")
    stage.checks.append(Check("every queued write replayed, by the new leader too",
                              drained and summary["queue"]["failed"] == 0,
                              f"{depth} queued, mode {summary['mode']}, depth "
                              f"{summary['queue']['depth']}, failed "
                              f"{summary['queue']['failed']}"))
    t = await stage.count()
    stage.checks.append(failures_only_in_flight(t, int(stage.settings.rate)))
    _correctness(stage, t)


async def fleet_redis_kill(stage: Stage) -> None:
    """redis-server SIGKILLed under load: no request fails, changes of shared state are
    refused with the reason, and it all goes on once Redis is back."""
    assert stage.redis is not None
    await stage.open()
    await stage.warm_up()
    await asyncio.to_thread(stage.redis.kill)
    stage.mark("redis-server SIGKILLed")
    deadline = time.monotonic() + stage.settings.wait_timeout
    peers_view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        peers_view = await stage.admin.get("/peers")
        if not peers_view.get("connected"):
            break
        await asyncio.sleep(0.05)
    stage.mark(f"the instances see it: {peers_view.get('reason')}")
    status, body = await stage.admin.post("/deploys", {"version": "v2"})
    stage.checks.append(Check("a deploy is refused with the reason while Redis is down",
                              status == 503 and body.get("error") == "not_replicated",
                              f"{status}: {body.get('message', body)}"))
    await stage.hold(stage.settings.duration)
    await asyncio.to_thread(stage.redis.start)
    stage.mark("redis-server started again (its AOF replayed)")
    back = time.monotonic() + stage.settings.wait_timeout
    while time.monotonic() < back:
        peers_view = await stage.admin.get("/peers")
        if peers_view.get("connected"):
            break
        await asyncio.sleep(0.05)
    stage.mark("the instances see it back" if peers_view.get("connected")
               else "Redis not seen back")
    await stage.hold(stage.settings.recovery)
    t = await stage.finish()
    stage.checks += [no_failed_gets(t), no_failed_posts(t)]
    _correctness(stage, t)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("node-kill", "one node SIGKILLed, later restarted", node_kill),
    Scenario("node-hang", "one node SIGSTOPped (hung), later SIGCONT", node_hang),
    Scenario("latency", "+300 ms on one node", latency),
    Scenario("error-burst", "one node answers 503 to everything for a while", error_burst),
    Scenario("reset", "one node cuts 20% of connections mid-response", resets),
    Scenario("drip", "one node drips its answers at 2000 B/s", drip),
    Scenario("all-down", "every node SIGKILLed, then restarted", all_down),
    Scenario("warn", "one node reports warn on /health, later ok", warn),
    Scenario("deploy", "rolling deploy to v2 under load (demo-redeploy)", deploy),
    Scenario("gateway-kill-maintenance", "gateway SIGKILLed in a whole-fleet window with "
             "queued writes, and again mid-replay", gateway_kill_maintenance),
    Scenario("gateway-kill-drain", "gateway SIGKILLed with an operator drain in place",
             gateway_kill_drain),
    Scenario("gateway-kill-deploy", "gateway SIGKILLed mid-deploy, then the deploy resumed",
             gateway_kill_deploy),
    Scenario("worker-kill", "one of the gateway's two worker processes SIGKILLed",
             worker_kill),
    Scenario("upgrade", "hagw upgraded in place (POST /upgrade) with a drain and a window "
             "in place", upgrade),
    *(Scenario(f"defaults-{fault}{'' if proxy == 'hagw' else '-' + proxy}",
               f"{proxy}{' on its defaults' if proxy == 'hagw' else ''}: one of three 20 ms "
               f"nodes {'SIGSTOPped' if fault == 'hang' else 'SIGKILLed'}",
               _on_defaults(fault, proxy), proxy=proxy, defaults=True)
      for fault in ("hang", "kill") for proxy in ("hagw", "nginx", "haproxy")),
    Scenario("fleet-instance-kill", "three instances on Redis behind haproxy (TCP): the "
             "leader SIGKILLed", fleet_instance_kill, instances=3),
    Scenario("fleet-queue", "three instances queue writes in a whole-fleet window; the "
             "leader SIGKILLed mid-replay", fleet_queue, instances=3),
    Scenario("fleet-redis-kill", "three instances on Redis: redis-server SIGKILLed under "
             "load, then restarted", fleet_redis_kill, instances=3),
    Scenario("netem-loss", "20% packet loss to one node (tc netem, network namespace)",
             netem_loss, netns=True),
    Scenario("netem-partition", "a partition between the gateway and one node (tc netem)",
             netem_partition, netns=True),
)
NAMES = tuple(s.name for s in SCENARIOS)


async def run_scenario(scenario: Scenario, settings: Settings, http: aiohttp.ClientSession,
                       root: Path) -> ScenarioResult:
    """Run one scenario in its own world; an error becomes an ``error`` result, never a
    leftover process."""
    began, load_before = time.monotonic(), os.getloadavg()[0]
    result = ScenarioResult(scenario.name, scenario.title, "error")
    stage: Stage | None = None
    host: netem.NetnsHost | None = None
    try:
        if scenario.netns:
            reason = await asyncio.to_thread(netem.unsupported)
            if reason is not None:
                raise Skip(reason)
            host = netem.NetnsHost(1)
            await asyncio.to_thread(host.create)
        needs = [scenario.proxy] if scenario.proxy != "hagw" else []
        if scenario.instances > 1:
            needs += ["redis-server", "haproxy"]
        missing = [tool for tool in needs if peers.binary(tool) is None]
        if missing:
            if settings.ci:
                raise RuntimeError(f"{', '.join(missing)} not installed (.ci/run installs "
                                   "them)")
            raise Skip(f"{', '.join(missing)} not installed")
        stage = Stage(settings, scenario.name, http, root, netns=host, proxy=scenario.proxy,
                      config=defaults_config if scenario.defaults else operator_config,
                      max_requests=settings.compare_requests if scenario.defaults else None,
                      instances=scenario.instances,
                      redis_binary=peers.binary("redis-server") or "redis-server")
        await scenario.run(stage)
        if stage.tally is None:
            raise RuntimeError("the scenario ended without counting (stage.finish)")
        result.tally = stage.tally
        result.status = "passed" if all(c.passed for c in stage.checks) else "failed"
    except Skip as exc:
        result.status, result.reason = "skipped", str(exc)
    except Exception as exc:
        # The table gets one line; the whole story (log tails included) goes to a file.
        result.status = "error"
        lines = str(exc).strip().splitlines() or [""]
        result.reason = f"{type(exc).__name__}: {lines[0]}"
        if stage is not None:
            (stage.workdir / "error.txt").write_text(f"{exc}\n\n{traceback.format_exc()}")
            result.reason += f" (details in {stage.workdir / 'error.txt'})"
    finally:
        if stage is not None:
            await stage.close()
            result.checks, result.notes = stage.checks, stage.notes
            result.timeline = stage.timeline
        if host is not None:
            await asyncio.to_thread(host.destroy)
        result.seconds = time.monotonic() - began
        result.loadavg = (load_before, os.getloadavg()[0])
    return result

