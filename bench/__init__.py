"""hagw's benchmark suite: the gateway against direct access, a naive aiohttp proxy,
nginx and haproxy, all on loopback and against the same backend nodes in one run.

Every figure is also reported as a ratio against a reference measured in the same
run, because the machines this runs on are shared and noisy: absolute numbers move
from run to run, ratios much less. Run it with ``python -m bench`` (``make bench``).
"""
