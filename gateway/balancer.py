"""Load-balancing policies: which of the candidate nodes takes the next request.

Every policy honours weights, so slow start and a warning node's reduced weight
work under all of them (as in Envoy, where round robin and least request are
both weighted). With equal weights each reduces to its textbook form.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from gateway.node import Node


class Balancer(Protocol):
    def reset(self, nodes: Sequence[Node], weights: Sequence[float]) -> None:
        """Called whenever the candidate set or its weights change."""

    def pick(self, nodes: Sequence[Node], weights: Sequence[float],
             exclude: Collection[Node]) -> Node | None:
        """Choose one of ``nodes`` not in ``exclude``; None if there is none."""


def _equal(weights: Sequence[float]) -> bool:
    return not weights or max(weights) - min(weights) < 1e-9


class RoundRobin:
    """Plain rotation with equal weights; smooth weighted round robin (nginx's) otherwise."""

    def __init__(self, *, always_weighted: bool = False) -> None:
        self._next = 0
        self._current: list[float] = []
        self._equal = True
        #: For callers whose weights change on every pick (least request).
        self._always_weighted = always_weighted

    def reset(self, nodes: Sequence[Node], weights: Sequence[float]) -> None:
        self._current = [0.0] * len(nodes)
        self._equal = not self._always_weighted and _equal(weights)

    def pick(self, nodes: Sequence[Node], weights: Sequence[float],
             exclude: Collection[Node]) -> Node | None:
        count = len(nodes)
        if count == 0:
            return None
        if self._equal:
            for _ in range(count):
                node = nodes[self._next % count]
                self._next += 1
                if node not in exclude:
                    return node
            return None
        current = self._current
        total = 0.0
        best = -1
        for i, node in enumerate(nodes):
            if node in exclude:
                continue
            current[i] += weights[i]
            total += weights[i]
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return nodes[best]


class LeastRequest:
    """Fewest requests in flight.

    Equal weights: power of two choices (two random candidates, the less busy wins).
    Unequal weights: Envoy's form, a weighted rotation where each node's weight is
    divided by its requests in flight plus one.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._equal = True
        self._smooth = RoundRobin(always_weighted=True)

    def reset(self, nodes: Sequence[Node], weights: Sequence[float]) -> None:
        self._equal = _equal(weights)
        self._smooth.reset(nodes, weights)

    def pick(self, nodes: Sequence[Node], weights: Sequence[float],
             exclude: Collection[Node]) -> Node | None:
        if not self._equal:
            dynamic = [w / (n.in_flight + 1) for n, w in zip(nodes, weights, strict=True)]
            return self._smooth.pick(nodes, dynamic, exclude)
        if exclude:
            nodes = [n for n in nodes if n not in exclude]
        count = len(nodes)
        if count == 0:
            return None
        if count == 1:
            return nodes[0]
        i, j = self._rng.sample(range(count), 2)
        return nodes[i] if nodes[i].in_flight <= nodes[j].in_flight else nodes[j]


class Random:
    """Weighted random choice."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def reset(self, nodes: Sequence[Node], weights: Sequence[float]) -> None:
        pass

    def pick(self, nodes: Sequence[Node], weights: Sequence[float],
             exclude: Collection[Node]) -> Node | None:
        if exclude:
            pairs = [(n, w) for n, w in zip(nodes, weights, strict=True) if n not in exclude]
            nodes = [n for n, _ in pairs]
            weights = [w for _, w in pairs]
        if not nodes:
            return None
        return self._rng.choices(nodes, weights)[0]


def make_balancer(name: str, rng: random.Random | None = None) -> Balancer:
    if name == "round_robin":
        return RoundRobin()
    return LeastRequest(rng) if name == "least_request" else Random(rng)
