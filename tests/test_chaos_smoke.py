"""Smoke test of the chaos suite: one short scenario end to end, in a subprocess.

It checks that ``python -m chaos`` runs, cleans up, writes the JSON it documents,
and that the scenario's correctness figures hold (no lost accepted write, no
failed idempotent request when one node is SIGKILLed). Timing and throughput
are deliberately not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chaos.report import SCENARIO_KEYS

REPO = Path(__file__).resolve().parent.parent


def test_quick_node_kill_runs_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--quick", "--only", "node-kill", "--json", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "node-kill" in proc.stdout

    payload = json.loads(out.read_text())
    assert payload["passed"] is True
    assert {"suite", "environment", "settings", "gateway_config", "scenarios"} <= set(payload)
    [scenario] = payload["scenarios"]
    assert set(scenario) >= set(SCENARIO_KEYS)
    assert scenario["name"] == "node-kill"
    assert scenario["status"] == "passed"
    figures = scenario["figures"]
    for key in ("requests", "failed_get", "failed_post", "failed_post_in_flight",
                "failed_post_other", "availability", "accepted", "lost", "duplicates"):
        assert key in figures
    assert figures["requests"] > 0 and figures["accepted"] > 0
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0
    assert figures["failed_get"] == 0
    assert figures["failed_post_other"] == 0  # POSTs fail only if in flight on the dead node
    assert all(check["passed"] for check in scenario["checks"])

    # Nothing the run started is left behind: no process mentions its work directory.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path / "work") not in ps.stdout


def test_quick_hang_on_the_defaults_fails_no_get_and_repeats_no_write(tmp_path: Path) -> None:
    """The comparison scenario on hagw's documented defaults: a SIGSTOPped node costs no
    GET (held ones are hedged) and no write is applied twice."""
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--quick", "--only", "defaults-hang", "--json",
         str(out), "--work-dir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    [scenario] = json.loads(out.read_text())["scenarios"]
    assert scenario["status"] == "passed", scenario["checks"]
    figures = scenario["figures"]
    assert figures["failed_get"] == 0 and figures["duplicates"] == 0 and figures["lost"] == 0
    assert figures["failed_post"] <= 5
