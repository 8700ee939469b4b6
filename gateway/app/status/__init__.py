"""The status page: GET /status (admin) and, if public, status.path on the traffic listener."""
