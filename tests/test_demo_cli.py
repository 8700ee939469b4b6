"""The quick start as an operator lives it (issue 18): ``hagw demo`` in its own process,
the live deploy view against it, ``deploy status --watch`` re-attaching, Ctrl-C detaching,
a second demo refused without harming the first, and no node left behind after Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from gateway.app.cli.deploy_view import progress, view
from gateway.app.demo.fleet import demo_config_text
from gateway.config.source import read_yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, list[int]]]:
    data, _lines = read_yaml(demo_config_text(), "demo.yaml")  # YAML 1.2: `on` is a key
    ports = [free_port() for _ in range(5)]
    data["listen"] = f"127.0.0.1:{ports[0]}"
    data["admin"]["listen"] = f"127.0.0.1:{ports[1]}"
    for node, port in zip(data["nodes"], ports[2:], strict=True):
        node["url"] = f"http://127.0.0.1:{port}"
    data["health"].update({"interval": "100ms", "unhealthy_interval": "100ms"})
    data["deploy"].update({"bake_time": "200ms"})
    data["shutdown"] = {"grace": "0ms", "drain_timeout": "2s"}
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "-c", str(config)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert proc.poll() is None, "the demo did not start"
    try:
        yield proc, config, ports
    finally:
        # As an operator would stop it (Ctrl-C), so its nodes go with it even when the
        # test failed; then whatever a pidfile still names.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        proc.stdout.close()
        for pid_path in (tmp_path / "var/demo/run").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_path.read_text()), signal.SIGKILL)


def mid_deploy(admin_port: int) -> dict[str, Any]:
    """The current deploy's record once one node is done and another is on its way."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/deploys/current",
                                    timeout=5) as resp:
            record: dict[str, Any] = json.load(resp)
        runs = list(record["nodes"].values())
        if record["status"] == "running" and runs[0]["done"] and not runs[-1]["done"] \
                and any(run["steps"] and not run["done"] for run in runs):
            return record
        time.sleep(0.02)
    raise AssertionError(f"no deploy in the middle seen: {record}")


def cli(config: Path, *args: str, tty: bool = False, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "140"}
    env.pop("NO_COLOR", None)
    if tty:
        env["FORCE_COLOR"] = "1"  # rich draws its live view as on a terminal
    return subprocess.run([sys.executable, "-m", "gateway", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_the_deploy_view_against_a_live_demo(
        demo: tuple[subprocess.Popen[str], Path, list[int]], tmp_path: Path) -> None:
    proc, config, ports = demo
    # In a pipe: one line per finished step, never twice, then the outcome.
    result = cli(config, "deploy", "v2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"deploy d-\S+ to v2 started \(3 nodes\)", out)
    step_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(step_lines) == len(set(step_lines)) >= 3 * 4  # drain, action, verify, bake...
    assert any(line.startswith("[3/3]") for line in step_lines)
    assert "running" not in out
    assert re.search(r"SUCCEEDED \(3/3 nodes in \d+:\d\d\)", out)
    # Same version again: nothing to do.
    result = cli(config, "deploy", "v2")
    assert result.returncode == 0 and "every node already runs v2" in result.stdout

    # On a terminal: the live view, in colour, with n/N and the elapsed time.
    result = cli(config, "deploy", "v3", tty=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b[" in result.stdout
    assert "3/3 nodes" in result.stdout and "elapsed" in result.stdout
    assert "NODE" in result.stdout and "node-3" in result.stdout

    # Started without following, then watched: re-attaches and follows to the end. In
    # between, the view of it half way, as the README shows it.
    result = cli(config, "deploy", "v4", "--no-follow")
    assert result.returncode == 0, result.stderr
    record = mid_deploy(ports[1])
    console = Console(record=True, width=110, force_terminal=True, color_system="truecolor")
    console.print(view(record, record["created"] + progress(record, time.time())["elapsed"]))
    text = console.export_text(clear=False)
    assert re.search(r"to v4\s+RUNNING\s+[12]/3 nodes\s+elapsed \d+:\d\d\s+ETA \d+:\d\d",
                     text), text
    assert re.search(r"node-1\s+done\s+v4\s+ok", text), text
    shot = os.environ.get("HAGW_DOCS_DEPLOY_VIEW")  # e.g. docs/deploy-view.svg
    if shot:
        console.save_svg(shot, title="hagw deploy v4")
    result = cli(config, "deploy", "status", "--watch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCEEDED (3/3 nodes" in result.stdout

    # Ctrl-C detaches; the deploy goes on.
    env = {**os.environ}
    watcher = subprocess.Popen([sys.executable, "-m", "gateway", "deploy", "v5", "-c",
                                str(config)], stdout=subprocess.PIPE, text=True, env=env)
    assert watcher.stdout is not None
    for line in watcher.stdout:
        if line.startswith("[1/3]") or line.startswith("[0/3]"):
            break
    watcher.send_signal(signal.SIGINT)
    rest = watcher.stdout.read()
    assert watcher.wait(timeout=10) == 130
    watcher.stdout.close()
    assert "detached; the deploy goes on" in rest
    result = cli(config, "deploy", "status", "--watch")
    assert result.returncode == 0 and "to v5" in result.stdout and "SUCCEEDED" in result.stdout

    # A second demo is refused and leaves the first one alone.
    second = subprocess.run([sys.executable, "-m", "gateway", "demo", "-c", str(config)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1 and "another hagw demo" in second.stderr
    result = cli(config, "nodes", "-o", "json")
    assert result.returncode == 0
    assert [n["state"] for n in json.loads(result.stdout)["nodes"]] == ["HEALTHY"] * 3

    # Ctrl-C: the demo stops every node, those a deploy started included.
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    deadline = time.monotonic() + 10
    while any(listening(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in ports if listening(p)] == []
    assert list((tmp_path / "var/demo/run").glob("*.pid")) == []
