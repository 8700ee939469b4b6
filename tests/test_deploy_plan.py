"""The deploy state machine on its own: steps, failure, rollback, halt, abort, interrupt."""

from __future__ import annotations

from gateway.clock import FakeClock
from gateway.config.schema import DeployConfig
from monitor.deploy.plan import Deploy, Step
from monitor.deploy.record import DeployRecord, Status


def new(nodes: int = 4, batch: int = 1, **config: object) -> tuple[Deploy, FakeClock]:
    clock = FakeClock()
    plan = Deploy.new("d-1", "v2", [(f"node-{i + 1}", "v1") for i in range(nodes)],
                      DeployConfig(**config), clock, batch_size=batch)  # type: ignore[arg-type]
    return plan, clock


def run_all(plan: Deploy, clock: FakeClock, fail_on: str | None = None) -> list[str]:
    done = []
    while (step := plan.next()) is not None:
        plan.started(step)
        clock.advance(1)
        ok = str(step) != fail_on
        plan.finished(step, ok, "" if ok else "health check failed")
        done.append(str(step))
    return done


def test_a_clean_deploy_walks_every_node_in_order() -> None:
    plan, clock = new(2)
    steps = run_all(plan, clock)
    assert steps == [
        "gate node-1", "drain node-1", "action node-1 -> v2", "verify node-1 -> v2", "bake node-1",
        "gate node-2", "drain node-2", "action node-2 -> v2", "verify node-2 -> v2", "bake node-2",
    ]
    record = plan.record
    assert record.status is Status.SUCCEEDED and record.finished == clock.time()
    run = record.nodes["node-1"]
    assert run.done and run.moved and [s.kind for s in run.steps] == [
        "gate", "drain", "action", "verify", "bake"]
    assert run.out_seconds == 3.0  # drain start to verified: drain, action, verify
    assert all(s.seconds == 1.0 for s in run.steps)


def test_batches_follow_max_unavailable() -> None:
    plan, clock = new(4, batch=2)
    steps = run_all(plan, clock)
    assert steps[:2] == ["gate node-1, node-2", "drain node-1, node-2"]
    assert "action node-3 -> v2" in steps


def test_a_failed_verify_rolls_back_every_moved_node_newest_first() -> None:
    plan, clock = new(4)
    steps = run_all(plan, clock, fail_on="verify node-2 -> v2")
    assert steps[-7:] == [
        "verify node-2 -> v2",
        "rollback drain node-2", "rollback action node-2 -> v1", "rollback verify node-2 -> v1",
        "rollback drain node-1", "rollback action node-1 -> v1", "rollback verify node-1 -> v1",
    ]
    record = plan.record
    assert record.status is Status.ROLLED_BACK
    assert "verify on node-2 failed: health check failed" in record.reason
    assert record.nodes["node-1"].rolled_back and record.nodes["node-2"].rolled_back
    assert not record.nodes["node-3"].moved


def test_halt_stops_where_it_is() -> None:
    plan, clock = new(3, on_failure="halt")
    steps = run_all(plan, clock, fail_on="action node-2 -> v2")
    assert steps[-1] == "action node-2 -> v2"
    assert plan.record.status is Status.FAILED and plan.next() is None


def test_a_failed_rollback_ends_failed_with_both_reasons() -> None:
    plan, _ = new(3)
    while (step := plan.next()) is not None:
        plan.started(step)
        bad = str(step) in ("verify node-2 -> v2", "rollback action node-1 -> v1")
        plan.finished(step, not bad, "boom" if bad else "")
    assert plan.record.status is Status.FAILED
    assert "rollback failed: action on node-1 failed: boom" in plan.record.reason


def test_abort_in_the_middle_rolls_back_and_ends_aborted() -> None:
    plan, clock = new(3)
    for _ in range(7):  # node-1 done, node-2 drained
        step = plan.next()
        assert step is not None
        plan.started(step)
        plan.finished(step, True)
    step = plan.next()
    assert step == Step("action", ("node-2",), "v2")
    plan.started(step)
    plan.abort("aborted by operator")
    plan.cancelled(step, "stopped by abort")
    rest = run_all(plan, clock)
    assert rest[0] == "rollback drain node-2"
    assert plan.record.status is Status.ABORTED
    assert plan.record.nodes["node-1"].rolled_back


def test_interrupt_and_resume_restart_the_batch() -> None:
    plan, clock = new(2)
    for _ in range(7):
        step = plan.next()
        assert step is not None
        plan.started(step)
        plan.finished(step, True)
    plan.interrupt()
    assert plan.record.status is Status.INTERRUPTED and plan.next() is None
    assert plan.in_flight_batch == ["node-2"]
    # What a restarted gateway sees: only the record.
    again = Deploy(DeployRecord.from_json(plan.record.to_json()), DeployConfig(), clock)
    again.resume()
    assert str(again.next()) == "gate node-2"
    run_all(again, clock)
    assert again.record.status is Status.SUCCEEDED


def test_record_round_trips_through_json() -> None:
    plan, clock = new(2)
    run_all(plan, clock, fail_on="verify node-2 -> v2")
    data = plan.record.to_json()
    again = DeployRecord.from_json(data)
    assert again.to_json() == data and again.status is Status.ROLLED_BACK
