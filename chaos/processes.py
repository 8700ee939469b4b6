"""Every process the suite starts, and the guarantee that none outlives it.

Children run in their own session (a Ctrl-C in the terminal reaches only the
driver, which then stops them in order) and get PR_SET_PDEATHSIG, so even a
driver killed with SIGKILL leaves nothing behind. Nodes that the deploy action
starts are not our children; they are adopted by pid and recognised by a marker
(the run directory) in their command line before anything is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.processes import Child, StartError, die_with_parent_hook, free_port
from gateway.app.demo.redeploy import alive as pid_alive

__all__ = ["Child", "ProcessGroup", "StartError", "cmdline", "free_port", "listening",
           "pid_alive", "until_listening"]

# Chaos kills its drivers' children hard: SIGKILL, not SIGTERM, when the driver dies.
_PREEXEC = die_with_parent_hook(signal.SIGKILL)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


class ProcessGroup:
    """Owns the children of one run (and the nodes adopted from the deploy action)."""

    def __init__(self, marker: str) -> None:
        #: Appears in the command line of every process this run may signal.
        self.marker = marker
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], log: Path,
              cwd: Path | None = None) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=cwd,
                                     start_new_session=True, preexec_fn=_PREEXEC)
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def owns(self, pid: int) -> bool:
        """Ours to signal: a child, or a process whose command line carries our marker."""
        return any(c.pid == pid for c in self.children) or self.marker in cmdline(pid)

    def signal(self, pid: int, sig: signal.Signals) -> bool:
        if not self.owns(pid):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True

    def kill_and_wait(self, pid: int, timeout: float = 10.0) -> None:
        """SIGKILL ``pid`` and wait until it is gone (reaped if it is our child)."""
        self.signal(pid, signal.SIGKILL)
        child = next((c for c in self.children if c.pid == pid), None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def reap(self) -> None:
        """Forget children that have exited (their zombies are collected)."""
        for child in list(self.children):
            if child.popen.poll() is not None:
                self.children.remove(child)

    def stop_all(self, extra_pids: Sequence[int] = ()) -> None:
        """SIGKILL every child and every adopted pid; a stopped process dies too."""
        for pid in extra_pids:
            if pid_alive(pid) and self.owns(pid):
                self.kill_and_wait(pid, timeout=5)
        for child in reversed(list(self.children)):
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5)
        self.children.clear()
        # Anything else carrying our marker: a deploy action the gateway started and then
        # lost when it was SIGKILLed, or a node such an action started.
        for pid in marked_pids(self.marker):
            self.kill_and_wait(pid, timeout=5)


def marked_pids(marker: str) -> list[int]:
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != own and marker in cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found


def listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


async def until_listening(child: Child, port: int, what: str, timeout: float) -> None:
    """Wait until ``child`` listens on 127.0.0.1:``port`` (StartError if it exits or
    does not within ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(listening, "127.0.0.1", port):
        if not child.alive():
            raise StartError(f"{what} exited:\n{child.log_tail()}")
        if loop.time() > deadline:
            raise StartError(f"{what} did not listen within {timeout:g}s")
        await asyncio.sleep(0.05)
