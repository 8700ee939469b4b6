"""The maintenance benchmark: a whole-fleet window queues N writes (50,000 by default), the
window ends, and the replay's time is measured until the queue is empty. Twice: one write
after another (``replay_pipeline: 1``, the default), then pipelined to the nodes
(``--replay-pipeline``, 32 by default).

The reference is a published exchange figure: a 50,000-request backlog cleared within
120 s. The aim is at least 4x better: under 30 s.
"""

from __future__ import annotations

import time

from bench.fleet import Fleet, Unavailable
from bench.gateway import admin_call, start_gateway_with_admin
from bench.load import LoadError, hey_count
from bench.processes import StartError
from bench.report import Row, failed, progress, skipped, unavailable
from bench.settings import Settings

SCENARIO = "maintenance"
PIPELINED = "maintenance-pipelined"
#: Seconds a published exchange took to clear a 50,000-request backlog.
REFERENCE_SECONDS = 120.0
REFERENCE_ENTRIES = 50_000


def maintenance(fleet: Fleet, settings: Settings) -> list[Row]:
    hey_path = fleet.tools.path("hey")
    if hey_path is None:
        return [skipped("hagw", SCENARIO, fleet.tools.missing("hey") or "hey not installed")]
    if "hagw" not in settings.targets:
        return []
    rows = _replay(fleet, settings, hey_path, SCENARIO, 1)
    if settings.replay_pipeline > 1:
        rows += _replay(fleet, settings, hey_path, PIPELINED, settings.replay_pipeline)
    return rows


def _replay(fleet: Fleet, settings: Settings, hey_path: str, scenario: str,
            pipeline: int) -> list[Row]:
    entries = settings.queued_writes
    concurrency = settings.replay_concurrency
    try:
        nodes = fleet.nodes()
        progress(f"maintenance: a gateway with a write queue (replay_concurrency "
                 f"{concurrency}, replay_pipeline {pipeline})")
        child, port, admin = start_gateway_with_admin(fleet.group, nodes, f"hagw-{scenario}", {
            "maintenance": {"queue_routes": [{"method": "POST", "path": "/orders"}],
                            "replay_concurrency": concurrency,
                            "replay_pipeline": pipeline,
                            "queue_capacity": entries * 2,
                            # the load generator is one client
                            "queue_rate_limit": {"enabled": False},
                            "max_client_queued_bytes": 0}})
    except Unavailable as exc:
        return [unavailable("hagw", scenario, exc.status)]
    except StartError as exc:
        return [failed("hagw", scenario, str(exc).splitlines()[0])]
    try:
        window = admin_call(admin, "POST", "/maintenance", {"duration": "1h",
                                                            "reason": "benchmark"})
        progress(f"maintenance: queueing {entries} POSTs")
        seconds, statuses, unanswered = hey_count(
            hey_path, f"http://127.0.0.1:{port}/orders", requests=entries, connections=50,
            method="POST", body='{"order": 1}', timeout=600)
        accepted = statuses.get(202, 0)
        depth = admin_call(admin, "GET", "/maintenance")["queue"]["depth"]
        progress(f"maintenance: {accepted} accepted, {depth} queued; ending the window")
        began = time.monotonic()
        admin_call(admin, "POST", f"/maintenance/{window['id']}/end")
        deadline = began + 600
        while time.monotonic() < deadline:
            summary = admin_call(admin, "GET", "/maintenance")
            if summary["mode"] == "normal" and summary["queue"]["depth"] == 0:
                break
            time.sleep(0.1)
        replay = time.monotonic() - began
        queue = summary["queue"]
    except (OSError, LoadError, KeyError, ValueError) as exc:
        return [failed("hagw", scenario, f"{exc.__class__.__name__}: {exc}")]
    finally:
        fleet.group.stop(child)
    done = summary["mode"] == "normal" and queue["depth"] == 0
    note = (f"replay_concurrency {concurrency}, replay_pipeline {pipeline}"
            + ("; strict arrival order" if concurrency == pipeline == 1 else
               f"; arrival order, pipelined {pipeline} deep (strict while no write is refused)"
               if concurrency == 1 else f"; arrival order, {concurrency} at once"))
    # Scaled to the reference's backlog, so a --quick run still compares fairly.
    scaled = replay * REFERENCE_ENTRIES / max(1, depth)
    return [
        Row("hagw", scenario, "queued", depth, "writes",
            note=f"{accepted} answered 202 in {seconds:.1f}s ({accepted / seconds:,.0f}/s)"
                 + (f"; {unanswered} unanswered" if unanswered else "")
                 + (f"; other answers {dict(statuses)}" if len(statuses) > 1 else "")),
        Row("hagw", scenario, "enqueue rate", accepted / seconds if seconds else None,
            "writes/s", note="each 202 only after the write is on disk (group commit)"),
        Row("hagw", scenario, "replay time", replay if done else None, "s",
            status="ok" if done else "failed: the queue did not empty within 600s",
            note=note + f"; {queue['done']} replayed, {queue['failed']} failed"),
        Row("hagw", scenario, "replay rate", depth / replay if done and replay else None,
            "writes/s"),
        Row("hagw", scenario, "vs 120s reference", scaled / REFERENCE_SECONDS if done else None,
            "x", note=f"replay time for {REFERENCE_ENTRIES:,} writes / {REFERENCE_SECONDS:g}s "
                      "(a published exchange backlog); below 0.25 is 4x better"),
    ]
