"""Which failed tries the retry budget limits (gateway.retry), as plain values."""

from __future__ import annotations

from gateway.node import Node
from gateway.retry import Retryable, RetryBudget
from gateway.upstream import ConnectFailure, UpstreamReset
from tests.fakes import cluster_of, config


def node() -> Node:
    cluster, _bus = cluster_of(config(["http://127.0.0.1:1"]))
    return next(iter(cluster))


def test_a_dead_keep_alive_is_free_of_the_budget_but_a_sick_answer_is_not() -> None:
    """A node's death meets every request it held on kept-alive connections at once, closed
    or reset before any answer: retrying them elsewhere is not a sick node's load coming
    back, so a small budget must not refuse them (chaos defaults-kill lost a GET to it)."""
    n = node()
    dead_keep_alive = Retryable(n, "reset", UpstreamReset(
        "the node closed the connection before answering", sent=True, reused=True))
    fresh_reset = Retryable(n, "reset", UpstreamReset(
        "the node closed the connection before answering", sent=True, reused=False))
    mid_answer = Retryable(n, "reset", UpstreamReset(
        "the node closed the connection mid-response", sent=True, reused=True, answered=True))
    never_sent = Retryable(n, "connect-failure", ConnectFailure("refused"))
    status = Retryable(n, "503")
    assert dead_keep_alive.safe and never_sent.safe
    assert not fresh_reset.safe and not mid_answer.safe and not status.safe

    budget = RetryBudget(percent=0.2, min_concurrency=1)
    budget.active, budget.retrying = 10, 2  # the budget (20% of 10) is spent
    assert budget.allows(dead_keep_alive.safe) and budget.allows(never_sent.safe)
    assert not budget.allows(mid_answer.safe) and not budget.allows(fresh_reset.safe)
