"""Reload, graceful shutdown, slow clients and WebSockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.app.runtime import Gateway
from gateway.node import NodeState
from tests.conftest import auth, config_dict, make_config, sample, wait_for


async def test_reload_adds_and_removes_nodes_and_refuses_bad_configs(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    nodes = await backends(3)
    path = tmp_path / "gateway.yaml"
    data = config_dict([nodes[0].url, nodes[1].url], tmp_path / "state")
    path.write_text(yaml.safe_dump(data))
    gw = await gateway([nodes[0].url, nodes[1].url], config_path=str(path))
    slow = asyncio.create_task(http.get(f"{gw.traffic_url}/slow?ms=600"))
    node1 = gw.cluster.get("node-1")
    await wait_for(lambda: node1.in_flight == 1)

    # A bad config is refused and the running one keeps serving.
    path.write_text(yaml.safe_dump({**data, "timeouts": {"connect": "soon"}}))
    async with http.post(f"{gw.admin_url}/reload", headers=auth()) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert "timeouts.connect: expected a duration" in body["message"]
    assert sample(gw, "hagw_config_reload_total", result="failure") == 1
    async with http.get(f"{gw.traffic_url}/x") as resp:
        assert resp.status == 200

    # Remove node-1 (with a request in flight), add node-3.
    data["nodes"] = [{"name": "node-2", "url": nodes[1].url},
                     {"name": "node-3", "url": nodes[2].url}]
    path.write_text(yaml.safe_dump(data))
    async with http.post(f"{gw.admin_url}/reload", headers=auth()) as resp:
        assert resp.status == 200
    assert node1.removed and node1.state is NodeState.DRAINING
    response = await slow
    assert response.status == 200 and (await response.json())["node"] == "node-1"
    await wait_for(lambda: all(n is not node1 for n in gw.cluster.nodes.values()))
    stopped = gw.uptime.totals()["node-1"]
    await asyncio.sleep(0.05)
    assert gw.uptime.totals()["node-1"] == stopped  # a removed node's counters stop
    node3 = gw.cluster.get("node-3")
    await wait_for(lambda: node3.serving)
    seen = set()
    for _ in range(8):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            seen.add((await resp.json())["node"])
    assert seen == {"node-2", "node-3"}
    assert sample(gw, "hagw_config_reload_total", result="success") == 1


async def test_sighup_style_reload_keeps_the_old_config(backends: Any, gateway: Any,
                                                        tmp_path: Path) -> None:
    nodes = await backends(1)
    path = tmp_path / "g.yaml"
    path.write_text("nodes: [\n")
    gw = await gateway([nodes[0].url], config_path=str(path))
    gw._reload_from_signal()
    assert gw.config.nodes[0].url.port == nodes[0].port
    assert [e.kind for e in gw.events.since(kind="config")] == ["config.reload_failed"]


async def test_graceful_shutdown_steps(backends: Any, http: aiohttp.ClientSession,
                                       tmp_path: Path) -> None:
    nodes = await backends(1)
    config = make_config([nodes[0].url], tmp_path,
                         shutdown={"grace": "300ms", "drain_timeout": "5s"})
    gw = Gateway(config)
    await gw.start()
    slow = asyncio.create_task(http.get(f"{gw.traffic_url}/slow?ms=800"))
    await wait_for(lambda: gw.cluster.get("node-1").in_flight == 1)
    stopping = asyncio.create_task(gw.stop())
    await wait_for(lambda: not gw.ready)
    async with http.get(f"{gw.admin_url}/readyz") as resp:
        assert resp.status == 503  # not ready first, while still serving
    async with http.get(f"{gw.traffic_url}/x") as resp:
        assert resp.status == 200  # still accepting during the grace period
    response = await slow
    assert response.status == 200  # the in-flight request finished
    await stopping
    try:
        async with http.get(f"{gw.traffic_url}/x", timeout=aiohttp.ClientTimeout(total=2)):
            raise AssertionError("still accepting after shutdown")
    except aiohttp.ClientConnectionError:
        pass


async def test_slow_header_clients_are_cut_off(backends: Any, gateway: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], limits={"client_header_timeout": "300ms"})
    host, port = gw.traffic_address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never finish the headers
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout=3)
    assert data.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 2
    writer.close()
    # A connection that sends nothing at all is cut too.
    reader, writer = await asyncio.open_connection(host, port)
    answer = await asyncio.wait_for(reader.read(), timeout=3)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    writer.close()
    # Normal keep-alive clients are not affected.
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(2):
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        await asyncio.sleep(0.4)  # idle between requests is keep-alive, not slowloris
    writer.close()


async def test_websockets_are_proxied_and_closed_with_1001_on_drain(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], shutdown={"grace": "100ms"})
    async with http.ws_connect(f"{gw.traffic_url}/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "node-1: hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_bytes()) == b"\x00\x01"
        await gw.drains.drain(gw.cluster.get("node-1"), "maintenance")
        msg = await asyncio.wait_for(ws.receive(), timeout=3)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1001
