"""A demo backend node: a small API, a ``/health`` endpoint that reports its version,
and fault injection (``POST /_fault``) for demos, tests and chaos runs.

Not part of the gateway's data plane; it is what ``hagw demo`` and the tests put
behind the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    #: "ok", "warn" or "fail": what /health reports in its JSON body...
    health: str = "ok"
    #: ...and, when set, in an X-Health-Status header instead.
    health_header: str = ""
    ready: bool = True
    #: Share of requests whose connection is cut mid-response.
    reset_rate: float = 0.0
    #: Share of requests whose connection is closed before any answer.
    drop_rate: float = 0.0
    #: Stream answers slowly: bytes per second (0 = off).
    drip_bps: int = 0


@dataclass
class NodeInfo:
    name: str
    version: str
    started: float = field(default_factory=time.time)
    requests: int = 0
    #: Writes in arrival order, for proving FIFO replay (POST /orders...).
    writes: list[dict[str, Any]] = field(default_factory=list)
    idempotency_keys: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)


INFO: web.AppKey[NodeInfo] = web.AppKey("info")


async def _apply_faults(request: web.Request) -> web.StreamResponse | None:
    faults = request.app[INFO].faults
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.error_rate and random.random() < faults.error_rate:
        return web.json_response({"error": "injected"}, status=faults.error_status)
    if faults.drop_rate and random.random() < faults.drop_rate:
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        raise ConnectionResetError("dropped by fault injection")
    if faults.reset_rate and random.random() < faults.reset_rate:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.abort()
        return response
    return None


async def hello(request: web.Request) -> web.StreamResponse:
    info = request.app[INFO]
    info.requests += 1
    fault = await _apply_faults(request)
    if fault is not None:
        return fault
    body = {"node": info.name, "version": info.version, "method": request.method,
            "path": request.path_qs}
    if info.faults.drip_bps:
        data = json.dumps(body).encode() + b"\n" + b" " * 4096
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        step = max(1, info.faults.drip_bps // 10)
        for i in range(0, len(data), step):
            await response.write(data[i:i + step])
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response
    return web.json_response(body, headers={"X-Node": info.name})


async def echo(request: web.Request) -> web.Response:
    """What the node received: method, path, headers, body size and digest."""
    info = request.app[INFO]
    info.requests += 1
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({
        "node": info.name, "version": info.version, "method": request.method,
        "path": request.path_qs, "headers": [[k, v] for k, v in request.headers.items()],
        "body_size": size, "body_sha256": digest.hexdigest(),
    })


async def download(request: web.Request) -> web.StreamResponse:
    """Streams ``size`` bytes (``?size=52428800``) in 64 KB chunks."""
    size = int(request.query.get("size", "1048576"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked") != "1":
        response.content_length = size
    await response.prepare(request)
    block = b"\xab" * 65536
    left = size
    while left > 0:
        await response.write(block[:min(left, len(block))])
        left -= len(block)
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    delay = float(request.query.get("ms", "1000")) / 1000
    await asyncio.sleep(delay)
    return web.json_response({"node": request.app[INFO].name, "slept_ms": delay * 1000})


async def write(request: web.Request) -> web.Response:
    """A write the node records in arrival order (dropping repeats by Idempotency-Key)."""
    info = request.app[INFO]
    info.requests += 1
    fault = await _apply_faults(request)
    if fault is not None:
        return fault  # type: ignore[return-value]
    body = await request.read()
    key = request.headers.get("Idempotency-Key")
    duplicate = key is not None and key in info.idempotency_keys
    if key is not None:
        info.idempotency_keys.add(key)
    if not duplicate:
        info.writes.append({"path": request.path, "key": key,
                            "body": body.decode("utf-8", "replace")})
    return web.json_response({"node": info.name, "accepted": not duplicate,
                              "duplicate": duplicate, "seq": len(info.writes)},
                             status=200 if duplicate else 201)


async def writes_log(request: web.Request) -> web.Response:
    return web.json_response(request.app[INFO].writes)


async def health(request: web.Request) -> web.Response:
    info = request.app[INFO]
    faults = info.faults
    if faults.latency_ms and request.query.get("fast") != "1":
        await asyncio.sleep(faults.latency_ms / 1000)
    body = {"status": faults.health, "version": info.version, "node": info.name}
    status = 503 if faults.health == "fail" else 200
    headers = {"X-Health-Status": faults.health_header} if faults.health_header else None
    return web.json_response(body, status=status, headers=headers)


async def ready(request: web.Request) -> web.Response:
    info = request.app[INFO]
    return web.json_response({"ready": info.faults.ready, "version": info.version},
                             status=200 if info.faults.ready else 503)


async def set_faults(request: web.Request) -> web.Response:
    info = request.app[INFO]
    data = await request.json() if request.can_read_body else {}
    current = asdict(info.faults)
    unknown = set(data) - set(current) - {"version"}
    if unknown:
        return web.json_response({"error": f"unknown fault keys {sorted(unknown)}"}, status=400)
    if "version" in data:
        info.version = str(data.pop("version"))
    current.update(data)
    info.faults = Faults(**current)
    return web.json_response({"faults": asdict(info.faults), "version": info.version})


async def stats(request: web.Request) -> web.Response:
    info = request.app[INFO]
    return web.json_response({"node": info.name, "version": info.version,
                              "requests": info.requests, "writes": len(info.writes),
                              "pid": os.getpid()})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    name = request.app[INFO].name
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str(f"{name}: {msg.data}")
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def build_backend(name: str, version: str = "v1") -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[INFO] = NodeInfo(name, version)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/_fault", set_faults)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_writes", writes_log)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/upload", echo)
    app.router.add_get("/download", download)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", websocket)
    app.router.add_route("POST", "/orders", write)
    app.router.add_route("POST", "/withdrawals", write)
    app.router.add_route("POST", "/withdrawals/{tail:.*}", write)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def serve_backend(name: str, host: str, port: int, version: str, health: str = "ok",
                        stop: asyncio.Event | None = None, pidfile: Path | None = None) -> None:
    """Run one demo node until ``stop`` is set or SIGTERM/SIGINT (or forever).

    On SIGTERM it stops listening, lets in-flight requests finish, then exits, as a
    well-behaved service does when a deploy replaces it.
    """
    app = build_backend(name, version)
    app[INFO].faults.health = health
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    if pidfile is not None:
        # Only once the port is ours: a node that could not listen must not take the
        # pidfile of the one that does (a second demo would stop the first one's nodes).
        claim_pidfile(pidfile)
    print(f"demo node {name} {version} on http://{host}:{bound}", flush=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if pidfile is not None:
            release_pidfile(pidfile)


def node_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``hagw node`` (one demo backend node)."""
    parser.add_argument("--name", default="node-1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9601)
    parser.add_argument("--version", default="v1")
    parser.add_argument("--health", choices=["ok", "warn", "fail"], default="ok")
    parser.add_argument("--pidfile")


def run_node(args: argparse.Namespace) -> int:
    asyncio.run(serve_backend(args.name, args.host, args.port, args.version, args.health,
                              pidfile=Path(args.pidfile) if args.pidfile else None))
    return 0


def node_main(argv: list[str]) -> int:
    """``python -m gateway node ...`` without the rest of the CLI (see gateway.__main__)."""
    parser = argparse.ArgumentParser(prog="hagw node", description="run one demo backend node")
    node_arguments(parser)
    return run_node(parser.parse_args(argv))


def claim_pidfile(pidfile: Path) -> None:
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pidfile)


def release_pidfile(pidfile: Path) -> None:
    """Remove the pidfile if it is still ours (a redeploy may have written its own)."""
    with contextlib.suppress(OSError):
        if pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()
