"""Smoke test for the benchmark suite (``python -m bench``): it runs end to end and
writes its JSON. It asserts the shape of the results, never a performance number:
CI machines are shared and noisy, and the suite reports ratios for people to read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.fleet import Fleet
from bench.listen_models import listen_models
from bench.load import parse_hey, parse_wrk
from bench.processes import ProcessGroup
from bench.scenarios import throughput
from bench.settings import TARGETS, Settings
from bench.tools import Tools
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = {"target", "scenario", "metric", "value", "unit", "ratio", "reference", "status",
            "note"}


def quick_bench(tmp_path: Path, only: str, targets: str, *, timeout: float
                ) -> tuple[str, dict[str, Any]]:
    """``python -m bench --quick --duration 1`` of one scenario: its output and JSON."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--duration", "1", "--only", only,
         "--targets", targets, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout, json.loads(out.read_text())


def test_quick_throughput_run_writes_results(tmp_path: Path) -> None:
    require_tool("wrk")
    # About two seconds of load: one second of wrk against direct, one against hagw.
    stdout, report = quick_bench(tmp_path, "throughput", "direct,hagw", timeout=60)
    assert "TARGET" in stdout and "HEADLINE" in stdout

    assert {"schema", "started_at", "finished_at", "host", "settings", "tools", "rows",
            "headlines"} <= report.keys()
    assert report["settings"]["scenarios"] == ["throughput"]
    for row in report["rows"]:
        assert set(row) == ROW_KEYS
    measured = {(r["target"], r["metric"]): r for r in report["rows"]
                if r["scenario"] == "throughput"}
    for target in ("direct", "hagw"):
        for metric in ("req/s", "p50", "p99"):
            row = measured[(target, metric)]
            assert row["status"] == "ok", row
            assert isinstance(row["value"], float)
    assert measured[("hagw", "req/s")]["reference"] == "direct"
    assert "throughput hagw/direct" in report["headlines"]


def test_missing_load_generator_is_skipped_not_fatal(tmp_path: Path) -> None:
    settings = Settings(duration=1, warmup=0, rounds=1, quick=True, scenarios=("throughput",),
                        targets=TARGETS, nodes="nginx", connections=50, rates=(1000,),
                        idle_connections=10, stream_size=1024, json_path=None)
    with ProcessGroup(tmp_path) as group:
        rows = throughput(Fleet(settings, Tools({"wrk": None}), group), settings)
        assert not group.children  # nothing worth starting without a load generator
    assert {r.target for r in rows} == set(TARGETS)
    assert all(r.status.startswith("skipped: wrk not installed") for r in rows)


WRK_SAMPLE = """\
Running 2s test @ http://127.0.0.1:56157/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   630.22us  405.67us   4.81ms   89.25%
    Req/Sec    60.35k    19.18k   87.11k    50.00%
  Latency Distribution
     50%  544.00us
     75%  830.00us
     90%    1.00ms
     99%    2.19ms
  120041 requests in 2.00s, 19.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  59919.72
Transfer/sec:      9.49MB
"""

HEY_SAMPLE = """\
Summary:
  Total:\t2.0060 secs
  Requests/sec:\t997.0231

Latency distribution:
  10% in 0.0001 secs
  50% in 0.0003 secs
  99% in 0.0017 secs

Status code distribution:
  [200]\t1990 responses
  [503]\t5 responses

Error distribution:
  [5]\tGet "http://127.0.0.1:1/": dial tcp 127.0.0.1:1: connect: connection refused
"""


def test_load_generator_reports_are_parsed() -> None:
    w = parse_wrk(WRK_SAMPLE)
    assert (w.requests, w.rps, w.errors) == (120041, 59919.72, 7)
    assert w.p50_ms == pytest.approx(0.544) and w.p99_ms == pytest.approx(2.19)
    h = parse_hey(HEY_SAMPLE)
    assert (h.requests, h.rps, h.errors) == (2000, 997.0231, 10)
    assert h.p50_ms == pytest.approx(0.3) and h.p99_ms == pytest.approx(1.7)


def test_one_inherited_socket_loses_no_connection_to_a_hung_worker() -> None:
    """The measurement behind the process model (README "Process model"): a worker that
    hangs and dies loses the connections the kernel queued on its own SO_REUSEPORT socket;
    with the one socket every worker inherits, the other worker takes them."""
    rows = {(r.target, r.metric): r.value for r in listen_models(rate=200, seconds=1.5)}
    # Inherited: only what the hung worker had accepted. SO_REUSEPORT: about half of what
    # arrived during the hang (50 of 100) too.
    assert rows[("inherited", "failed connections")] <= 5
    assert rows[("reuseport", "failed connections")] >= 20


def test_quick_https_run_compares_hagw_with_nginx_terminating_tls(tmp_path: Path) -> None:
    require_tool("wrk")
    require_tool("nginx")
    _, report = quick_bench(tmp_path, "https", "hagw,nginx", timeout=90)
    measured = {(r["target"], r["metric"]): r for r in report["rows"]
                if r["scenario"] == "https"}
    for target in ("hagw-tls", "nginx-tls"):
        for metric in ("req/s", "p50", "p99"):
            row = measured[(target, metric)]
            assert row["status"] == "ok", row
            assert isinstance(row["value"], float)
    # One run, one ratio: hagw's req/s over nginx's, both terminating TLS.
    hagw = measured[("hagw-tls", "req/s")]
    assert hagw["reference"] == "nginx-tls"
    assert hagw["ratio"] == hagw["value"] / measured[("nginx-tls", "req/s")]["value"]
    assert "https throughput hagw/nginx" in report["headlines"]
