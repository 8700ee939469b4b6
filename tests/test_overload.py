"""Overload protection: per-client rate limits, load shedding, circuit breakers, fairness."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from gateway.admission import Admission
from gateway.clock import FakeClock
from gateway.config.schema import OverloadConfig, RateLimitConfig
from tests.conftest import sample


def admission(**limits: Any) -> tuple[Admission, FakeClock]:
    clock = FakeClock()
    overload = limits.pop("overload", OverloadConfig())
    return Admission(RateLimitConfig(enabled=True, **limits), overload, clock), clock


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    gate, clock = admission(rate=10, burst=5)
    for _ in range(5):
        assert gate.admit("a") is None
        gate.done("a")
    refused = gate.admit("a")
    assert refused is not None and refused.status == 429
    assert refused.retry_after == 0.1
    assert gate.admit("b") is None  # another client is not affected
    gate.done("b")
    clock.advance(0.1)
    assert gate.admit("a") is None


def test_per_client_concurrency_and_the_global_limit() -> None:
    gate, _ = admission(rate=1000, burst=1000, max_concurrent=2,
                        overload=OverloadConfig(max_requests=3))
    assert gate.admit("a") is None and gate.admit("a") is None
    refused = gate.admit("a")
    assert refused is not None and refused.status == 429 and "in flight" in refused.message
    assert gate.admit("b") is None
    shed = gate.admit("c")
    assert shed is not None and shed.status == 503
    gate.done("a")
    assert gate.admit("c") is None


def test_client_key_trusts_only_configured_proxies() -> None:
    gate, _ = admission(key="header", trusted_proxies=("10.0.0.0/8",))
    assert gate.client_key("10.1.2.3", "203.0.113.7, 10.9.9.9") == "203.0.113.7"
    assert gate.client_key("198.51.100.1", "203.0.113.7") == "198.51.100.1"  # not trusted
    assert gate.client_key("10.1.2.3", None) == "10.1.2.3"
    other, _ = admission(key="header", header="X-Client-Id", trusted_proxies=("127.0.0.1",))
    assert other.client_key("127.0.0.1", "tenant-42") == "tenant-42"


def test_workers_keep_their_buckets_in_step() -> None:
    """Two workers' buckets for one client: what one admits is charged to the other, so
    together they admit the burst and then the rate, not twice that."""
    one, clock = admission(rate=10, burst=4)
    two = Admission(one.limits, one.overload, clock)
    for gate in (one, two):
        gate.share()
    admitted = 0
    for tick in range(100):  # 5 s at 2x the rate, alternating workers, synced every 100 ms
        for gate in (one, two):
            if gate.admit("c") is None:
                gate.done("c")
                admitted += 1
        clock.advance(0.05)
        if tick % 2:
            two.charge(one.take_spent())
            one.charge(two.take_spent())
    # the burst and then the rate, plus at most what one interval lets through twice
    assert 4 + 50 <= admitted <= 4 + 50 + 2


def test_what_other_workers_admitted_is_paid_back_but_not_forever() -> None:
    gate, clock = admission(rate=10, burst=5)
    gate.share()
    gate.charge({"c": 50})  # others let through a whole burst of its requests
    refused = gate.admit("c")
    assert refused is not None and refused.status == 429
    clock.advance(0.5)  # down to -burst at most: half a second pays that back...
    assert gate.admit("c") is not None
    clock.advance(0.1)  # ...and then the next token is there
    assert gate.admit("c") is None
    assert gate.take_spent() == {"c": 1} and gate.take_spent() == {}


def test_per_client_concurrency_counts_other_workers() -> None:
    gate, _ = admission(rate=1000, burst=1000, max_concurrent=3)
    gate.share()
    gate.remote_busy = {"c": 2}
    assert gate.admit("c") is None
    refused = gate.admit("c")
    assert refused is not None and "in flight" in refused.message
    assert gate.busy() == {"c": 1}


def test_bucket_table_is_bounded() -> None:
    gate, _ = admission(max_clients=3)
    for key in "abcde":
        assert gate.admit(key) is None
        gate.done(key)
    assert gate.clients == 3


async def test_rate_limit_answers_429_with_retry_after(backends: Any, gateway: Any,
                                                       http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], rate_limit={"enabled": True, "rate": 5, "burst": 3})
    statuses = []
    for _ in range(6):
        async with http.get(f"{gw.traffic_url}/x") as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert float(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"] == "rate_limited"
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    assert sample(gw, "hagw_admission_refused_total", reason="rate_limit") >= 1


async def test_the_gateway_sheds_load_fast_instead_of_queueing(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], overload={"max_requests": 4})

    async def call() -> int:
        async with http.get(f"{gw.traffic_url}/slow?ms=300") as resp:
            return resp.status

    statuses = Counter(await asyncio.gather(*(call() for _ in range(12))))
    assert statuses[200] == 4 and statuses[503] == 8
    assert sample(gw, "hagw_admission_refused_total", reason="shed") == 8
    counts = gw.slo.window(3600)
    assert counts.bad == 8  # the gateway's own shedding is charged to the SLO


async def test_per_node_circuit_breakers(backends: Any, gateway: Any,
                                         http: aiohttp.ClientSession) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], overload={"max_connections": 2, "max_pending": 2},
                       retries={"attempts": 1})

    async def call() -> int:
        async with http.get(f"{gw.traffic_url}/slow?ms=200") as resp:
            await resp.read()
            return resp.status

    statuses = Counter(await asyncio.gather(*(call() for _ in range(8))))
    # Two run, two wait for a connection, the rest overflow at once with a 503.
    assert statuses == {200: 4, 503: 4}
    assert gw.pools[gw.cluster.get("node-1")].size <= 2
    gw2 = await gateway([nodes[0].url], overload={"max_node_requests": 1},
                        retries={"attempts": 1})
    statuses = Counter(await asyncio.gather(*(
        http.get(f"{gw2.traffic_url}/slow?ms=200") for _ in range(3))))
    codes = Counter(r.status for r in statuses)
    for r in statuses:
        r.release()
    assert codes == {200: 1, 503: 2}


async def test_one_flooding_client_does_not_starve_the_others(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes], rate_limit={
        "enabled": True, "rate": 100, "burst": 20, "key": "header", "header": "X-Client-Id",
        "trusted_proxies": ["127.0.0.1"]})
    stop = asyncio.Event()
    flood: Counter[int] = Counter()
    polite: Counter[int] = Counter()

    async def flooder() -> None:
        while not stop.is_set() and sum(flood.values()) < 20_000:
            async with http.get(f"{gw.traffic_url}/x", headers={"X-Client-Id": "abuser"}) as r:
                await r.read()
                flood[r.status] += 1

    async def good_client(name: str) -> None:
        for _ in range(40):
            async with http.get(f"{gw.traffic_url}/x", headers={"X-Client-Id": name}) as r:
                await r.read()
                polite[r.status] += 1
            await asyncio.sleep(0.02)  # ~50 requests/s: under the limit

    flooders = [asyncio.create_task(flooder()) for _ in range(12)]
    await asyncio.gather(*(good_client(f"user-{i}") for i in range(3)))
    stop.set()
    await asyncio.gather(*flooders)
    assert polite == {200: 120}  # every well-behaved request was served
    assert flood[429] > flood[200]  # the flood was refused at the door
