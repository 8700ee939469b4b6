"""``hagw demo-redeploy``: the demo fleet's deploy action.

It does what a real deploy script does for a process on a host: stop the old
process with SIGTERM (it finishes in-flight work and exits), start the new
version on the same port, and wait until it listens. The gateway has drained
the node before this runs and verifies it afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def pidfile(run_dir: Path, node: str) -> Path:
    return run_dir / f"{node}.pid"


def node_command(node: str, host: str, port: int, version: str, run_dir: Path,
                 health: str = "ok") -> list[str]:
    """A demo node process that writes its pid where this script (and the demo) find it."""
    return [sys.executable, "-m", "gateway", "node", "--name", node, "--host", host,
            "--port", str(port), "--version", version, "--health", health,
            "--pidfile", str(pidfile(run_dir, node))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited process whose parent has not reaped it yet is a zombie: it is gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop(pid: int, timeout: float = 10.0) -> str:
    if not alive(pid):
        return f"pid {pid} was not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid} ignored SIGTERM for {timeout:g}s: killed"
    return f"stopped pid {pid} (SIGTERM)"


def start(node: str, host: str, port: int, version: str, run_dir: Path,
          health: str = "ok") -> int:
    log = open(run_dir / f"{node}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        node_command(node, host, port, version, run_dir, health), stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc.pid


def wait_listening(host: str, port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hagw demo-redeploy")
    parser.add_argument("--run-dir", default="var/demo/run")
    parser.add_argument("--fail-health-on", action="append", default=[], metavar="NODE@VERSION",
                        help="start this node at this version with a failing /health "
                             "(to demo a rollback)")
    parser.add_argument("node")
    parser.add_argument("url")
    parser.add_argument("version")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pid_path = pidfile(run_dir, args.node)
    if pid_path.exists():
        print(stop(int(pid_path.read_text().strip())), flush=True)
    health = "fail" if f"{args.node}@{args.version}" in args.fail_health_on else "ok"
    pid = start(args.node, host, port, args.version, run_dir, health)
    if not wait_listening(host, port):
        print(f"{args.node} {args.version} (pid {pid}) did not listen on {port}", flush=True)
        return 1
    print(f"started {args.node} {args.version} as pid {pid} on {host}:{port}", flush=True)
    return 0
