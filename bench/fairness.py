"""Fairness under a flood: the p99 of well-behaved clients, alone and while one client
floods the gateway as fast as it can.

The gateway runs with per-client rate limits keyed by ``X-Client-Id`` (set by a trusted
proxy: here, the load generators on loopback). The flood is wrk with 50 connections as one
client; the well-behaved traffic is hey at a fixed 100 requests/s as another.
"""

from __future__ import annotations

import math
import subprocess
import time

from bench.fleet import Fleet, Unavailable
from bench.gateway import start_gateway_with_admin
from bench.load import GRACE, MIN_HEY_SAMPLES, LoadError, hey, parse_wrk
from bench.processes import StartError
from bench.report import Row, failed, progress, skipped, unavailable
from bench.settings import Settings

SCENARIO = "fairness"
POLITE_RATE = 100


def fairness(fleet: Fleet, settings: Settings) -> list[Row]:
    wrk_path, hey_path = fleet.tools.path("wrk"), fleet.tools.path("hey")
    if wrk_path is None or hey_path is None:
        missing = fleet.tools.missing("wrk") or fleet.tools.missing("hey") or "wrk or hey"
        return [skipped("hagw", SCENARIO, missing)]
    if "hagw" not in settings.targets:
        return []
    try:
        nodes = fleet.nodes()
        child, port, _admin = start_gateway_with_admin(fleet.group, nodes, "hagw-fairness", {
            "rate_limit": {"enabled": True, "rate": 300, "burst": 100, "key": "header",
                           "header": "X-Client-Id", "trusted_proxies": ["127.0.0.1"]}})
    except Unavailable as exc:
        return [unavailable("hagw", SCENARIO, exc.status)]
    except StartError as exc:
        return [failed("hagw", SCENARIO, str(exc).splitlines()[0])]
    url = f"http://127.0.0.1:{port}/"
    # The flood must outlast the polite measurement, which hey stretches to enough samples.
    seconds = max(settings.duration, MIN_HEY_SAMPLES / POLITE_RATE)
    polite = ("X-Client-Id: polite",)
    try:
        progress(f"fairness: {POLITE_RATE} req/s from a well-behaved client, alone")
        hey(hey_path, url, rate=POLITE_RATE, duration=min(2.0, seconds), headers=polite)
        alone = hey(hey_path, url, rate=POLITE_RATE, duration=seconds, headers=polite)
        progress("fairness: the same while one client floods with 50 connections")
        flood_seconds = max(1, math.ceil(seconds + 2))
        flood = subprocess.Popen(
            [wrk_path, "-t1", "-c50", f"-d{flood_seconds}s", "--latency", "-H",
             "X-Client-Id: flooder", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            time.sleep(1.0)  # the flood is at full strength before the measurement starts
            during = hey(hey_path, url, rate=POLITE_RATE, duration=seconds, headers=polite)
            out, _ = flood.communicate(timeout=flood_seconds + GRACE)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.communicate()
        flooder = parse_wrk(out)
    except (OSError, LoadError, subprocess.TimeoutExpired) as exc:
        return [failed("hagw", SCENARIO, f"{exc.__class__.__name__}: {exc}")]
    finally:
        fleet.group.stop(child)
    refused = flooder.errors / flooder.requests if flooder.requests else 0.0
    return [
        Row("hagw", SCENARIO, "polite p99 alone", alone.p99_ms, "ms",
            note=f"{POLITE_RATE} req/s, {alone.errors} errors"),
        Row("hagw", SCENARIO, "polite p99 in flood", during.p99_ms, "ms",
            ratio=during.p99_ms / alone.p99_ms if alone.p99_ms else None,
            reference="polite p99 alone",
            note=f"{during.errors} errors of {during.requests}"),
        Row("hagw", SCENARIO, "flooder req/s", flooder.rps, "req/s",
            note=f"{refused:.1%} of its {flooder.requests} requests refused (429)"),
    ]
