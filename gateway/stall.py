"""Stall detection: a node that stops answering while the others keep answering.

A hung node (a process stopped, a deadlock, a full disk) still accepts TCP connections
and reads requests into its socket buffer; it just never answers. Health checks notice
after ``timeout x unhealthy_threshold`` (seconds), and every request sent to it
meanwhile waits for its whole deadline. This detector judges silence from the data
plane instead, relative to each node's own latency, so it reacts within a fraction of a
second and never condemns a node that is slow by nature.

Each node's response-head latency is tracked the way TCP tracks a round trip (RFC
6298): a smoothed mean ``srtt`` and mean deviation ``rttvar``. A request that waited
``factor x (srtt + 4 x rttvar)``, never less than ``min_time``, while its node sent
nothing at all since the request went out and some other node answered meanwhile
(when every node is quiet, the cause is the gateway or the network, not one node):

- makes its node **suspect**: new requests go to other nodes, and the idempotent
  requests the node holds are hedged to another node. This is cheap and undone by the
  node's next byte: a node that is only slower than usual answers, and is judged by
  the warning detector on its real latency;
- makes it **stalled** once the silence lasts ``eject_after`` (at least twice that
  wait) with at least ``min_requests`` requests waiting: the router ejects it, within
  the ejection cap and the panic threshold.

Everything here is synchronous arithmetic on numbers the caller passes in, so it is
unit-tested with plain floats.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config.schema import StallDetectionConfig

INF = float("inf")
#: asyncio may run a timer up to its clock resolution early; a check that fires that
#: little before its time counts as on time.
_EARLY_BY = 1e-3


class NodeSignal:
    """What the data plane hears from one node. The upstream connections stamp ``heard``
    on every byte the node sends; the router feeds ``answered`` with each head latency."""

    __slots__ = ("heard", "name", "rttvar", "samples", "srtt", "stalled_at", "suspect_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.srtt = 0.0
        self.rttvar = 0.0
        self.samples = 0
        #: Loop time of the last byte received from the node.
        self.heard = -INF
        #: When the node was last judged suspect, and stalled. Each holds until the node
        #: sends anything (``heard`` moves past it), so no byte handler has to undo it.
        self.suspect_at = -INF
        self.stalled_at = -INF

    @property
    def suspect(self) -> bool:
        """A request waited past its threshold in silence, and nothing came since."""
        return self.suspect_at > self.heard

    @property
    def stalled(self) -> bool:
        return self.stalled_at > self.heard

    def answered(self, latency: float, now: float) -> None:
        """A response head arrived ``latency`` seconds after its request went out."""
        if self.samples == 0:
            self.srtt, self.rttvar = latency, latency / 2
        else:
            # RFC 6298 §2.3 with its gains: alpha 1/8, beta 1/4.
            self.rttvar += (abs(self.srtt - latency) - self.rttvar) * 0.25
            self.srtt += (latency - self.srtt) * 0.125
        self.samples += 1
        self.heard = now

    @property
    def rto(self) -> float:
        return self.srtt + 4 * self.rttvar

    def __repr__(self) -> str:
        return (f"<NodeSignal {self.name} srtt={self.srtt * 1000:.1f}ms "
                f"rttvar={self.rttvar * 1000:.1f}ms samples={self.samples}"
                f"{' stalled' if self.stalled else ' suspect' if self.suspect else ''}>")


class Verdict(enum.Enum):
    #: Too early to say anything; look again at ``Judgement.recheck``.
    EARLY = "early"
    #: The node answered something since this request went out: it is alive, this request
    #: is just slow. No further checks for it.
    ANSWERING = "answering"
    #: No node answered since this request went out: not this node's fault (yet).
    QUIET = "quiet"
    SUSPECT = "suspect"
    STALLED = "stalled"


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    #: When to judge this request again (loop time); inf for never.
    recheck: float
    #: For STALLED: what the event log and the ejection reason say.
    reason: str = ""


class StallDetector:
    def __init__(self, config: StallDetectionConfig) -> None:
        self.config = config

    def waits(self, signal: NodeSignal) -> tuple[float, float]:
        """(suspect after, stalled after) for a request to this node, in seconds from its
        start; (inf, inf) while detection is off or the node's latency is not known yet."""
        cfg = self.config
        if not cfg.enabled or signal.samples < cfg.min_samples:
            return INF, INF
        suspect = max(cfg.min_time, cfg.factor * signal.rto)
        return suspect, max(cfg.eject_after, 2 * suspect)

    def first_check(self, signal: NodeSignal, started: float) -> float:
        """When a request sent at ``started`` should first be judged (loop time)."""
        return started + self.waits(signal)[0]

    def judge(self, signal: NodeSignal, started: float, now: float, in_flight: int,
              others: Iterable[NodeSignal]) -> Judgement:
        """Judge a request to ``signal``'s node that was sent at ``started`` and has no
        answer at ``now``; ``in_flight`` is how many requests the node holds, ``others``
        the signals of the other nodes that take traffic."""
        suspect_after, stall_after = self.waits(signal)
        if stall_after == INF:
            return Judgement(Verdict.EARLY, INF)
        if signal.heard >= started:
            return Judgement(Verdict.ANSWERING, INF)
        age = now - started + _EARLY_BY
        if age < suspect_after:
            return Judgement(Verdict.EARLY, started + suspect_after)
        if not any(other.heard >= started for other in others):
            return Judgement(Verdict.QUIET, now + suspect_after)
        if age < stall_after:
            return Judgement(Verdict.SUSPECT, started + stall_after)
        if in_flight < self.config.min_requests:
            # One slow request alone is not a stall: look again later.
            return Judgement(Verdict.SUSPECT, now + suspect_after)
        reason = (f"stalled: {in_flight} requests waiting, nothing heard for "
                  f"{(now - started) * 1000:.0f}ms while other nodes answered (its latency is "
                  f"{signal.srtt * 1000:.0f}ms; threshold {stall_after * 1000:.0f}ms)")
        return Judgement(Verdict.STALLED, INF, reason)


__all__ = ["INF", "Judgement", "NodeSignal", "StallDetector", "Verdict"]
