"""Rolling zero-downtime deploys, orchestrated by the gateway and gated by the SLO."""
