"""Handing listening sockets from one supervisor to the next, over a Unix socket with
SCM_RIGHTS, as Envoy's hot restart and haproxy's ``expose-fd listeners`` do.

Every supervisor listens on ``<state_dir>/run/control.sock``. Two things arrive there:

- **an upgrade** (``takeover``): a new supervisor (new code) asks the running one for its
  traffic and admin sockets. The old one stops its control plane (the state is on disk),
  sends the sockets, and keeps its workers serving until the new one says its own serve;
  then its workers drain and it exits. No socket is ever closed, so no connection is
  refused;
- **an adoption** (``orphan``): a worker whose supervisor died hands its copy of the
  traffic socket to the supervisor started after it, and then drains and exits. The
  socket lived on in the workers, so the kernel kept queueing connections meanwhile.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.store import private_dir

#: A handoff message and its sockets fit in one datagram-sized read.
_BUFSIZE = 64 * 1024
#: The workers' entry points (``python -m ...``): alone, and in a fleet (with redis).
WORKER_MODULES = ("gateway.app.worker", "gateway.app.fleet_worker")
_WORKER_ARGV = {m.encode() for m in WORKER_MODULES}
MAX_FDS = 8


def run_dir(state_dir: str | Path) -> Path:
    private_dir(state_dir)
    return private_dir(Path(state_dir) / "run")


def control_path(state_dir: str | Path) -> Path:
    return run_dir(state_dir) / "control.sock"


def workers_dir(state_dir: str | Path) -> Path:
    return private_dir(run_dir(state_dir) / "workers")


#: sun_path holds 108 bytes; deep state directories (CI temp dirs) exceed it.
_SUN_PATH_MAX = 100


@contextlib.contextmanager
def reachable(path: Path):  # type: ignore[no-untyped-def]
    """A name for ``path`` short enough to bind or connect to. A long one is reached
    through the directory's descriptor (``/proc/self/fd/N/name``), which Linux resolves
    like any path, so the socket still lives at ``path`` for every other process."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(message).encode() + b"\n"
    socket.send_fds(sock, [data], list(fds))


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, _BUFSIZE, MAX_FDS)
    if not data:
        raise ConnectionError("the other side closed the handoff socket")
    return json.loads(data.decode().split("\n", 1)[0]), list(fds)


def sockets_from(fds: list[int]) -> list[socket.socket]:
    out = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sock.set_inheritable(True)
        out.append(sock)
    return out


def connect(path: Path, timeout: float = 2.0) -> socket.socket | None:
    """A connection to the supervisor listening at ``path``, or None if none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with reachable(path) as name:
            sock.connect(name)
    except OSError:
        sock.close()
        return None
    return sock


def live_pids(directory: Path) -> dict[str, int]:
    """The workers whose pidfiles are in ``directory`` and whose processes are alive."""
    found = {}
    for pidfile in directory.glob("*.pid"):
        try:
            pid = int(pidfile.read_text())
            # Alive, and a hagw worker still: a pid the kernel gave to another process since
            # is not signalled.
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if not _WORKER_ARGV.intersection(argv) or b"--channel-fd" not in argv:
                raise ValueError(f"pid {pid} is no hagw worker")
        except (OSError, ValueError):
            pidfile.unlink(missing_ok=True)
            continue
        found[pidfile.stem] = pid
    return found


Handler = Callable[[socket.socket, dict[str, Any], list[int]], Awaitable[None]]


class ControlSocket:
    """The supervisor's end. Connections are accepted by the event loop but read in a
    thread with ``recv_fds``: no transport may buffer them, or the sockets that travel
    with the first message (SCM_RIGHTS) would be lost."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._sock: socket.socket | None = None
        self._inode = 0
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with reachable(self.path) as name:
            sock.bind(name)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            conn.setblocking(True)
            conn.settimeout(10)
            task = asyncio.ensure_future(self._handle(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: socket.socket) -> None:
        try:
            message, fds = await asyncio.to_thread(receive, conn)
            await self.handler(conn, message, fds)
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            conn.close()

    async def close(self) -> None:
        for task in [self._task, *self._handlers]:
            if task is not None:
                task.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Only our own: on an upgrade the path already names the new supervisor's socket.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()

    def __repr__(self) -> str:
        return f"<ControlSocket {self.path}>"


def signal_orphans(pids: dict[str, int]) -> None:
    """Ask orphaned workers to hand over their socket (they connect to control.sock)."""
    for pid in pids.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGUSR1)


def fd_array(socks: list[socket.socket]) -> list[int]:
    return list(array.array("i", (s.fileno() for s in socks)))
