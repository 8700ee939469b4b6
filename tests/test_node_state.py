"""The node state machine, driven synchronously with a FakeClock."""

from __future__ import annotations

import asyncio

import pytest

from gateway.clock import FakeClock
from gateway.config.schema import (
    HealthCheckConfig,
    NodeConfig,
    SlowStartConfig,
    VerifyConfig,
    WarningConfig,
)
from gateway.config.types import NodeURL
from gateway.node import Node, NodeState, Transition


def make_node(clock: FakeClock, *, verify: bool = False, boot: bool = False,
              slow_start: float = 10.0) -> tuple[Node, list[Transition]]:
    seen: list[Transition] = []
    check = HealthCheckConfig(healthy_threshold=2, unhealthy_threshold=3,
                              verify=VerifyConfig() if verify else None)
    node = Node(NodeConfig("node-1", NodeURL("http", "127.0.0.1", 1), weight=4), check,
                clock=clock, slow_start=SlowStartConfig(window=slow_start, min_weight=0.1),
                warning=WarningConfig(recover_after=30.0, reduced_weight=0.25),
                publish=lambda e: seen.append(e.transition)  # type: ignore[attr-defined]
                if e.transition else None, boot=boot)
    return node, seen


def admit(node: Node) -> None:
    for _ in range(node.needed_passes):
        node.probe_passed()


def test_repr_is_readable() -> None:
    node, _ = make_node(FakeClock())
    node.acquire()
    assert repr(node) == "<Node node-1 STARTING in_flight=1>"


def test_boot_needs_one_pass_readmission_needs_threshold() -> None:
    clock = FakeClock()
    node, seen = make_node(clock, boot=True)
    node.probe_passed()
    assert node.state is NodeState.HEALTHY
    for i in range(3):
        node.probe_failed("probe timeout after 1000ms")
        assert node.state is (NodeState.UNHEALTHY if i == 2 else NodeState.HEALTHY)
    assert seen[-1].reason == "probe timeout after 1000ms 3/3"
    node.probe_passed()
    assert node.state is NodeState.STARTING and node.reason == "probe ok 1/2"
    node.probe_passed()
    assert node.state is NodeState.HEALTHY
    assert [t.new for t in seen] == [NodeState.HEALTHY, NodeState.UNHEALTHY, NodeState.STARTING,
                                     NodeState.HEALTHY]


def test_a_failure_while_starting_goes_back_to_unhealthy() -> None:
    node, _ = make_node(FakeClock())
    node.probe_passed()
    node.probe_failed("probe got HTTP 500")
    assert node.state is NodeState.UNHEALTHY


def test_verify_gates_readmission_and_checks_the_version() -> None:
    node, _ = make_node(FakeClock(), verify=True)
    admit(node)
    assert node.state is NodeState.STARTING and node.awaiting_verify
    node.verify_failed("verify /ready got HTTP 503")
    assert node.state is NodeState.STARTING and "verify failed" in node.reason
    node.verify_passed()
    assert node.state is NodeState.HEALTHY and not node.awaiting_verify


def test_drain_outranks_health_and_survives_probe_changes() -> None:
    node, _ = make_node(FakeClock(), boot=True)
    node.probe_passed()
    node.drain("deploy v2", "deploy")
    for _ in range(3):
        node.probe_failed("probe failed")
    assert node.state is NodeState.DRAINING and not node.serving
    node.undrain("deploy step done", "deploy")
    assert node.state is NodeState.UNHEALTHY


def test_maintenance_exit_goes_through_starting() -> None:
    node, _ = make_node(FakeClock(), boot=True)
    node.probe_passed()
    node.enter_maintenance("db upgrade")
    assert node.state is NodeState.MAINTENANCE and node.planned_out
    node.exit_maintenance("window over")
    assert node.state is NodeState.STARTING
    admit(node)
    assert node.state is NodeState.HEALTHY


def test_warning_recovers_only_after_signs_stay_clear() -> None:
    clock = FakeClock()
    node, _ = make_node(clock, boot=True)
    node.probe_passed()
    node.observe_warning("p95 latency 420ms > 250ms", clear=False)
    assert node.state is NodeState.WARNING and node.reason == "p95 latency 420ms > 250ms"
    node.observe_warning(None, clear=True)
    clock.advance(20)
    node.observe_warning(None, clear=False)  # in the hysteresis gap: the clock restarts
    clock.advance(20)
    node.observe_warning(None, clear=True)
    clock.advance(29)
    node.observe_warning(None, clear=True)
    assert node.state is NodeState.WARNING
    clock.advance(1)
    node.observe_warning(None, clear=True)
    assert node.state is NodeState.HEALTHY
    assert node.reason == "warning signs clear for 30s"


def test_a_drained_warning_node_is_verified_before_readmission() -> None:
    clock = FakeClock()
    node, _ = make_node(clock, boot=True)
    node.probe_passed()
    node.observe_warning("health endpoint reports warn", clear=False)
    node.set_warning_drained(True, "auto-drained")
    assert node.state is NodeState.WARNING and not node.serving
    node.observe_warning(None, clear=True)
    clock.advance(30)
    node.observe_warning(None, clear=True)
    assert node.state is NodeState.STARTING
    admit(node)
    assert node.state is NodeState.HEALTHY and node.serving


def test_weights_warning_cut_and_slow_start_ramp() -> None:
    clock = FakeClock()
    node, _ = make_node(clock, boot=True, slow_start=10.0)
    node.probe_passed()
    assert node.weight_at(clock.monotonic()) == 4.0  # no ramp at boot
    node.observe_warning("error rate 9% > 5%", clear=False)
    assert node.weight_at(clock.monotonic()) == 1.0
    for _ in range(3):
        node.probe_failed("x")
    node.observe_warning(None, clear=True)
    clock.advance(31)
    node.observe_warning(None, clear=True)
    admit(node)
    assert node.ramping
    now = clock.monotonic()
    assert node.weight_at(now) == pytest.approx(0.4)
    assert node.weight_at(now + 5) == pytest.approx(4 * (0.1 + 0.9 * 0.5))
    assert node.weight_at(now + 10) == 4.0 and not node.ramping


def test_ejection_and_history_are_recorded_with_reasons() -> None:
    clock = FakeClock()
    node, seen = make_node(clock, boot=True)
    node.probe_passed()
    node.eject(clock.monotonic() + 30, "5 consecutive gateway failures (503)")
    assert node.state is NodeState.EJECTED
    node.uneject("ejection time over")
    assert node.state is NodeState.HEALTHY
    snap = node.snapshot()
    assert [h["to"] for h in snap["history"]] == ["HEALTHY", "EJECTED", "HEALTHY"]
    assert snap["history"][1]["reason"] == "5 consecutive gateway failures (503)"
    assert seen[1].at == clock.time()


async def test_wait_idle_is_event_driven() -> None:
    node, _ = make_node(FakeClock())
    assert await node.wait_idle(0.01)
    node.acquire()
    assert not await node.wait_idle(0.01)
    node.release()
    assert await node.wait_idle(0.01)


def test_drains_are_holds_and_a_deploy_never_releases_an_operators() -> None:
    """Defect 3 of the layering issue: a drain was one slot, so a deploy took an operator's
    drain over and later undrained the node, while the store still recorded the hold."""
    node, _ = make_node(FakeClock(), boot=True)
    node.probe_passed()
    node.drain("disk swap", "operator")
    node.drain("deploy d-1: v2", "deploy")
    assert node.holds == {"operator": "disk swap", "deploy": "deploy d-1: v2"}
    assert node.reason == "deploy d-1: v2"  # the newest hold speaks
    node.undrain("deploy d-1: readmitting", "deploy")
    assert node.state is NodeState.DRAINING and not node.serving
    assert node.reason == "disk swap" and node.drain_source == "operator"
    node.undrain("disk swapped", "operator")
    assert node.state is NodeState.HEALTHY and node.serving


def test_undrain_all_keeps_a_removal_from_the_config() -> None:
    node, _ = make_node(FakeClock(), boot=True)
    node.probe_passed()
    node.drain("disk swap", "operator")
    node.drain("deploy", "deploy")
    node.undrain_all("forced")
    assert node.holds == {} and node.serving
    node.remove()
    node.undrain_all("forced")
    assert node.holds == {"config": "removed from the config"} and not node.serving


async def test_overlapping_idle_waiters_are_all_woken() -> None:
    """Defect 1: one shared event, so a second waiter replaced the first one's and the
    first waited out its whole timeout."""
    node, _ = make_node(FakeClock(), boot=True)
    node.acquire()
    first = asyncio.create_task(node.wait_idle(30))
    second = asyncio.create_task(node.wait_idle(30))
    await asyncio.sleep(0)  # both are waiting now
    node.release()
    async with asyncio.timeout(1):  # not 30 s: the release wakes both
        assert await first is True
        assert await second is True
