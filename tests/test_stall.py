"""Stall detection, the ejection it asks for, and the retry budget: plain synchronous code,
judged with numbers and a FakeClock, no sleeping."""

from __future__ import annotations

import pytest

from gateway.config.schema import StallDetectionConfig
from gateway.node import NodeState
from gateway.outlier import OutlierDetector
from gateway.retry import RetryBudget
from gateway.stall import INF, NodeSignal, StallDetector, Verdict
from tests.test_cluster import cluster, history


def learned(name: str, latency: float, samples: int = 20, at: float = 0.0) -> NodeSignal:
    """A node's signal after ``samples`` answers of exactly ``latency`` seconds."""
    signal = NodeSignal(name)
    for _ in range(samples):
        signal.answered(latency, at)
    return signal


def detector(**changes: object) -> StallDetector:
    return StallDetector(StallDetectionConfig(**changes))  # type: ignore[arg-type]


def test_latency_is_smoothed_like_tcp_round_trips() -> None:
    signal = NodeSignal("n")
    signal.answered(0.1, 1.0)
    assert (signal.srtt, signal.rttvar) == (0.1, 0.05)  # RFC 6298 2.2: first sample
    signal.answered(0.2, 2.0)
    # 2.3: rttvar <- 3/4 rttvar + 1/4 |srtt - r|; srtt <- 7/8 srtt + 1/8 r
    assert signal.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert signal.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    assert signal.heard == 2.0 and signal.samples == 2


def test_threshold_follows_the_nodes_own_latency() -> None:
    d = detector(factor=3.0, min_time=0.05, eject_after=1.0)
    fast, slow = learned("fast", 0.002), learned("slow", 0.5)
    # A fast node: min_time, then eject_after.
    assert d.waits(fast) == pytest.approx((0.05, 1.0))
    # A slow one: three times its own latency, and twice that before an ejection.
    suspect, stall = d.waits(slow)
    assert suspect == pytest.approx(3 * slow.rto) and suspect >= 1.5
    assert stall == pytest.approx(2 * suspect)
    assert d.waits(NodeSignal("new")) == (INF, INF)  # no latency learned yet: no judgement
    assert detector(enabled=False).waits(slow) == (INF, INF)


def test_a_node_slow_by_nature_is_not_judged_stalled() -> None:
    d = detector()
    slow = learned("slow", 0.5, at=99.0)
    other = learned("other", 0.01, at=100.9)
    # 0.9 s without an answer, five requests waiting, the other node answering: for a node
    # that takes half a second to answer, that is just its pace.
    judgement = d.judge(slow, started=100.0, now=100.9, in_flight=5, others=[other])
    assert judgement.verdict is Verdict.EARLY
    assert judgement.recheck == pytest.approx(100.0 + d.waits(slow)[0])
    # The same silence on a 20 ms node makes it suspect, and a stall past eject_after.
    quick = learned("quick", 0.02, at=99.0)
    assert d.judge(quick, 100.0, 100.9, 5, [other]).verdict is Verdict.SUSPECT
    later = learned("other", 0.01, at=101.1)
    assert d.judge(quick, 100.0, 101.1, 5, [later]).verdict is Verdict.STALLED


def test_a_node_that_answered_since_the_request_left_is_alive() -> None:
    d = detector()
    node = learned("n", 0.02, at=100.05)  # answered another request after 100.0
    other = learned("o", 0.02, at=100.3)
    judgement = d.judge(node, started=100.0, now=101.0, in_flight=9, others=[other])
    assert judgement.verdict is Verdict.ANSWERING and judgement.recheck == INF


def test_silence_everywhere_is_not_one_nodes_stall() -> None:
    d = detector()
    node, other = learned("n", 0.02, at=99.0), learned("o", 0.02, at=99.5)
    judgement = d.judge(node, started=100.0, now=101.0, in_flight=9, others=[other])
    assert judgement.verdict is Verdict.QUIET
    assert judgement.recheck == pytest.approx(101.0 + d.waits(node)[0])


def test_suspect_past_the_threshold_stalled_past_eject_after() -> None:
    d = detector(factor=3.0, min_time=0.05, eject_after=1.0)
    node = learned("n", 0.02, at=99.0)
    other = learned("o", 0.02, at=100.5)
    suspect, stall = d.waits(node)
    early = d.judge(node, 100.0, 100.0 + suspect / 2, 3, [other])
    assert early.verdict is Verdict.EARLY and early.recheck == pytest.approx(100.0 + suspect)
    mid = d.judge(node, 100.0, 100.0 + suspect, 3, [other])
    assert mid.verdict is Verdict.SUSPECT and mid.recheck == pytest.approx(100.0 + stall)
    late = d.judge(node, 100.0, 100.0 + stall, 3, [other])
    assert late.verdict is Verdict.STALLED and "3 requests waiting" in late.reason


def test_one_slow_request_alone_is_not_a_stall() -> None:
    d = detector(min_requests=2)
    node = learned("n", 0.02, at=99.0)
    other = learned("o", 0.02, at=101.5)
    judgement = d.judge(node, 100.0, 102.0, 1, [other])
    assert judgement.verdict is Verdict.SUSPECT
    assert judgement.recheck == pytest.approx(102.0 + d.waits(node)[0])


def test_any_byte_from_the_node_clears_suspicion() -> None:
    node = learned("n", 0.02, at=1.0)
    node.suspect_at = node.stalled_at = 2.0
    assert node.suspect and node.stalled
    node.heard = 2.5  # what an upstream connection stamps on every byte
    assert not node.suspect and not node.stalled


# -- the ejection stall detection asks for -------------------------------------------------

def test_a_stalled_node_is_ejected_at_once() -> None:
    c, _ = cluster(3)
    outlier = OutlierDetector(c, c.config.outlier_detection)
    node = c.get("node-2")
    assert node is not None
    assert outlier.stalled(node, "stalled: test")
    assert node.state is NodeState.EJECTED and "stalled: test" in node.reason
    assert node.ejected_until is not None


def test_stall_ejection_respects_the_ejection_cap() -> None:
    c, _ = cluster(4, outlier_detection={"max_ejection_percent": "25%"})
    outlier = OutlierDetector(c, c.config.outlier_detection)
    first, second = c.get("node-1"), c.get("node-2")
    assert first is not None and second is not None
    assert outlier.stalled(first, "stalled")
    assert not outlier.stalled(second, "stalled")  # 1 of 4 ejected already: the cap
    assert second.state is NodeState.HEALTHY
    refused = history(c).since(kind="node.ejection_refused")
    assert refused and "max_ejection_percent=25%" in refused[-1].message


def test_stall_ejection_never_pushes_the_cluster_into_panic() -> None:
    c, _ = cluster(3, panic_threshold="60%", outlier_detection={"max_ejection_percent": "100%"})
    outlier = OutlierDetector(c, c.config.outlier_detection)
    a, b = c.get("node-1"), c.get("node-2")
    assert a is not None and b is not None
    assert outlier.stalled(a, "stalled")  # 2 of 3 serving: 67%, above the threshold
    assert not outlier.stalled(b, "stalled")  # 1 of 3 would be 33%: panic, so refused
    assert b.serving and not c.panic
    assert "panic_threshold=60%" in history(c).since(kind="node.ejection_refused")[-1].message


# -- the retry budget -----------------------------------------------------------------------

def test_the_budget_never_refuses_a_try_that_reached_no_node() -> None:
    """What made a GET fail with 503 when a node was SIGKILLed among eight busy clients: four
    requests found its port closed at once, the budget (min_concurrency 3) allowed three
    retries, and the fourth gave up although nothing had reached any node."""
    budget = RetryBudget(percent=0.2, min_concurrency=3)
    budget.active, budget.retrying = 8, 3
    assert not budget.allows()  # a retry of a try that reached a node: over budget
    assert budget.allows(safe=True)  # a refused connect, a full pool: always allowed
