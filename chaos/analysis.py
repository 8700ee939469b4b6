"""From raw outcomes and the ledger to the figures: failures by kind, availability,
accepted and lost writes, and which failed writes were in flight on a crashed node.

A client cannot see which node a failed request went to (the gateway's error
body does not say), so attribution is by timing and by signature: a POST that
failed with a node-loss signature (the gateway's 502 or 504, or a connection cut)
while it overlapped a fault window counts as in flight on the faulted component.
A window runs from the fault until the gateway showed the node out of rotation,
plus the per-try timeout and some slack, or until the gateway was back up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chaos.ledger import Ledger
from chaos.load import MixedLoad, Outcome

#: Failures a crashed or hung node causes for a request that had already reached it.
NODE_LOSS = ("gateway 502", "gateway 504", "disconnected")
#: Failures of requests in flight on a SIGKILLed gateway: connection cut, or no answer.
GATEWAY_LOSS = ("disconnected", "timeout")


def never_sent(outcome: Outcome) -> bool:
    """The request certainly reached no node: the gateway was down (connection refused),
    says it could not connect to any node, or answered 503 itself (no node available,
    shed, circuit breaker). A write like this was not applied; retrying it is safe."""
    failure = outcome.failure
    return (failure == "refused" or "connect failed" in failure
            or failure.startswith("gateway 503"))


@dataclass
class FaultWindow:
    label: str
    start: float
    end: float
    signatures: tuple[str, ...] = NODE_LOSS

    def covers(self, outcome: Outcome) -> bool:
        return (outcome.sent <= self.end and outcome.done >= self.start
                and outcome.failure.startswith(self.signatures) and not never_sent(outcome))


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class Tally:
    requests: int = 0
    gets: int = 0
    posts: int = 0
    failed_get: int = 0
    #: Failed GETs in flight during a fault window (a worker kill fails those too).
    failed_get_in_flight: int = 0
    failed_post: int = 0
    #: Failed POSTs attributed to a fault window (in flight on the crashed component).
    failed_post_in_flight: int = 0
    failed_post_other: int = 0
    #: Of the other failed POSTs, those that certainly reached no node (not applied).
    failed_post_never_sent: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    #: One example detail per failure kind (the gateway's message, the exception).
    failure_examples: dict[str, str] = field(default_factory=dict)
    #: Planned answers (maintenance 503 for reads): by design, outside availability.
    planned: int = 0
    accepted: int = 0
    queued: int = 0
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    #: Writes acknowledged by a node the suite SIGKILLed after its last log snapshot.
    vouched_by_killed_node: int = 0
    #: POSTs the client saw fail that a node applied anyway (an ambiguous outcome).
    failed_post_applied: int = 0
    availability: float = 1.0
    achieved_rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def tally(load: MixedLoad, ledger: Ledger, windows: list[FaultWindow]) -> Tally:
    t = Tally()
    outcomes = load.outcomes
    t.requests = load.sent
    t.posts = sum(1 for o in outcomes if o.method == "POST")
    t.gets = t.requests - t.posts
    kinds: Counter[str] = Counter()
    for o in outcomes:
        if o.planned:
            t.planned += 1
            continue
        if not o.failure:
            continue
        kind = f"{o.method} {o.failure}"
        kinds[kind] += 1
        if o.detail:
            t.failure_examples.setdefault(kind, o.detail)
        if o.method == "GET":
            t.failed_get += 1
            t.failed_get_in_flight += any(w.covers(o) for w in windows)
            continue
        t.failed_post += 1
        if any(w.covers(o) for w in windows):
            t.failed_post_in_flight += 1
        else:
            t.failed_post_other += 1
            t.failed_post_never_sent += never_sent(o)
    t.failures_by_kind = dict(kinds.most_common())
    counted = t.requests - t.planned
    t.availability = 1.0 - (t.failed_get + t.failed_post) / counted if counted else 1.0
    audit_writes(t, outcomes, ledger)
    t.achieved_rate = round(load.achieved_rate(), 1)
    latencies = list(load.latencies)
    t.p50_ms = round(_percentile(latencies, 0.50) * 1000, 1)
    t.p99_ms = round(_percentile(latencies, 0.99) * 1000, 1)
    t.max_ms = round(max(latencies, default=0.0) * 1000, 1)
    return t


def audit_writes(t: Tally, outcomes: list[Outcome], ledger: Ledger) -> None:
    """Accepted (201/202) writes against what the nodes hold: lost, duplicated, applied."""
    delivered = ledger.delivered()
    ours = {o.body for o in outcomes if o.method == "POST"}
    twice = [body for body, n in delivered.items() if n > 1 and body in ours]
    t.duplicates = sum(delivered[body] - 1 for body in twice)
    t.duplicate_examples = [f"{body} held by {', '.join(ledger.holders(body))}"
                            for body in twice[:3]]
    for o in outcomes:
        if o.method != "POST":
            continue
        if o.accepted:
            t.accepted += 1
            t.queued += o.status == 202
            if delivered[o.body]:
                continue
            if o.status == 201 and ledger.vouched_by_killed_node(o.ack_node, o.ack_seq, o.done):
                t.vouched_by_killed_node += 1
                continue
            t.lost += 1
            if len(t.lost_examples) < 5:
                t.lost_examples.append(f"{o.body} ({o.status}, acked by "
                                       f"{o.ack_node or o.ticket or '?'})")
        elif o.failure and delivered[o.body]:
            t.failed_post_applied += 1


# -- the checks every scenario may ask for -------------------------------------------------

def no_lost_writes(t: Tally) -> Check:
    detail = f"{t.accepted} accepted ({t.queued} queued), {t.lost} lost"
    if t.vouched_by_killed_node:
        detail += (f"; {t.vouched_by_killed_node} acknowledged by the killed node after its "
                   "last log snapshot")
    if t.lost_examples:
        detail += f"; e.g. {', '.join(t.lost_examples[:3])}"
    return Check("0 lost accepted writes", t.lost == 0, detail)


def no_duplicated_writes(t: Tally) -> Check:
    return Check("no write applied twice", t.duplicates == 0,
                 f"{t.duplicates} duplicate(s) across every node's write log"
                 + (f"; e.g. {t.duplicate_examples[0]}" if t.duplicate_examples else ""))


def no_failed_gets(t: Tally) -> Check:
    kinds = {k: v for k, v in t.failures_by_kind.items() if k.startswith("GET")}
    return Check("0 failed idempotent requests", t.failed_get == 0,
                 f"{t.failed_get} of {t.gets} GETs failed" + (f": {kinds}" if kinds else ""))


def posts_fail_only_in_flight(t: Tally) -> Check:
    return Check("POST failures only in flight on the crashed node", t.failed_post_other == 0,
                 f"{t.failed_post} failed: {t.failed_post_in_flight} in flight on the crashed "
                 f"node, {t.failed_post_other} other ({t.failed_post_never_sent} never sent)"
                 + (f"; {t.failed_post_applied} of them were applied anyway"
                    if t.failed_post_applied else ""))


def failures_only_in_flight(t: Tally, most: int) -> Check:
    """A process that dies fails what it had in flight, GETs too (the client's connection
    goes with it), and nothing else."""
    failed = t.failed_get + t.failed_post
    in_flight = t.failed_get_in_flight + t.failed_post_in_flight
    return Check(f"failures only in flight on the killed process (at most {most})",
                 failed == in_flight <= most,
                 f"{failed} failed ({t.failed_get} GET, {t.failed_post} POST): {in_flight} in "
                 f"flight at the kill (or within 1 s of it), {failed - in_flight} other")


def no_failed_posts(t: Tally) -> Check:
    kinds = {k: v for k, v in t.failures_by_kind.items() if k.startswith("POST")}
    return Check("0 failed non-idempotent requests", t.failed_post == 0,
                 f"{t.failed_post} of {t.posts} POSTs failed" + (f": {kinds}" if kinds else ""))
