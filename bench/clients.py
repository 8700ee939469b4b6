"""Raw-socket HTTP/1.1 clients for the memory and streaming scenarios.

Plain blocking sockets, not an HTTP library: the memory scenario must hold ten
thousand connections with next to no client-side work, and the streaming client
must be far faster than the proxy it measures (``recv_into`` one reused buffer).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field


class ClientError(RuntimeError):
    pass


def _request(port: int, path: str, close: bool) -> bytes:
    connection = "close" if close else "keep-alive"
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: hagw-bench\r\n"
            f"Connection: {connection}\r\n\r\n").encode()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers, and whatever body bytes came with the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ClientError("the server closed the connection before a full response head")
        data += chunk
        if len(data) > 65536:
            raise ClientError("response head larger than 64 KB")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ClientError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    status, headers, body = _read_head(sock)
    if "content-length" not in headers:
        raise ClientError("response without Content-Length (chunked is not expected here)")
    left = int(headers["content-length"]) - len(body)
    while left > 0:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ClientError("the server closed the connection mid-body")
        left -= len(chunk)
    return status, headers


# -- idle keep-alive connections ---------------------------------------------------------------

@dataclass
class IdleConnections:
    """Client connections that each made one request and now sit idle in keep-alive."""

    wanted: int
    sockets: list[socket.socket] = field(default_factory=list)
    #: Why fewer than ``wanted`` were opened, if they were.
    stopped_by: str | None = None
    seconds: float = 0.0

    @property
    def opened(self) -> int:
        return len(self.sockets)

    def still_open(self) -> int:
        """How many the server has not closed (a peek that would block means open)."""
        alive = 0
        for sock in self.sockets:
            # Non-blocking: with a timeout set, recv would first wait for data.
            sock.setblocking(False)
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                alive += 1
                continue
            except OSError:
                continue
            alive += bool(data)
        return alive

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()


def open_idle(port: int, count: int, *, time_limit: float, batch: int = 100,
              path: str = "/") -> IdleConnections:
    """Open ``count`` connections, ``batch`` at a time, each answered once.

    One request per connection makes it a keep-alive connection the server has
    served (a connection that never sent a request would meet the gateway's header
    timeout instead). Batches bound the concurrency, so the gateway's upstream pool
    stays as small as it is under ordinary load and only client connections grow.
    """
    idle = IdleConnections(count)
    started = time.monotonic()
    deadline = started + time_limit
    request = _request(port, path, close=False)
    try:
        while idle.opened < count:
            if time.monotonic() > deadline:
                idle.stopped_by = f"time limit of {time_limit:g}s reached"
                break
            fresh: list[socket.socket] = []
            try:
                for _ in range(min(batch, count - idle.opened)):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    fresh.append(sock)
                    sock.sendall(request)
                for sock in fresh:
                    status, headers = _read_response(sock)
                    if status != 200:
                        raise ClientError(f"HTTP {status} on connection {idle.opened + 1}")
                    if headers.get("connection", "").lower() == "close":
                        raise ClientError("the server closes connections after one request")
                    idle.sockets.append(sock)
            except (OSError, ClientError) as exc:
                idle.stopped_by = f"{exc.__class__.__name__}: {exc}"
                for sock in fresh:
                    if sock not in idle.sockets:
                        sock.close()
                break
    except BaseException:
        idle.close()
        raise
    idle.seconds = time.monotonic() - started
    return idle


# -- streaming download ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Download:
    size: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.size / (1024 * 1024) / self.seconds


def download(port: int, path: str, *, expect: int, time_limit: float) -> Download:
    """GET ``path`` and read the whole body; the clock runs from request to last byte."""
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        deadline = started + time_limit
        sock.sendall(_request(port, path, close=True))
        status, headers, body = _read_head(sock)
        if status != 200:
            raise ClientError(f"download got HTTP {status}")
        declared = headers.get("content-length")
        if declared is not None and int(declared) != expect:
            raise ClientError(f"download declares {declared} bytes, expected {expect}")
        received = len(body)
        while received < expect:
            n = sock.recv_into(view)
            if not n:
                break
            received += n
            if time.monotonic() > deadline:
                raise ClientError(f"download exceeded its time limit of {time_limit:g}s "
                                  f"after {received} of {expect} bytes")
        seconds = time.monotonic() - started
    if received != expect:
        raise ClientError(f"download ended after {received} of {expect} bytes")
    return Download(received, seconds)
