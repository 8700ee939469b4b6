"""The processes the suite starts: started in their own session, always stopped.

Every child is registered in a ``ProcessGroup`` that stops them all (whole process
group, SIGTERM then SIGKILL) when the run ends, whether it ended normally, with an
error or with Ctrl-C. On Linux each child also gets PR_SET_PDEATHSIG, so even a
driver killed with SIGKILL does not leave servers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_PR_SET_PDEATHSIG = 1


def die_with_parent_hook(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send ``sig`` to the child when its parent dies
    (Linux's PR_SET_PDEATHSIG); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None

    def die_with_parent() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return die_with_parent


_DIE_WITH_PARENT = die_with_parent_hook()


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class ProcessGroup:
    """Owns every long-running child of one benchmark run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd or self.workdir, env=env,
                # Own session: a terminal Ctrl-C reaches only the driver, which then
                # stops the children in order instead of racing them.
                start_new_session=True, preexec_fn=_DIE_WITH_PARENT)
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        if child in self.children:
            self.children.remove(child)
        _terminate(child.popen, timeout)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


def _terminate(popen: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the child's process group (nginx workers included), then SIGKILL."""
    if popen.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # The child leads its own session, so its pid is its process group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, sig)
        try:
            popen.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bounded(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a load generator to completion; killed at ``timeout`` or on any interruption."""
    with subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=_DIE_WITH_PARENT) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except BaseException:
            popen.kill()
            popen.wait()
            raise
    return subprocess.CompletedProcess(list(argv), popen.returncode, out, err)


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(child: Child, port: int, timeout: float = 15.0) -> None:
    """Until ``port`` accepts connections; a child that exits first fails fast."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartError(f"{child.name} exited with {child.popen.returncode}:\n"
                             f"{child.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise StartError(f"{child.name} did not listen on port {port} within {timeout:g}s:\n"
                     f"{child.log_tail()}")
