"""The operator's command line against a live gateway (issue 18): options anywhere, bad
usage exits 2, quiet pipes, ``-o json`` on every read command, incident updates, the
maintenance ergonomics, ``hagw check`` and ``hagw reload``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.app.cli import incidents as cli_incidents
from monitor.incident.tracker import STATUSES
from tests.conftest import hagw, write_cli_config


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=30, input=stdin)


async def live(backends: Any, gateway: Any, tmp_path: Path, **overrides: Any) -> tuple[Any, Path]:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], **overrides)
    config = tmp_path / "gateway.yaml"
    write_cli_config(config, [b.url for b in nodes], gw.admin_address[1])
    return gw, config


def test_the_cli_knows_the_incident_statuses() -> None:
    assert cli_incidents.STATUSES == STATUSES


async def test_options_go_anywhere_and_a_missing_id_is_bad_usage(
        backends: Any, gateway: Any, tmp_path: Path) -> None:
    gw, config = await live(backends, gateway, tmp_path)
    window = await gw.maintenance.schedule_window(time.time() + 3600, 600, "x", ("node-1",))
    # Before: "error: unrecognized arguments: ID" (the id after -c FILE was left over).
    result = await asyncio.to_thread(run_cli, "maintenance", "cancel", "-c", str(config),
                                     window.id)
    assert result.returncode == 0, result.stderr
    assert f"{window.id}: cancelled" in result.stdout
    result = await asyncio.to_thread(run_cli, "-c", str(config), "nodes")  # before the command
    assert result.returncode == 0 and "2/2 nodes serving" in result.stdout
    result = await asyncio.to_thread(run_cli, "deploy", "status", "-c", str(config), "d-nope")
    assert result.returncode == 1 and "no deploy 'd-nope'" in result.stderr
    # Before: DELETE /maintenance/None.
    result = await asyncio.to_thread(run_cli, "maintenance", "cancel", "-c", str(config))
    assert result.returncode == 2 and "needs a window id" in result.stderr


async def test_bad_start_or_duration_exits_2(backends: Any, gateway: Any,
                                             tmp_path: Path) -> None:
    gw, config = await live(backends, gateway, tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return hagw("maintenance", "schedule", "--reason", "r", "--nodes", "node-1", *args,
                    config=config)

    for args, message in ((["--start", "tomorrow"], "--start: expected a time"),
                          (["--start", "+2h", "--duration", "soon"], "--duration"),
                          (["--start", "2030-01-01T02:00"], "no zone"),
                          (["--start", "+x"], 'relative time like "+2h"')):
        result = await asyncio.to_thread(run, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    # The gateway's own 400 is bad usage too.
    result = await asyncio.to_thread(hagw, "maintenance", "start", "--nodes", "nope",
                                     config=config)
    assert result.returncode == 2 and "no node named nope" in result.stderr
    before = time.time()
    result = await asyncio.to_thread(run, "--start", "+2h", "--duration", "30m")
    assert result.returncode == 0, result.stderr
    [window] = gw.maintenance.schedule.upcoming()
    assert before + 7200 - 2 <= window.start <= time.time() + 7200 + 1
    # Overlapping windows are refused.
    result = await asyncio.to_thread(run, "--start", "+2h10m", "--duration", "30m")
    assert result.returncode == 2 and f"overlaps window {window.id}" in result.stderr


async def test_whole_fleet_start_asks_unless_yes(backends: Any, gateway: Any,
                                                 tmp_path: Path) -> None:
    gw, config = await live(backends, gateway, tmp_path)
    result = await asyncio.to_thread(hagw, "maintenance", "start", "--duration", "5m",
                                     config=config)
    assert result.returncode == 1 and "pass --yes" in result.stderr
    assert gw.maintenance.current() is None
    result = await asyncio.to_thread(hagw, "maintenance", "start", "--duration", "5m", "--yes",
                                     config=config)
    assert result.returncode == 0, result.stderr
    assert gw.maintenance.current() is not None


async def test_a_closed_pipe_ends_quietly(backends: Any, gateway: Any, tmp_path: Path) -> None:
    _gw, config = await live(backends, gateway, tmp_path)
    # `true` exits before hagw writes: before the fix, "hagw: [Errno 32] Broken pipe", exit 1.
    script = (f"{sys.executable} -m gateway events -c {config} --limit 500 2>{tmp_path}/err "
              f"| true; echo ${{PIPESTATUS[0]}} > {tmp_path}/rc")
    await asyncio.to_thread(subprocess.run, ["bash", "-c", script], timeout=30, check=True)
    assert (tmp_path / "err").read_text() == ""
    assert (tmp_path / "rc").read_text().strip() == "0"


async def test_every_read_command_speaks_json(backends: Any, gateway: Any,
                                              tmp_path: Path) -> None:
    gw, config = await live(backends, gateway, tmp_path,
                            deploy={"command": ["true"], "verify_version": False,
                                    "bake_time": "0s"})
    record = await gw.deploys.begin("v2")
    async with asyncio.timeout(20):
        while record.active:
            await asyncio.sleep(0.05)
    gw.incidents.tracker.evaluate({"fast_burn": "burning"}, [0, 0, 0], 1.0)
    incident = gw.incidents.tracker.current
    reads = {("nodes",): lambda d: {n["name"] for n in d["nodes"]} == {"node-1", "node-2"},
             ("status",): lambda d: d["incidents"]["open"][0]["id"] == incident.id,
             ("events",): lambda d: any(e["kind"] == "deploy.succeeded" for e in d),
             ("deploy", "status"): lambda d: d["id"] == record.id,
             ("deploy", "history"): lambda d: d[0]["id"] == record.id,
             ("maintenance", "list"): lambda d: d["mode"] == "normal",
             ("incident", "list"): lambda d: d[0]["id"] == incident.id,
             ("incident", "show", incident.id): lambda d: d["title"] == incident.title}
    # Two commands at a time (one per core): each is a process of its own.
    limit = asyncio.Semaphore(2)

    async def run(args: tuple[str, ...], mode: str) -> subprocess.CompletedProcess[str]:
        async with limit:
            return await asyncio.to_thread(hagw, *args, "-o", mode, config=config)

    runs = [(args, mode) for args in reads for mode in ("json", "wide", "text")]
    results = await asyncio.gather(*(run(args, mode) for args, mode in runs))
    for (args, mode), result in zip(runs, results, strict=True):
        assert result.returncode == 0, (args, mode, result.stderr)
        if mode == "json":
            assert reads[args](json.loads(result.stdout)), (args, result.stdout[:500])
    result = await asyncio.to_thread(hagw, "nodes", "-o", "wide", config=config)
    assert "REQ/S" in result.stdout and "P99" in result.stdout


async def test_status_shows_each_component(backends: Any, gateway: Any,
                                           tmp_path: Path) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], min_healthy=1, nodes=[
        {"name": f"node-{i + 1}", "url": b.url, "zone": zone}
        for i, (b, zone) in enumerate(zip(nodes, ["eu-1", "eu-1", "us-1"], strict=True))])
    config = tmp_path / "gateway.yaml"
    write_cli_config(config, [b.url for b in nodes], gw.admin_address[1])
    nodes[2].fault(health="fail")
    async with asyncio.timeout(5):
        while gw.cluster.get("node-3").serving or not gw.cluster.get("node-1").serving:
            await asyncio.sleep(0.02)
    result = await asyncio.to_thread(hagw, "status", config=config)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("component")]
    assert lines == ["component     eu-1: Operational (2/2 serving)",
                     "component     us-1: Major outage (0/1 serving)"]


async def test_incident_updates_ack_and_resolve(backends: Any, gateway: Any,
                                                tmp_path: Path) -> None:
    gw, config = await live(backends, gateway, tmp_path)
    gw.incidents.tracker.evaluate({"below_min_healthy": "node-2 UNHEALTHY"}, [0, 0, 0], 1.0)
    incident = gw.incidents.tracker.current
    result = await asyncio.to_thread(hagw, "incident", "update", incident.id, "--status",
                                     "identified", "The", "database", "is", "full",
                                     config=config)
    assert result.returncode == 0, result.stderr
    assert incident.status == "identified"
    assert incident.updates[-1]["text"] == "The database is full"
    result = await asyncio.to_thread(hagw, "incident", "update", incident.id, "--status",
                                     "bogus", "x", config=config)
    assert result.returncode == 2
    result = await asyncio.to_thread(hagw, "incident", "ack", incident.id, config=config)
    assert result.returncode == 0 and incident.acknowledged_at is not None
    result = await asyncio.to_thread(hagw, "incident", "resolve", incident.id, config=config)
    assert result.returncode == 0, result.stderr
    assert incident.status == "resolved" and gw.incidents.tracker.current is None
    # Resolved by hand while the condition holds: no new incident until it clears.
    gw.incidents.tracker.evaluate({"below_min_healthy": "node-2 UNHEALTHY"}, [0, 0, 0], 1.0)
    assert gw.incidents.tracker.current is None
    result = await asyncio.to_thread(hagw, "incident", "ack", incident.id, config=config)
    assert result.returncode == 1 and "HTTP 409" in result.stderr


def test_check_reports_every_error_and_unset_variables_as_warnings(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:8080",
        "admin": {"listen": "127.0.0.1:9901", "token": "${HAGW_TEST_UNSET_TOKEN}"},
        "nodes": [{"name": "a", "url": "http://127.0.0.1:9601"}],
        "timeouts": {"connect": "1 second"},
        "retries": {"attempts": "many"},
        "balancer": "fastest",
    }))
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 2
    for key in ("timeouts.connect", "retries.attempts", "balancer"):
        assert f": {key}: " in result.stderr, result.stderr
    assert "3 error(s)" in result.stderr
    assert "warning:" in result.stderr and "HAGW_TEST_UNSET_TOKEN is not set" in result.stderr
    data = yaml.safe_load(config.read_text())
    for key in ("timeouts", "retries", "balancer"):
        del data[key]
    config.write_text(yaml.safe_dump(data))
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "1 warning(s)" in result.stdout


async def test_reload_says_which_keys_changed(backends: Any, gateway: Any,
                                              tmp_path: Path) -> None:
    nodes = await backends(2)
    config = tmp_path / "live.yaml"
    gw = await gateway([b.url for b in nodes], config_path=str(config))
    data = write_cli_config(config, [b.url for b in nodes], gw.admin_address[1])
    data["admin"]["listen"] = f"127.0.0.1:{gw.admin_address[1]}"
    data["listen"] = f"127.0.0.1:{gw.traffic_address[1]}"
    data["retries"] = {"attempts": 3}
    data["nodes"][1]["weight"] = 5
    data["admin"]["token"] = gw.config.admin.token
    config.write_text(yaml.safe_dump(data))
    result = await asyncio.to_thread(hagw, "reload", config=config)
    assert result.returncode == 0, result.stderr
    assert "retries.attempts" in result.stdout and "nodes.node-2" in result.stdout
    assert gw.config.admin.token not in result.stdout + result.stderr


async def test_the_maintenance_page_links_to_the_public_status_page(
        backends: Any, gateway: Any, tmp_path: Path) -> None:
    gw, config = await live(backends, gateway, tmp_path, status={"public": True})
    result = await asyncio.to_thread(hagw, "maintenance", "start", "--yes", config=config)
    assert result.returncode == 0, result.stderr
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.traffic_url}/", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 503
            assert '<a href="/_status">Service status</a>' in await resp.text()
        async with http.get(f"{gw.traffic_url}/") as resp:
            assert resp.status == 503 and resp.headers["Link"] == '</_status>; rel="status"'
