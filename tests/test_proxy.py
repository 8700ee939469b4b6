"""The data plane against real aiohttp backends on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import socket
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.node import NodeState
from tests.conftest import auth, sample, wait_for


def dead_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET",
                **kwargs: Any) -> tuple[int, dict[str, Any] | str]:
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@pytest.fixture(params=["round_robin", "least_request"])
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_spreads_requests_over_every_node(backends: Any, gateway: Any, http: Any,
                                                policy: str) -> None:
    nodes = await backends(3)
    gw = await gateway([b.url for b in nodes], balancer=policy)
    seen: Counter[str] = Counter()
    for _ in range(60):
        status, body = await fetch(http, f"{gw.traffic_url}/hello")
        assert status == 200
        seen[body["node"]] += 1
    assert set(seen) == {"node-1", "node-2", "node-3"}
    if policy == "round_robin":
        assert set(seen.values()) == {20}


async def test_concurrent_least_request_avoids_the_slow_node(backends: Any, gateway: Any,
                                                             http: Any) -> None:
    nodes = await backends(2)
    nodes[0].fault(latency_ms=200)
    gw = await gateway([b.url for b in nodes], balancer="least_request",
                       warning={"min_requests": 1000})
    seen: Counter[str] = Counter()

    async def worker() -> None:
        for _ in range(10):
            _, body = await fetch(http, f"{gw.traffic_url}/x")
            seen[body["node"]] += 1

    await asyncio.gather(*(worker() for _ in range(4)))
    # Requests pile up on the slow node, so the fast one takes most of the rest.
    assert seen["node-2"] > 2 * seen["node-1"]


async def test_streams_50mb_both_ways_without_buffering(backends: Any, gateway: Any,
                                                        http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], limits={"max_body": "100MB"})
    size = 50 * 1024 * 1024
    chunk = b"\x5a" * (256 * 1024)
    expected = hashlib.sha256()
    for _ in range(size // len(chunk)):
        expected.update(chunk)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        status, echoed = await fetch(http, f"{gw.traffic_url}/upload", "POST", data=body(),
                                     headers={"Content-Length": str(size)})
        _, peak_up = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        received = 0
        async with http.get(f"{gw.traffic_url}/download?size={size}") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(size)
            async for part in resp.content.iter_chunked(256 * 1024):
                received += len(part)
        _, peak_down = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200
    assert echoed["body_size"] == size and echoed["body_sha256"] == expected.hexdigest()
    assert received == size
    # Client, gateway and backend share this process: none of them held the body.
    assert peak_up < 8 * 1024 * 1024, peak_up
    assert peak_down < 8 * 1024 * 1024, peak_down


async def test_a_long_body_is_spliced_byte_for_byte_and_the_client_connection_stays(
        serve: Any, gateway: Any, http: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past splice.SPLICE_MIN the rest of a body with a length goes socket to socket in the
    kernel (gateway.listener.splice): every byte in order, the client's keep-alive
    connection usable afterwards, the node's connection closed (never reused)."""
    from aiohttp import web

    from gateway.listener import splice

    content = random.Random(7).randbytes(9 * 1024 * 1024 + 123)
    calls: list[int] = []
    relay = splice.relay

    async def counted(src: int, dst: int, count: int, **kw: Any) -> None:
        calls.append(count)
        await relay(src, dst, count, **kw)

    monkeypatch.setattr(splice, "relay", counted)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def blob(request: web.Request) -> web.StreamResponse:
        cut = int(request.query.get("cut", len(content)))
        response = web.StreamResponse(headers={"Content-Length": str(len(content))})
        await response.prepare(request)
        for at in range(0, cut, 65536):
            await response.write(content[at:min(cut, at + 65536)])
        if cut < len(content):
            assert request.transport is not None
            request.transport.close()  # the node dies mid-body
            return response
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/blob", blob)
    gw = await gateway([await serve(app)], outlier_detection={"enabled": False})
    connector = aiohttp.TCPConnector(limit=1)  # one client connection for every request
    async with aiohttp.ClientSession(connector=connector) as client:
        for _ in range(2):
            async with client.get(f"{gw.traffic_url}/blob") as resp:
                assert resp.status == 200
                got = await resp.read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(content).digest()
        # Spliced after the first parts went the usual way.
        assert len(calls) == 2 and all(splice.SPLICE_MIN <= c < len(content) for c in calls)
        # The node's connections were closed after each splice; the client's was reused.
        assert gw.pools[gw.cluster.get("node-1")].idle == 0
        async with client.get(f"{gw.traffic_url}/blob?cut=4000000") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    async with http.get(f"{gw.traffic_url}/blob") as resp:  # and the gateway goes on
        assert len(await resp.read()) == len(content)
    assert len(calls) == 4


async def test_chunked_request_and_response_bodies(backends: Any, gateway: Any,
                                                   http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])

    async def body() -> AsyncIterator[bytes]:
        for i in range(50):
            yield f"part {i};".encode() * 500

    status, echoed = await fetch(http, f"{gw.traffic_url}/upload", "POST", data=body())
    assert status == 200 and echoed["body_size"] == sum(len(f"part {i};") * 500
                                                        for i in range(50))
    async with http.get(f"{gw.traffic_url}/download?size=300000&chunked=1") as resp:
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert len(await resp.read()) == 300000


async def test_killed_node_mid_traffic_is_invisible_to_idempotent_clients(
        node_processes: Any, gateway: Any, http: Any) -> None:
    procs = node_processes(3)
    gw = await gateway([p.url for p in procs], health={"interval": "2s"})
    failures: list[int] = []
    done = 0

    async def client() -> None:
        nonlocal done
        for _ in range(60):
            status, _ = await fetch(http, f"{gw.traffic_url}/item")
            if status != 200:
                failures.append(status)
            done += 1

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await wait_for(lambda: done >= 80)
    procs[1].kill()
    await asyncio.gather(*clients)
    assert done == 480
    assert failures == []
    assert sample(gw, "hagw_upstream_retries_total", node="node-2", reason="connect-failure") \
        + sample(gw, "hagw_upstream_retries_total", node="node-2", reason="reset") > 0


async def test_post_that_never_reached_a_node_is_retried(backends: Any, gateway: Any,
                                                         http: Any) -> None:
    nodes = await backends(2)
    gw = await gateway([dead_url(), nodes[0].url, nodes[1].url],
                       health={"enabled": False}, outlier_detection={"enabled": False})
    for i in range(9):
        status, body = await fetch(http, f"{gw.traffic_url}/orders", "POST", json={"n": i})
        assert status == 201, body
    assert sample(gw, "hagw_upstream_retries_total", node="node-1", reason="connect-failure") >= 3
    assert len(nodes[0].info.writes) + len(nodes[1].info.writes) == 9  # each exactly once


async def test_post_that_reached_a_node_is_not_retried_without_an_idempotency_key(
        backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(2)
    nodes[0].fault(drop_rate=1.0)  # reads the request, then closes without an answer
    gw = await gateway([b.url for b in nodes], health={"enabled": False},
                       outlier_detection={"enabled": False})
    status, body = await fetch(http, f"{gw.traffic_url}/orders", "POST", json={"n": 1})
    assert status == 502 and "closed the connection" in body["message"]
    assert len(nodes[0].info.writes) == 0 and len(nodes[1].info.writes) == 0
    # The same failure with an Idempotency-Key is retried on the other node.
    status, body = await fetch(http, f"{gw.traffic_url}/orders", "POST", json={"n": 2},
                               headers={"Idempotency-Key": "order-2"})
    status, body = (status, body) if body["node"] == "node-2" else await fetch(
        http, f"{gw.traffic_url}/orders", "POST", json={"n": 2},
        headers={"Idempotency-Key": "order-2"})
    assert status == 201 and body["node"] == "node-2"
    # GET is idempotent: retried.
    for _ in range(4):
        status, _ = await fetch(http, f"{gw.traffic_url}/item")
        assert status == 200


async def test_retryable_status_is_retried_and_the_last_answer_kept(backends: Any,
                                                                     gateway: Any,
                                                                     http: Any) -> None:
    nodes = await backends(2)
    nodes[0].fault(error_rate=1.0, error_status=503)
    gw = await gateway([b.url for b in nodes], health={"enabled": False},
                       outlier_detection={"enabled": False})
    for _ in range(6):
        status, body = await fetch(http, f"{gw.traffic_url}/item")
        assert status == 200 and body["node"] == "node-2"
    nodes[1].fault(error_rate=1.0, error_status=503)
    status, body = await fetch(http, f"{gw.traffic_url}/item")
    assert status == 503 and body == {"error": "injected"}  # the node's own answer


async def test_drain_lets_in_flight_requests_finish(backends: Any, gateway: Any,
                                                    http: Any) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes])
    slow = asyncio.create_task(fetch(http, f"{gw.traffic_url}/slow?ms=400"))
    node1 = gw.cluster.get("node-1")
    await wait_for(lambda: node1.in_flight == 1)
    async with http.post(f"{gw.admin_url}/nodes/node-1/drain", headers=auth(),
                         json={"reason": "kernel upgrade"}) as resp:
        assert resp.status == 200
        snap = await resp.json()
    assert snap["state"] == "DRAINING" and snap["in_flight"] == 1
    for _ in range(10):
        status, body = await fetch(http, f"{gw.traffic_url}/x")
        assert status == 200 and body["node"] == "node-2"
    status, body = await slow
    assert status == 200 and body["node"] == "node-1"
    async with http.get(f"{gw.admin_url}/nodes/node-1") as resp:
        assert (await resp.json())["in_flight"] == 0
    async with http.post(f"{gw.admin_url}/nodes/node-1/undrain", headers=auth()) as resp:
        assert (await resp.json())["state"] == "HEALTHY"


async def test_drain_survives_a_restart(backends: Any, gateway: Any, http: Any,
                                        tmp_path: Any) -> None:
    from gateway.app.runtime import Gateway
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes])
    await gw.drains.drain(gw.cluster.get("node-2"), "disk replacement")
    await gw.stop()
    again = Gateway(gw.config)
    async with again:
        node2 = again.cluster.get("node-2")
        assert node2.state is NodeState.DRAINING
        assert "disk replacement" in node2.reason


async def test_ejection_and_readmission(backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(3)
    nodes[0].fault(error_rate=1.0, error_status=502)
    gw = await gateway([b.url for b in nodes], health={"enabled": False},
                       outlier_detection={"consecutive_failures": 3,
                                          "base_ejection_time": "300ms"})
    node1 = gw.cluster.get("node-1")
    for _ in range(12):
        status, _ = await fetch(http, f"{gw.traffic_url}/x")
        assert status == 200  # the 502s were retried elsewhere
    assert node1.state is NodeState.EJECTED
    assert sample(gw, "hagw_upstream_ejections_total", node="node-1") == 1
    nodes[0].fault(error_rate=0.0)
    await wait_for(lambda: node1.state is NodeState.HEALTHY, timeout=3)
    seen = Counter([(await fetch(http, f"{gw.traffic_url}/x"))[1]["node"] for _ in range(9)])
    assert seen["node-1"] == 3


async def test_panic_mode_keeps_traffic_flowing(backends: Any, gateway: Any,
                                                http: Any) -> None:
    nodes = await backends(3)
    for b in nodes:
        b.fault(health="fail")  # probes fail, yet the nodes still serve
    gw = await gateway([b.url for b in nodes])
    await wait_for(lambda: all(n.state is NodeState.UNHEALTHY for n in gw.cluster))
    assert gw.cluster.panic
    status, _ = await fetch(http, f"{gw.traffic_url}/x")
    assert status == 200
    gw2 = await gateway([b.url for b in nodes], panic_threshold=0)
    await wait_for(lambda: all(n.state is NodeState.UNHEALTHY for n in gw2.cluster))
    status, body = await fetch(http, f"{gw2.traffic_url}/x")
    assert status == 503 and body["error"] == "unavailable"


async def test_header_hygiene(backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    status, body = await fetch(http, f"{gw.traffic_url}/echo", headers={
        "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic x", "TE": "trailers", "X-Forwarded-For": "203.0.113.9",
        "Via": "1.0 edge", "X-Custom": "kept", "Upgrade": "h2c"})
    assert status == 200
    received = {k.lower(): v for k, v in body["headers"]}
    for hop in ("x-hop", "keep-alive", "proxy-authorization", "te", "upgrade"):
        assert hop not in received, hop
    assert received["x-custom"] == "kept"
    # At the edge the client's own X-Forwarded-For is replaced (tests/test_hostile_input.py
    # has the forwarding headers in full, trusted proxies included).
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert received["x-forwarded-proto"] == "http"
    assert received["x-forwarded-host"].startswith("127.0.0.1:")
    assert received["via"] == "1.0 edge, 1.1 hagw"
    generated = received["x-request-id"]
    assert generated
    async with http.get(f"{gw.traffic_url}/echo", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc-123"
        assert resp.headers["Via"].endswith("1.1 hagw")
        echoed = {k.lower(): v for k, v in (await resp.json())["headers"]}
        assert echoed["x-request-id"] == "abc-123"


async def test_oversized_headers_and_bodies(backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], limits={"max_header": "2KB", "max_body": "1KB"})
    status, body = await fetch(http, f"{gw.traffic_url}/x", headers={"X-Big": "a" * 3000})
    assert status == 431
    many = {f"X-H{i}": "b" * 100 for i in range(30)}
    status, body = await fetch(http, f"{gw.traffic_url}/x", headers=many)
    assert status == 431 and body["error"] == "headers_too_large"
    status, body = await fetch(http, f"{gw.traffic_url}/upload", "POST", data=b"x" * 2000)
    assert status == 413 and body["error"] == "body_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 600

    status, body = await fetch(http, f"{gw.traffic_url}/upload", "POST", data=chunked())
    assert status == 413
    assert nodes[0].info.writes == []


async def test_gateway_errors_carry_json_and_the_request_id(gateway: Any, http: Any) -> None:
    dead = dead_url()
    gw = await gateway([dead], health={"enabled": False}, panic_threshold=0)
    async with http.get(f"{gw.traffic_url}/x", headers={"X-Request-Id": "r-1"}) as resp:
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        body = await resp.json()
        assert body["request_id"] == "r-1" and body["error"] == "unavailable"
        assert dead.rsplit(":", 1)[1] not in body["message"]  # no internal address


async def test_request_timeout_is_504(backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], timeouts={"request": "200ms"})
    status, body = await fetch(http, f"{gw.traffic_url}/slow?ms=2000")
    assert status == 504 and body["error"] == "gateway_timeout"


async def test_head_and_no_body_statuses(backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    async with http.head(f"{gw.traffic_url}/download?size=12345") as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "12345"
    for _ in range(3):  # the connection after a HEAD is not confused
        status, _body = await fetch(http, f"{gw.traffic_url}/x")
        assert status == 200


async def test_every_method_is_proxied(backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url])
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"):
        status, body = await fetch(http, f"{gw.traffic_url}/echo?q=1", method, data=b"abc")
        assert status == 200 and body["method"] == method and body["path"] == "/echo?q=1"


async def test_a_small_answer_cut_mid_body_is_retried_when_idempotent(
        backends: Any, gateway: Any, http: Any) -> None:
    nodes = await backends(2)
    nodes[0].fault(reset_rate=1.0)  # headers and 100 of 1000 bytes, then the connection is cut
    gw = await gateway([b.url for b in nodes], health={"enabled": False},
                       outlier_detection={"enabled": False})
    for i in range(6):
        status, body = await fetch(http, f"{gw.traffic_url}/item/{i}")
        assert status == 200 and isinstance(body, dict) and body["node"] == "node-2"
    assert sample(gw, "hagw_upstream_retries_total", node="node-1", reason="reset") >= 3


async def test_a_per_try_timeout_says_why_a_post_is_not_retried(
        backends: Any, gateway: Any, http: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The client learns why, the log which node (a public answer names none)."""
    caplog.set_level(logging.INFO, "hagw.proxy")
    nodes = await backends(1)
    nodes[0].fault(latency_ms=1000)
    gw = await gateway([nodes[0].url], health={"enabled": False},
                       retries={"per_try_timeout": "200ms"})
    status, body = await fetch(http, f"{gw.traffic_url}/orders", "POST", json={"n": 1})
    assert status == 504 and isinstance(body, dict)
    assert "no answer within retries.per_try_timeout (0.2s)" in body["message"]
    assert "Idempotency-Key" in body["message"] and "node-1" not in body["message"]
    assert any("node-1: no answer within" in r.getMessage() for r in caplog.records)


async def test_the_gateways_own_answer_headers_replace_the_nodes(
        serve: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    """A header the gateway adds to every answer (the maintenance advisory here, HSTS on
    a TLS listener) is sent once, the gateway's, even when the node sends its own."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers={
            "X-Maintenance-Scheduled": "the node's own", "X-Other": "kept"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    gw = await gateway([await serve(app)])
    gw.traffic.advisory = "2026-12-02T02:00:00Z/2026-12-02T03:00:00Z"
    async with http.get(f"{gw.traffic_url}/page") as resp:
        assert resp.status == 200
        assert resp.headers.getall("X-Maintenance-Scheduled") == [
            "2026-12-02T02:00:00Z/2026-12-02T03:00:00Z"]
        assert resp.headers["X-Other"] == "kept"
