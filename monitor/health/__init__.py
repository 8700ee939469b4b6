"""Health checking: active probes, the warning detector and readmission checks (Envoy's
health checker; the passive half, outlier and stall detection, is the data plane's)."""

from monitor.health.checker import HealthChecker
from monitor.health.warning import WarningDetector

__all__ = ["HealthChecker", "WarningDetector"]
