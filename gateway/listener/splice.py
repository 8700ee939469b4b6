"""A large response body moved from the node's socket to the client's inside the kernel:
splice(2) through a pipe, on Linux, with no copy through Python (nginx has no splice,
HAProxy splices the same way with ``option splice-response``).

Used by the responder for a body with a Content-Length of at least ``SPLICE_MIN`` still
to come, when neither connection is TLS and the client has read everything sent so far.
The node's connection stops being read by its transport and is closed afterwards (its
parser never saw the rest of the body, so it cannot be reused); the client's stays open.

Flow control is the kernel's: the pipe fills only as fast as the client empties it. A
node silent for ``node_idle`` seconds, or a client that reads nothing for
``client_idle``, ends it as the streaming loop would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable

from gateway.upstream import UpstreamReset

#: Bodies shorter than this are not worth a pipe and four more system calls.
SPLICE_MIN = 1024 * 1024
#: The pipe's size (Linux allows unprivileged processes up to 1 MiB by default).
PIPE_SIZE = 1024 * 1024
AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0


class ClientNotReading(ConnectionResetError):
    """The client read nothing for ``client_idle`` seconds."""


async def relay(src: int, dst: int, count: int, *, node_idle: float, client_idle: float,
                heard: Callable[[], None]) -> None:
    """Move ``count`` bytes from socket ``src`` (the node's) to socket ``dst`` (the
    client's). Raises UpstreamReset if the node closes first, TimeoutError if it is silent
    for ``node_idle``, ConnectionResetError if the client goes away or reads nothing for
    ``client_idle``. ``heard`` is called whenever the node sent something."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # Copies of the sockets' descriptors: the loop watches these, not the transports'.
    node, client = os.dup(src), os.dup(dst)
    waiter: asyncio.Future[None] | None = None

    def ready() -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    try:
        with contextlib.suppress(OSError):  # the default size (64 KiB) does, in more steps
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        left, in_pipe = count, 0
        while left or in_pipe:
            moved = False
            if left:
                try:
                    n = os.splice(node, write_end, left, flags=_FLAGS)
                except BlockingIOError:
                    n = -1  # the node has nothing more yet, or the pipe is full
                except OSError as exc:
                    raise UpstreamReset(f"the node's connection failed mid-response: "
                                        f"{exc.strerror or exc}", sent=True, reused=False,
                                        answered=True) from None
                if n == 0:
                    raise UpstreamReset("the node closed the connection mid-response",
                                        sent=True, reused=False, answered=True)
                if n > 0:
                    left -= n
                    in_pipe += n
                    moved = True
                    heard()
            if in_pipe:
                try:
                    n = os.splice(read_end, client, in_pipe, flags=_FLAGS)
                except BlockingIOError:
                    n = 0  # the client's socket buffer is full
                except OSError as exc:
                    raise ConnectionResetError(f"the client went away: "
                                               f"{exc.strerror or exc}") from None
                if n > 0:
                    in_pipe -= n
                    moved = True
            if moved:
                continue
            # Nothing moved. With bytes in the pipe only the client can unblock it (the
            # pipe may be full); with an empty pipe only the node can.
            waiter = loop.create_future()
            if in_pipe:
                loop.add_writer(client, ready)
                timeout = client_idle
            else:
                loop.add_reader(node, ready)
                timeout = node_idle
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                if in_pipe:
                    raise ClientNotReading(f"the client read nothing for {client_idle:g}s") \
                        from None
                raise TimeoutError(f"the node sent nothing for {node_idle:g}s") from None
            finally:
                waiter = None
                if in_pipe:
                    loop.remove_writer(client)
                else:
                    loop.remove_reader(node)
    finally:
        for fd in (node, client, read_end, write_end):
            os.close(fd)
