"""Health monitoring, warning detection and (later modules) deploy orchestration."""
