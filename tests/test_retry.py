"""Which failed tries the retry budget limits (gateway.retry, Router._free), as plain values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.accounting import Accounting
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.retry import Retryable, RetryBudget
from gateway.router import Router
from gateway.upstream import ConnectFailure, ConnectionPool, UpstreamReset
from gateway.upstream.connection import UpstreamError
from tests.fakes import Passive, cluster_of, config


def test_a_connection_broken_before_any_answer_is_free_of_the_budget() -> None:
    """A node's death meets every request it held at once, each connection closed or reset
    before any answer: retrying them elsewhere is not a sick node's load coming back, so a
    small budget must not refuse them (chaos defaults-kill lost GETs to it)."""
    cluster, _bus = cluster_of(config(["http://127.0.0.1:1"]))
    n: Node = next(iter(cluster))
    reused = Retryable(n, "reset", UpstreamReset(
        "the node closed the connection before answering", sent=True, reused=True))
    fresh = Retryable(n, "reset", UpstreamReset(
        "the node closed the connection before answering", sent=True, reused=False))
    mid_answer = Retryable(n, "reset", UpstreamReset(
        "the node closed the connection mid-response", sent=True, reused=True, answered=True))
    never_sent = Retryable(n, "connect-failure", ConnectFailure("refused"))
    status = Retryable(n, "503")
    assert reused.safe and fresh.safe and never_sent.safe
    assert not mid_answer.safe and not status.safe

    budget = RetryBudget(percent=0.2, min_concurrency=1)
    budget.active, budget.retrying = 10, 2  # the budget (20% of 10) is spent
    assert budget.allows(reused.safe) and budget.allows(never_sent.safe)
    assert not budget.allows(mid_answer.safe)


def test_a_retry_away_from_an_ejected_or_suspect_node_is_free_of_the_budget() -> None:
    """A hung node's tries all time out at once; once outlier or stall detection has taken
    it out of new requests' way, its share goes elsewhere anyway, so do the ones it held."""
    cfg = config(["http://127.0.0.1:1", "http://127.0.0.1:2"], health={"enabled": False})
    cluster, _bus = cluster_of(cfg)
    first, second = list(cluster)
    pools = {node: ConnectionPool(node.name, "127.0.0.1", 1, connect_timeout=1.0,
                                  idle_timeout=30.0) for node in cluster}
    router = Router(cluster, pools, OutlierDetector(cluster, cfg.outlier_detection),
                    Passive(), Accounting(CollectorRegistry()), cfg)
    timed_out = Retryable(first, "timeout", UpstreamError("no answer"))
    assert not router._free(timed_out)  # a timeout from a node still in rotation: budgeted
    first.eject(cluster.clock.monotonic() + 30, "5 consecutive gateway failures")
    assert router._free(timed_out)
    pools[second].signal.suspect_at = 1.0  # judged silent, and nothing heard since
    assert router._free(Retryable(second, "timeout", UpstreamError("no answer")))
