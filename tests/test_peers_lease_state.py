"""LeaseState alone: the leader's deadlines on an injected clock, no Redis, no sleeping."""

from __future__ import annotations

import pytest

from gateway.clock import FakeClock
from gateway.events import Event
from monitor.peers.fence import Fence, StaleLeader
from monitor.peers.lease import LeadershipChanged, LeaseState, Role

TTL = 5.0


def machine(clock: FakeClock, events: list[Event], margin: float = 1.0) -> LeaseState:
    return LeaseState("gw-a", TTL, clock, margin=margin, publish=events.append)


def test_the_deadline_counts_from_the_start_of_the_request() -> None:
    clock, events = FakeClock(), []
    state = machine(clock, events)
    started = state.begin()
    clock.advance(0.7)  # the answer took 0.7s
    state.acquired(7, started)
    assert state.leading() and state.epoch == 7
    assert state.fence() == Fence("gw-a", 7)
    # Redis set the key's expiry when it ran the command, after ``started``: the local
    # deadline (started + ttl - margin) always falls before the lease can lapse there.
    assert state.deadline == pytest.approx(started + TTL - 1.0)
    assert events == [LeadershipChanged("gw-a", True, 7, "acquired the lease at epoch 7")]

    clock.advance(TTL - 1.0 - 0.7 - 0.001)
    assert state.leading()
    clock.advance(0.001)
    assert not state.leading()  # looking is enough: the step-down is on time
    assert state.role is Role.FOLLOWER and state.epoch is None
    assert events[-1] == LeadershipChanged("gw-a", False, None,
                                           "the lease was not renewed in time")
    assert state.release_pending == Fence("gw-a", 7)
    with pytest.raises(StaleLeader, match="not renewed in time"):
        state.fence()


def test_a_renewal_extends_from_its_own_start_and_a_failed_one_changes_nothing() -> None:
    clock, events = FakeClock(), []
    state = machine(clock, events)
    state.acquired(1, state.begin())
    first_deadline = state.deadline
    assert first_deadline is not None

    clock.advance(1.5)
    started = state.begin()
    clock.advance(2.0)  # a slow answer
    state.renewed(started)
    assert state.deadline == pytest.approx(started + TTL - 1.0)

    clock.advance(0.5)
    state.renew_failed("Redis did not answer")
    assert state.leading()
    assert state.deadline == pytest.approx(started + TTL - 1.0)
    assert state.until_deadline() == pytest.approx(started + TTL - 1.0 - clock.monotonic())

    # An old renewal answering late never moves the deadline back.
    state.renewed(started - 10)
    assert state.deadline == pytest.approx(started + TTL - 1.0)


def test_an_answer_after_the_deadline_is_not_acted_on() -> None:
    clock, events = FakeClock(), []
    state = machine(clock, events)
    started = state.begin()
    clock.advance(TTL)  # the grant came back after the whole ttl
    state.acquired(3, started)
    assert not state.leading()
    assert [e.leading for e in events if isinstance(e, LeadershipChanged)] == [True, False]
    assert state.release_pending == Fence("gw-a", 3)

    # Nor does a renewal bring back a leadership that was given up: that epoch is over.
    state.renewed(clock.monotonic())
    assert not state.leading()


def test_losing_the_lease_and_following() -> None:
    clock, events = FakeClock(), []
    state = machine(clock, events)
    state.observed(Fence("gw-b", 4))
    assert not state.leading() and state.reason == "gw-b leads (epoch 4)"
    state.acquired(5, state.begin())
    state.lost("the lease is not ours any more (held by gw-c:6)", Fence("gw-c", 6))
    assert not state.leading()
    assert state.holder == Fence("gw-c", 6)
    assert state.release_pending is None  # not ours to release
    assert events[-1] == LeadershipChanged("gw-a", False, None,
                                           "the lease is not ours any more (held by gw-c:6)")
    state.unreachable("connection refused")
    assert state.reason == "Redis is unreachable (connection refused)"
    assert "follower of gw-c:6" in repr(state)


def test_resigning_leaves_a_token_to_release() -> None:
    clock, events = FakeClock(), []
    state = machine(clock, events)
    state.acquired(9, state.begin())
    assert "leader epoch=9" in repr(state)
    state.resign()
    assert not state.leading() and state.release_pending == Fence("gw-a", 9)
    state.released()
    assert state.release_pending is None


def test_the_margin_must_fit_in_the_ttl() -> None:
    with pytest.raises(ValueError, match="safety margin"):
        LeaseState("gw-a", 1.0, FakeClock(), margin=1.0)
    assert LeaseState("gw-a", 5.0, FakeClock()).margin == pytest.approx(1.0)


def test_fence_tokens_round_trip() -> None:
    assert Fence.parse(b"gw-a.example:12") == Fence("gw-a.example", 12)
    assert Fence.parse("a:b:3") == Fence("a:b", 3)
    assert Fence.parse(None) is None
    assert Fence.parse("garbage") is None
    assert str(Fence("gw-a", 2)) == "gw-a:2"


def test_a_lease_under_its_own_name_is_never_adopted() -> None:
    clock, events = FakeClock(), []
    state = machine(clock, events)
    state.observed(Fence("gw-a", 3))  # an earlier run, or a second process with this name
    assert not state.leading()
    assert "carries this instance's name" in state.reason
