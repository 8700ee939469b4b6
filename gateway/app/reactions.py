"""What the composition root does when something happens: the subscribers that tie the
bus to metrics, WebSockets and timers. Each is a small synchronous handler."""

from __future__ import annotations

from collections.abc import Callable

from gateway.app.dataplane import EjectionTimer
from gateway.app.metrics import ControlMetrics
from gateway.app.tasks import Tasks
from gateway.cluster import DrainRefused
from gateway.events import EventBus
from gateway.listener import WebSocketTunnels
from gateway.node import NodeChanged, NodeState
from gateway.outlier import NodeEjected
from monitor.uptime import NodeUptime

_CLOSES_WEBSOCKETS = (NodeState.DRAINING, NodeState.MAINTENANCE)


def wire(bus: EventBus, *, metrics: ControlMetrics, uptime: NodeUptime,
         websockets: WebSocketTunnels, timer: EjectionTimer, tasks: Tasks,
         grace: Callable[[], float]) -> None:
    """Subscribe the root's reactions: uptime and transition counts, WebSockets closed
    with 1001 when their node drains, the ejection timer re-armed."""

    def on_change(event: NodeChanged) -> None:
        uptime.observe(event.node)
        transition = event.transition
        if transition is None:
            return
        metrics.transitions.labels(transition.old.value, transition.new.value,
                                   transition.cause).inc()
        if transition.new in _CLOSES_WEBSOCKETS and tasks.running:
            node = event.node
            tasks(websockets.close_node(node, grace()), name=f"close websockets {node.name}")

    def on_eject(event: NodeEjected) -> None:
        metrics.ejections.labels(event.node.name).inc()
        timer.arm()

    bus.subscribe(NodeChanged, on_change)
    bus.subscribe(NodeEjected, on_eject)
    bus.subscribe(DrainRefused,
                  lambda event: metrics.drains_refused.labels(event.node.name).inc())
