"""Schedule.merge: how a gateway of a fleet takes another gateway's copy of a window, on
an injectable clock (no sleeping, no I/O)."""

from __future__ import annotations

from gateway.clock import FakeClock
from monitor.maintenance.schedule import ACTIVE, CANCELLED, ENDED, SCHEDULED, Schedule, Window


def copy(window: Window) -> Window:
    return Window.from_json(window.to_json())


def two() -> tuple[FakeClock, Schedule, Schedule]:
    clock = FakeClock()
    return clock, Schedule((3600.0,), clock), Schedule((3600.0,), clock)


def run(schedule: Schedule) -> list[str]:
    done = schedule.due()
    for due in done:
        schedule.apply(due)
    return [d.kind for d in done]


def test_a_new_window_starts_here_on_this_gateways_own_schedule() -> None:
    clock, a, b = two()
    window = a.add(clock.time() + 60, 600, "db")
    run(a)  # the "scheduled" announcement, sent by A
    mine = b.merge(copy(window))
    assert mine.status == SCHEDULED and "scheduled" in mine.announced
    assert run(b) == []  # nothing due yet, and no second announcement
    clock.advance(61)
    assert run(a) == ["start"] and run(b) == ["start"]
    assert b.windows[window.id].status == ACTIVE


def test_an_active_window_from_elsewhere_is_started_here_not_copied_as_active() -> None:
    clock, a, b = two()
    window = a.add(clock.time(), 600, "now")
    run(a)
    assert a.windows[window.id].status == ACTIVE
    mine = b.merge(copy(a.windows[window.id]))
    assert mine.status == SCHEDULED  # B's own start holds B's nodes
    assert "start" in run(b)


def test_an_end_elsewhere_ends_it_here_and_nothing_is_undone() -> None:
    clock, a, b = two()
    window = a.add(clock.time(), 600, "now")
    run(a)
    b.merge(copy(a.windows[window.id]))
    run(b)
    clock.advance(30)
    a.end_now(window.id)
    run(a)
    assert a.windows[window.id].status == ENDED
    b.merge(copy(a.windows[window.id]))
    assert run(b) == ["end"]
    # A stale copy (still active, the old end) changes nothing afterwards.
    stale = copy(a.windows[window.id])
    stale.status, stale.end = ACTIVE, window.start + 600
    b.merge(stale)
    assert b.windows[window.id].status == ENDED and run(b) == []


def test_a_window_over_before_it_began_here_never_holds() -> None:
    clock, a, b = two()
    window = a.add(clock.time() + 10, 600, "short")
    b.merge(copy(window))
    clock.advance(11)
    run(a)
    clock.advance(5)
    a.end_now(window.id)
    run(a)
    b.merge(copy(a.windows[window.id]))
    assert b.windows[window.id].status == ENDED
    assert run(b) == []  # no start, no end: B never entered it


def test_a_cancellation_elsewhere_cancels_a_scheduled_window_only() -> None:
    clock, a, b = two()
    window = a.add(clock.time() + 600, 600, "later")
    b.merge(copy(window))
    a.cancel(window.id)
    b.merge(copy(a.windows[window.id]))
    assert b.windows[window.id].status == CANCELLED
    clock.advance(601)
    assert run(b) == []
