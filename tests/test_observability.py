"""Logs, traces and metrics as an operator reads them (issue 18): JSON access logs parsed
line by line, W3C trace context continued and started, process metrics and no *_created
series on /metrics."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest

from gateway.trace import continue_or_start, parse_traceparent

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_rules() -> None:
    assert parse_traceparent(CALLER) == ("4bf92f3577b34da6a3ce929d0e0e4736",
                                         "00f067aa0ba902b7", "01")
    for bad in ("", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"):
        assert parse_traceparent(bad) is None, bad
    # A later version may carry more fields; the first four are read.
    assert parse_traceparent(CALLER.replace("00-", "01-", 1) + "-more") is not None
    started = continue_or_start("garbage", "vendor=1")
    assert started.parent_id is None and started.state is None  # tracestate dropped too
    assert parse_traceparent(started.traceparent) is not None


async def test_trace_context_reaches_the_node(backends: Any, gateway: Any,
                                              http: aiohttp.ClientSession) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url])

    async def echoed(headers: dict[str, str]) -> tuple[dict[str, str], aiohttp.ClientResponse]:
        async with http.get(f"{gw.traffic_url}/echo", headers=headers) as resp:
            assert resp.status == 200
            body = await resp.json()
        return {k.lower(): v for k, v in body["headers"]}, resp

    seen, resp = await echoed({"traceparent": CALLER, "tracestate": "rojo=00f067aa0ba902b7"})
    trace_id, parent_id, flags = parse_traceparent(seen["traceparent"])  # type: ignore[misc]
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and flags == "01"
    assert parent_id != "00f067aa0ba902b7"  # the gateway's hop is a span of its own
    assert seen["tracestate"] == "rojo=00f067aa0ba902b7"
    assert resp.headers["X-Request-Id"] == trace_id  # the request id is the trace id
    seen, resp = await echoed({})
    started = parse_traceparent(seen["traceparent"])
    assert started is not None and started[2] == "01"
    assert resp.headers["X-Request-Id"] == started[0]
    seen, resp = await echoed({"X-Request-Id": "mine-1"})
    assert resp.headers["X-Request-Id"] == "mine-1" and "traceparent" in seen


async def test_json_access_log(backends: Any, gateway: Any, http: aiohttp.ClientSession,
                               caplog: pytest.LogCaptureFixture) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url], access_log=True, access_log_format="json")
    caplog.set_level(logging.INFO, logger="hagw.access")
    async with http.get(f"{gw.traffic_url}/echo?x=1", headers={
            "traceparent": CALLER, "User-Agent": "probe/1"}) as resp:
        assert resp.status == 200
        await resp.read()
        length = int(resp.headers["Content-Length"])
    async with http.get(f"{gw.traffic_url}/nothing-here") as resp:
        await resp.read()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hagw.access"]
    assert len(lines) == 2
    first = lines[0]
    assert first["method"] == "GET" and first["path"] == "/echo?x=1"
    assert first["status"] == 200 and first["bytes"] > length  # headers included
    assert first["upstream_node"] == "node-1" and first["upstream_ms"] >= 0
    assert first["duration_ms"] >= first["upstream_ms"]
    assert first["trace_id"] == first["request_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["client"] == "127.0.0.1" and first["user_agent"] == "probe/1"
    assert first["time"].endswith("Z") and first["attempts"] >= 1
    assert lines[1]["path"] == "/nothing-here" and lines[1]["request_id"] != first["request_id"]


async def test_combined_access_log(backends: Any, gateway: Any, http: aiohttp.ClientSession,
                                   caplog: pytest.LogCaptureFixture) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url], access_log=True)
    caplog.set_level(logging.INFO, logger="hagw.access")
    async with http.get(f"{gw.traffic_url}/echo", headers={"X-Request-Id": "r-1"}) as resp:
        await resp.read()
    [line] = [r.getMessage() for r in caplog.records if r.name == "hagw.access"]
    assert line.startswith('127.0.0.1 - - [') and '"GET /echo HTTP/1.1" 200 ' in line
    assert "rid=r-1" in line and "upstream=node-1 " in line


async def test_process_metrics_and_no_created_series(backends: Any, gateway: Any,
                                                     http: aiohttp.ClientSession) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url])
    async with http.get(f"{gw.traffic_url}/echo") as resp:
        await resp.read()
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_start_time_seconds", "python_info",
                 "python_gc_collections_total"):
        assert name in names, name
    assert not [n for n in names if n.endswith("_created")]


async def test_a_websocket_upgrade_carries_the_trace_and_its_id(
        serve: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    """An upgrade is traced as any request: the node gets the gateway's traceparent, and
    the request id is the trace id."""
    from aiohttp import web
    seen: list[dict[str, str]] = []

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.close()
        return socket

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", health)
    app.router.add_get("/ws", ws)
    gw = await gateway([await serve(app)])
    async with http.ws_connect(f"{gw.traffic_url}/ws", headers={"traceparent": CALLER}) as s:
        await s.receive()
    [headers] = seen
    trace_id, parent_id, _flags = parse_traceparent(headers["traceparent"])  # type: ignore[misc]
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert parent_id != "00f067aa0ba902b7"
    assert headers["x-request-id"] == trace_id
