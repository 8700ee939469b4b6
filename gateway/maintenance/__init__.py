"""The data plane's side of maintenance windows: maintenance mode on the traffic
listener, the queue intake and ticket URLs. The schedule and the replay are the control
plane's (monitor.maintenance)."""

from gateway.maintenance.mode import (
    MAINTENANCE,
    MaintenanceMode,
    ModeChanged,
    Phase,
    ReplayWaiter,
    WriteQueued,
)

__all__ = ["MAINTENANCE", "MaintenanceMode", "ModeChanged", "Phase", "ReplayWaiter",
           "WriteQueued"]
