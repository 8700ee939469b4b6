"""The composition root: what wires the data plane and the control plane together and
runs them (the process, the admin API, the status page, the CLI, the demo)."""
