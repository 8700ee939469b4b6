"""How worker processes should share the traffic port, measured: one socket opened by the
parent and inherited by every worker, or a socket per worker with ``SO_REUSEPORT``.

Two workers (``python -m bench.listen_models --serve ...``: a minimal HTTP/1.1 responder
that spends ``--cost-ms`` of CPU per request) take a new connection per request at a rate
near their capacity. A second in, one worker hangs (SIGSTOP) for half a second, then dies
(SIGKILL) and is replaced 200 ms later, as hagw's supervisor does. Counted per model:
connections that failed (refused or reset), and how evenly the two workers shared the
requests before. With one inherited socket the hung worker accepts nothing, so the other
takes every new connection; with SO_REUSEPORT the kernel keeps queueing a share of them on
the hung worker's own socket, and they die with it. ``net.ipv4.tcp_migrate_req`` (which
would move a dead listener's queue to the others under SO_REUSEPORT) is reported as found;
it is off by default.

    python -m bench.listen_models               # both models, about 10 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.processes import free_port
from bench.report import Row

SCENARIO = "listen-models"
MODELS = ("inherited", "reuseport")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nX-Worker: %s\r\n\r\nok"


# -- the worker --------------------------------------------------------------------------------

class _Responder(asyncio.Protocol):
    def __init__(self, name: bytes, cost: float) -> None:
        self.name = name
        self.cost = cost
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.transport is not None:
            until = time.perf_counter() + self.cost
            while time.perf_counter() < until:  # the work a request costs, on the CPU
                pass
            self.transport.write(RESPONSE % self.name)
            self.transport.close()


async def _serve(name: str, fd: int | None, port: int | None, cost: float) -> None:
    loop = asyncio.get_running_loop()
    if fd is not None:
        sock = socket.socket(fileno=fd)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port or 0))
        sock.listen(1024)
    sock.setblocking(False)
    connecting: set[asyncio.Task[object]] = set()

    def accept_one() -> None:  # one per wake-up, as hagw's workers accept
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        conn.setblocking(False)
        task = loop.create_task(loop.connect_accepted_socket(
            lambda: _Responder(name.encode(), cost), conn))
        connecting.add(task)
        task.add_done_callback(connecting.discard)

    loop.add_reader(sock.fileno(), accept_one)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    loop.remove_reader(sock.fileno())


# -- the driver --------------------------------------------------------------------------------

@dataclass
class ModelResult:
    model: str
    attempted: int
    failed: int
    served: Counter[str]
    #: Share of the requests the busier worker took before the hang (0.5 = even).
    busier_share: float


def _spawn(name: str, model: str, port: int, sock: socket.socket | None,
           cost_ms: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench.listen_models", "--serve", name,
            "--cost-ms", str(cost_ms)]
    fds: tuple[int, ...] = ()
    if model == "inherited":
        assert sock is not None
        argv += ["--fd", str(sock.fileno())]
        fds = (sock.fileno(),)
    else:
        argv += ["--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, pass_fds=fds)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


async def _one(port: int, served: Counter[str], before_kill: Counter[str],
               killed: asyncio.Event) -> bool:
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return False
    if not data.startswith(b"HTTP/1.1 200"):
        return False
    name = data.split(b"X-Worker: ", 1)[1].split(b"\r\n", 1)[0].decode()
    served[name] += 1
    if not killed.is_set():
        before_kill[name] += 1
    return True


async def _drive(port: int, rate: float, seconds: float,
                 kill: asyncio.Future[None], killed: asyncio.Event) -> tuple[int, int,
                                                                             Counter[str],
                                                                             Counter[str]]:
    served: Counter[str] = Counter()
    before_kill: Counter[str] = Counter()
    tasks: list[asyncio.Task[bool]] = []
    began = time.monotonic()
    total = int(rate * seconds)
    for i in range(total):
        tasks.append(asyncio.create_task(_one(port, served, before_kill, killed)))
        if i == int(rate) and not kill.done():
            kill.set_result(None)
        await asyncio.sleep(max(0.0, began + (i + 1) / rate - time.monotonic()))
    results = await asyncio.gather(*tasks)
    return total, results.count(False), served, before_kill


async def _measure(model: str, rate: float, seconds: float, cost_ms: float) -> ModelResult:
    port = free_port()
    listener: socket.socket | None = None
    if model == "inherited":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        listener.set_inheritable(True)
    workers = {name: _spawn(name, model, port, listener, cost_ms) for name in ("a", "b")}
    kill: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    killed = asyncio.Event()

    async def kill_and_replace() -> None:
        await kill
        workers["a"].send_signal(signal.SIGSTOP)
        killed.set()
        await asyncio.sleep(0.5)
        workers["a"].kill()
        await asyncio.sleep(0.2)
        workers["a2"] = await asyncio.to_thread(_spawn, "a2", model, port, listener, cost_ms)

    killer = asyncio.create_task(kill_and_replace())
    try:
        total, failed, served, before_kill = await _drive(port, rate, seconds, kill, killed)
        await killer
    finally:
        for proc in workers.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        if listener is not None:
            listener.close()
    counted = sum(before_kill.values()) or 1
    return ModelResult(model, total, failed, served, max(before_kill.values(),
                                                         default=0) / counted)


def migrate_req() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_migrate_req").read_text().strip()
    except OSError:
        return "unknown"


def listen_models(rate: float = 600, seconds: float = 3.0, cost_ms: float = 0.8) -> list[Row]:
    """Both models, one after the other, as rows for the report."""
    rows: list[Row] = []
    note = (f"{rate:g} new connections/s for {seconds:g}s, {cost_ms:g} ms CPU each, "
            f"one of 2 workers hung at 1s, killed at 1.5s, replaced 200 ms later; "
            f"tcp_migrate_req={migrate_req()}")
    for model in MODELS:
        result = asyncio.run(_measure(model, rate, seconds, cost_ms))
        rows += [Row(model, SCENARIO, "failed connections", result.failed, "conns",
                     note=f"of {result.attempted}; {note}"),
                 Row(model, SCENARIO, "busier worker's share", result.busier_share * 100, "%",
                     note="of the requests before the hang (50% = even)")]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.listen_models")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cost-ms", type=float, default=0.8)
    parser.add_argument("--rate", type=float, default=600)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.fd, args.port, args.cost_ms / 1000))
        return 0
    for row in listen_models(args.rate, args.seconds, args.cost_ms):
        print(f"{row.target:10} {row.metric:24} {row.value:8.1f} {row.unit:6} {row.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
