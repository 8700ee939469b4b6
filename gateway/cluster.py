"""The cluster: every node, which of them may take traffic, and the fleet-level rules.

Fleet-level rules live here because they need the whole fleet: the capacity
floor (``min_healthy``) that limits automatic drains, backup tiers, zone
locality and the panic threshold. Like the nodes, the cluster changes only in
synchronous methods.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.balancer import Balancer, make_balancer
from gateway.clock import Clock
from gateway.config.schema import GatewayConfig, NodeConfig
from gateway.events import Entry, Event, EventBus, News
from gateway.node import Node, NodeChanged, NodeState

#: Weights are recomputed this often while a node ramps up after readmission.
RAMP_REFRESH = 0.5


class Candidates:
    """The nodes the balancer chooses among, rebuilt only when something changed."""

    __slots__ = ("local", "local_share", "local_weights", "nodes", "panic", "remote",
                 "remote_weights", "weights")

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.weights: list[float] = []
        self.panic = False
        self.local: list[Node] = []
        self.local_weights: list[float] = []
        self.remote: list[Node] = []
        self.remote_weights: list[float] = []
        self.local_share = 1.0


@dataclass(frozen=True, slots=True)
class DrainRefused(Event):
    """A WARNING node kept serving because draining it would break the capacity floor."""

    node: Node
    note: str
    floor: int
    serving: int

    def log_entry(self) -> Entry:
        return Entry("node.drain_refused", self.note, self.node.name, logging.WARNING,
                     {"floor": self.floor, "serving": self.serving})


class Cluster:
    def __init__(self, config: GatewayConfig, *, clock: Clock, bus: EventBus,
                 rng: random.Random | None = None, decides: bool = True) -> None:
        self.clock = clock
        self.bus = bus
        #: False for a worker's replica: the capacity floor's decisions (which WARNING node
        #: drains) are the supervisor's, and arrive with its snapshots.
        self.decides = decides
        self.config = config
        self.nodes: dict[str, Node] = {}
        self.version = 0
        self._rng = rng or random.Random()
        self.balancer: Balancer = make_balancer(config.balancer, self._rng)
        self._candidates = Candidates()
        self._built_version = -1
        self._refresh_at = 0.0
        self._rebalancing = False
        self._floor_held: set[str] = set()
        # First subscriber: the cluster's own view is current before anyone else looks.
        bus.subscribe(NodeChanged, self._on_node)
        for node_config in config.nodes:
            self._add(node_config, boot=True)

    # -- membership ---------------------------------------------------------------------------

    def _add(self, node_config: NodeConfig, *, boot: bool) -> Node:
        cfg = self.config
        node = Node(node_config, cfg.health_for(node_config), clock=self.clock,
                    slow_start=cfg.slow_start, warning=cfg.warning, publish=self.bus.publish,
                    boot=boot)
        self.nodes[node.name] = node
        self.version += 1
        return node

    def update(self, config: GatewayConfig) -> tuple[list[Node], list[Node]]:
        """Apply a reloaded config. Returns (added, removed); removed nodes drain, then go."""
        old_policy = self.config.balancer
        self.config = config
        if config.balancer != old_policy:
            self.balancer = make_balancer(config.balancer, self._rng)
        added: list[Node] = []
        removed: list[Node] = []
        wanted = {n.name: n for n in config.nodes}
        for name, node in list(self.nodes.items()):
            new_config = wanted.get(name)
            if new_config is None or new_config.url != node.config.url:
                if not node.removed:
                    node.remove()
                    removed.append(node)
                    # The name is free for the replacement; the old node finishes its requests.
                    self.nodes[f"{name}~removed~{id(node)}"] = self.nodes.pop(name)
            else:
                node.configure(new_config, config.health_for(new_config), config.slow_start,
                               config.warning)
        for name, node_config in wanted.items():
            if name not in self.nodes:
                added.append(self._add(node_config, boot=False))
                self.bus.publish(News("node.added", f"added {node_config.url}", name))
        self.version += 1
        if self.decides:
            self._rebalance()
        return added, removed

    def forget(self, node: Node) -> None:
        """Drop a removed node once its in-flight requests are done."""
        for key, value in list(self.nodes.items()):
            if value is node:
                del self.nodes[key]
        self.version += 1
        self.bus.publish(News("node.removed", f"removed after draining ({node.in_flight} "
                                "in flight)", node.name))

    def get(self, name: str) -> Node | None:
        node = self.nodes.get(name)
        return node if node is not None and not node.removed else None

    def __iter__(self) -> Iterator[Node]:
        return (n for n in self.nodes.values() if not n.removed)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # -- change notification and the capacity floor -------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait for a node change that makes ``predicate`` true: event-driven and bounded.
        It only reads state, so the no-await rule for changing state still holds."""
        changed = asyncio.Event()
        unsubscribe = self.bus.subscribe(NodeChanged, lambda _event: changed.set())
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    changed.clear()
                    await changed.wait()
            return True
        except TimeoutError:
            return predicate()
        finally:
            unsubscribe()

    def _on_node(self, event: NodeChanged) -> None:
        self.version += 1
        if not self._rebalancing and self.decides:
            self._rebalance()

    @property
    def floor(self) -> int:
        primaries = sum(1 for n in self if not n.config.backup)
        return self.config.min_healthy.of(primaries)

    def serving_primaries(self, excluding: Collection[str] = ()) -> int:
        """Primary nodes taking new requests, leaving out the names in ``excluding``: the one
        count every capacity rule (automatic drains, deploys, incidents, the status page)
        holds against ``floor``."""
        return sum(1 for n in self if n.serving and not n.config.backup
                   and n.name not in excluding)

    def below_floor(self, excluding: Collection[str] = ()) -> bool:
        return self.serving_primaries(excluding) < self.floor

    def _rebalance(self) -> None:
        """Drain WARNING nodes while the floor allows; readmit them when capacity is short."""
        self._rebalancing = True
        try:
            floor = self.floor
            serving = self.serving_primaries()
            warning = sorted((n for n in self if n.state is NodeState.WARNING
                              and not n.config.backup), key=lambda n: n.since)
            for node in warning:
                if node.warning_drained:
                    continue
                if serving - 1 >= floor:
                    node.set_warning_drained(True, f"auto-drained: {node.warning}")
                    self._floor_held.discard(node.name)
                    self.bus.publish(News("node.auto_drain", f"drained: {node.warning}",
                                            node.name))
                    serving -= 1
                elif node.name not in self._floor_held:
                    self._floor_held.add(node.name)
                    note = (f"{node.warning}; kept serving at "
                            f"{node.warning_config.reduced_weight:.0%} weight: draining it "
                            f"would leave {serving - 1} serving, below min_healthy={floor}")
                    node.set_warning_drained(False, note)
                    self.bus.publish(DrainRefused(node, note, floor, serving))
            for node in reversed(warning):
                if serving >= floor:
                    break
                if node.warning_drained:
                    node.set_warning_drained(False, f"{node.warning}; readmitted at reduced "
                                                    f"weight: serving capacity fell below "
                                                    f"min_healthy={floor}")
                    self.bus.publish(News("node.auto_undrain", node.reason, node.name,
                                            logging.WARNING))
                    serving += 1
            self._floor_held &= {n.name for n in warning if not n.warning_drained}
        finally:
            self._rebalancing = False

    # -- routing ------------------------------------------------------------------------------

    def candidates(self) -> Candidates:
        now = self.clock.monotonic()
        if self._built_version == self.version and now < self._refresh_at:
            return self._candidates
        self._candidates = built = self._build(now)
        self._built_version = self.version
        ramping = any(n.ramping for n in built.nodes)
        self._refresh_at = now + RAMP_REFRESH if ramping else float("inf")
        self.balancer.reset(built.nodes, built.weights)
        return built

    def _build(self, now: float) -> Candidates:
        cfg = self.config
        out = Candidates()
        available = [n for n in self if not n.planned_out]
        primaries = [n for n in available if not n.config.backup]
        chosen = [n for n in primaries if n.serving]
        if len(chosen) < self.floor:
            chosen += [n for n in available if n.config.backup and n.serving]
        denominator = len(primaries) or len(available)
        if (cfg.panic_threshold > 0 and denominator
                and len(chosen) / denominator < cfg.panic_threshold):
            # Panic: better to try every node we may than to fail everything (Envoy's rule),
            # but confirmed-dead nodes only when nothing else is left.
            out.panic = True
            chosen = [n for n in available if n.state is not NodeState.UNHEALTHY] or available
        out.nodes = chosen
        out.weights = [n.weight_at(now) for n in chosen]
        if cfg.locality == "prefer_zone" and not out.panic:
            zone = cfg.zone
            local_all = [n for n in available if n.config.zone == zone and not n.config.backup]
            local = [n for n in chosen if n.config.zone == zone]
            remote = [n for n in chosen if n.config.zone != zone]
            out.local, out.remote = local, remote
            out.local_weights = [n.weight_at(now) for n in local]
            out.remote_weights = [n.weight_at(now) for n in remote]
            # Spill over to other zones in proportion to the local zone's lost capacity.
            out.local_share = (len(local) / len(local_all)) if local_all and remote else (
                1.0 if local else 0.0)
        return out

    def pick(self, exclude: Collection[Node] = ()) -> Node | None:
        built = self.candidates()
        if built.local or built.remote:
            if built.local and (built.local_share >= 1.0 or self._rng.random() < built.local_share):
                node = self.balancer.pick(built.local, built.local_weights, exclude)
                if node is not None:
                    return node
            node = self.balancer.pick(built.remote, built.remote_weights, exclude)
            if node is not None:
                return node
        node = self.balancer.pick(built.nodes, built.weights, exclude)
        if node is None and exclude:
            # Every other node was tried: a retry may go back to one (single-node fleets).
            node = self.balancer.pick(built.nodes, built.weights, ())
        return node

    @property
    def panic(self) -> bool:
        return self.candidates().panic

    # -- timers -------------------------------------------------------------------------------

    def tick(self) -> float | None:
        """Apply what time has decided (ejections ending); return when to call again."""
        now = self.clock.monotonic()
        wake: float | None = None
        for node in list(self):
            until = node.ejected_until
            if until is None:
                continue
            if until <= now:
                node.uneject("ejection time over")
            elif wake is None or until < wake:
                wake = until
        return wake

    # -- views --------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        built = self.candidates()
        nodes = list(self)
        return {
            "nodes": len(nodes),
            "serving": sum(1 for n in nodes if n.serving),
            "min_healthy": self.floor,
            "panic": built.panic,
            "states": {s.value: sum(1 for n in nodes if n.state is s) for s in NodeState},
        }

    def __repr__(self) -> str:
        return f"<Cluster nodes={len(self)} serving={sum(1 for n in self if n.serving)}>"
