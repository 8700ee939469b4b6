"""The status page's components (Statuspage's word): groups of nodes, each shown with a
state of its own, as a cloud's status page shows its regions.

The groups are ``status.components`` when the config has them (a public name and the
zones or nodes it covers); otherwise one per zone, named after the zone, when nodes have
zones (nodes without one are "Other"); a fleet without zones has no components.

A component's state is about its own nodes, while the page's overall state is the
service as users get it through the gateway: a zone that is down while the other zones
carry the load is a major outage of that component and a degraded service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.node import PLANNED_STATES, Node, NodeState

#: Statuspage's component statuses, in the page's words.
COMPONENT_STATES = {
    "operational": "Operational",
    "degraded": "Degraded performance",
    "partial_outage": "Partial outage",
    "major_outage": "Major outage",
    "maintenance": "Under maintenance",
}
#: The name of the group of nodes without a zone, beside zoned ones.
NO_ZONE = "Other"


@dataclass(frozen=True, slots=True)
class Component:
    """A named group of nodes (by name); its state comes from ``component_state``."""

    name: str
    members: tuple[str, ...]

    def __repr__(self) -> str:
        return f"<Component {self.name!r} {','.join(self.members)}>"


def components(config: GatewayConfig) -> list[Component]:
    """The components of a config, in the order the page shows them."""
    if config.status.components:
        out = []
        for c in config.status.components:
            members = [n.name for n in config.nodes if n.zone in c.zones or n.name in c.nodes]
            out.append(Component(c.name, tuple(members)))
        return out
    by_zone: dict[str | None, list[str]] = {}
    for node in config.nodes:
        by_zone.setdefault(node.zone, []).append(node.name)
    if set(by_zone) == {None}:
        return []
    # Zones by name, nodes without one last.
    ordered = sorted(by_zone.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    return [Component(NO_ZONE if zone is None else zone, tuple(members))
            for zone, members in ordered]


def component_state(nodes: Sequence[Node], *, fleet_planned: bool) -> str:
    """operational, degraded, partial_outage, major_outage or maintenance.

    Planned absences (a drain, a maintenance window) are not outages: a component whose
    nodes are all out for planned reasons, or with a node in a maintenance window, is
    under maintenance; one whose other nodes serve while an operator drains one is
    operational. Nodes down for an unplanned reason (failed health checks, an ejection,
    still starting) are: none of the component's nodes serving is a major outage, half or
    more of them down a partial one, fewer degraded. A WARNING node (degrading, drained
    or kept at a reduced weight) makes it degraded."""
    if fleet_planned:
        return "maintenance"
    serving = sum(1 for n in nodes if n.serving)
    planned = sum(1 for n in nodes if not n.serving and n.state in PLANNED_STATES)
    down = sum(1 for n in nodes if not n.serving and n.state not in PLANNED_STATES
               and n.state is not NodeState.WARNING)
    if nodes and serving == 0:
        return "maintenance" if planned == len(nodes) else "major_outage"
    if down and down * 2 >= len(nodes):
        return "partial_outage"
    if down or any(n.warning is not None for n in nodes):
        return "degraded"
    if any(n.maintenance is not None for n in nodes):
        return "maintenance"
    return "operational"


def components_json(groups: Iterable[Component], nodes: dict[str, Node], *,
                    fleet_planned: bool, public: bool) -> list[dict[str, Any]]:
    """What the page and ``status.json`` show of each component; the public view has no
    node names."""
    out = []
    for group in groups:
        members = [nodes[name] for name in group.members if name in nodes]
        state = component_state(members, fleet_planned=fleet_planned)
        data: dict[str, Any] = {"name": group.name, "state": state,
                                "state_text": COMPONENT_STATES[state],
                                "serving": sum(1 for n in members if n.serving),
                                "nodes": len(members)}
        if not public:
            data["members"] = [n.name for n in members]
        out.append(data)
    return out
