"""Spans over OTLP (issue 18, the last item): a real gateway (one process, or a supervisor
and its workers) exporting to a real OTLP/HTTP collector, an aiohttp app on loopback that
decodes what it receives as the OpenTelemetry Collector does (protobuf
ExportTraceServiceRequest). The ids of every span are checked against the traceparent the
client sent and the one the node got."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.config import ConfigError, parse_config
from gateway.config.schema import OTLP_MODULES, TracingConfig
from gateway.trace import parse_traceparent, start_flags
from tests.conftest import auth, config_dict, sample, wait_for
from tests.test_admin_secrets import closed_port, texts
from tests.test_config import BASE
from tests.test_workers import Supervised, supervised  # noqa: F401 - the fixture

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SECRET = "otlp-hunter2-Z9q7-do-not-show"
#: Every wait on the collector is bounded by this (the spans come within a flush_interval).
ARRIVAL = 15.0


@dataclass
class Exported:
    """One span as the collector received it, its ids in hex."""

    span: Span
    resource: dict[str, Any]

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def attributes(self) -> dict[str, Any]:
        return _values(self.span.attributes)


def _values(pairs: Any) -> dict[str, Any]:
    out = {}
    for kv in pairs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@dataclass
class Collector:
    """An OTLP/HTTP traces receiver: POST /v1/traces, protobuf."""

    url: str = ""
    spans: list[Exported] = field(default_factory=list)
    #: The headers of every export request, their names in lower case.
    requests: list[dict[str, str]] = field(default_factory=list)
    #: What it answers (a collector refusing the gateway's credentials: 401).
    status: int = 200
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v1/traces"

    async def receive(self, request: web.Request) -> web.Response:
        self.requests.append({k.lower(): v for k, v in request.headers.items()})
        if self.status != 200:
            return web.Response(status=self.status)
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = _values(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "hagw"
                self.spans.extend(Exported(s, resource) for s in scope_spans.spans)
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def trace(self, trace_id: str, timeout: float = ARRIVAL) -> Exported:
        """The span of ``trace_id``, once it arrived (bounded: never sleep-and-hope)."""
        async with asyncio.timeout(timeout):
            while True:
                found = [s for s in self.spans if s.trace_id == trace_id]
                if found:
                    assert len(found) == 1, found
                    return found[0]
                self.arrived.clear()
                await self.arrived.wait()

    def traces(self) -> set[str]:
        return {s.trace_id for s in self.spans}


@pytest.fixture
async def collector(serve: Any) -> AsyncIterator[Collector]:
    receiver = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)
    receiver.url = await serve(app)
    yield receiver


def tracing(collector: Collector, **keys: Any) -> dict[str, Any]:
    return {"otlp_endpoint": collector.endpoint, "flush_interval": "50ms", **keys}


async def echoed(http: aiohttp.ClientSession, url: str,
                 headers: dict[str, str] | None = None) -> tuple[str, str, str, str]:
    """(trace id, the parent id the node saw, its flags, X-Request-Id) of GET /echo."""
    async with http.get(f"{url}/echo?token=abc", headers=headers or {}) as resp:
        assert resp.status == 200
        body = await resp.json()
    seen = {k.lower(): v for k, v in body["headers"]}
    parsed = parse_traceparent(seen["traceparent"])
    assert parsed is not None
    return (*parsed, resp.headers["X-Request-Id"])


# -- one process --------------------------------------------------------------------------


async def test_a_continued_trace_is_exported_with_the_ids_the_node_saw(
        backends: Any, gateway: Any, http: aiohttp.ClientSession,
        collector: Collector) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url], tracing=tracing(collector, service_name="edge-gw"))
    trace_id, node_parent, flags, _ = await echoed(http, gw.traffic_url, {
        "traceparent": CALLER, "User-Agent": "probe/1", "X-Request-Id": "mine-1"})
    assert trace_id == CALLER_TRACE and flags == "01"
    got = await collector.trace(CALLER_TRACE)
    # The gateway's span is the node's parent, and the caller's span is its own parent.
    assert got.span_id == node_parent and got.parent_id == CALLER_SPAN
    assert got.span.kind == Span.SPAN_KIND_SERVER and got.span.name == "GET"
    assert got.span.end_time_unix_nano >= got.span.start_time_unix_nano > 0
    assert got.span.status.code == Status.STATUS_CODE_UNSET
    attributes = got.attributes
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/echo"  # no query: it may carry a credential
    assert attributes["url.scheme"] == "http"
    assert attributes["http.response.status_code"] == 200
    assert attributes["hagw.upstream.node"] == "node-1" and attributes["hagw.attempts"] == 1
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert "client.address" not in attributes  # the peer is the client (no trusted proxy)
    assert attributes["user_agent.original"] == "probe/1"
    assert attributes["hagw.request_id"] == "mine-1"  # the client's (else the trace id)
    assert "error.type" not in attributes
    assert got.resource["service.name"] == "edge-gw"
    assert got.resource["process.pid"] == os.getpid()  # the process that served it
    await wait_for(lambda: sample(gw, "hagw_trace_spans_total", result="exported") >= 1,
                   what="the export counted")


async def test_a_new_trace_and_a_gateway_error_are_exported_too(
        backends: Any, gateway: Any, http: aiohttp.ClientSession,
        collector: Collector) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url], tracing=tracing(collector))
    trace_id, node_parent, flags, request_id = await echoed(http, gw.traffic_url)
    assert flags == "01" and request_id == trace_id  # a new trace, sampled
    got = await collector.trace(trace_id)
    assert got.span_id == node_parent and got.parent_id == ""  # the root span
    assert got.resource["service.name"] == "hagw"
    assert "hagw.request_id" not in got.attributes  # it is the trace id
    node.fault(error_rate=1.0, error_status=500)
    async with http.get(f"{gw.traffic_url}/orders/7") as resp:  # faults apply there
        assert resp.status == 500
        failed_trace = resp.headers["X-Request-Id"]
    got = await collector.trace(failed_trace)
    assert got.span.status.code == Status.STATUS_CODE_ERROR
    assert got.attributes["http.response.status_code"] == 500
    assert got.attributes["error.type"] == "500"


async def test_only_sampled_traces_are_exported(
        backends: Any, gateway: Any, http: aiohttp.ClientSession,
        collector: Collector) -> None:
    [node] = await backends(1)
    # sample_ratio 0: the traces the gateway starts are not sampled, and say so to the node.
    gw = await gateway([node.url], tracing=tracing(collector, sample_ratio=0))
    _, _, flags, _ = await echoed(http, gw.traffic_url)
    assert flags == "00"
    declined = "5bf92f3577b34da6a3ce929d0e0e4736"
    _, _, flags, _ = await echoed(http, gw.traffic_url,
                                  {"traceparent": f"00-{declined}-{CALLER_SPAN}-00"})
    assert flags == "00"  # the caller's decision is kept
    # A caller's sampled trace is exported whatever the ratio. Spans leave in order, so
    # once it is here, the earlier ones would have been too.
    await echoed(http, gw.traffic_url, {"traceparent": CALLER})
    await collector.trace(CALLER_TRACE)
    assert collector.traces() == {CALLER_TRACE}


def test_the_sample_ratio_decides_by_the_trace_id_as_opentelemetry_does() -> None:
    low, high = "f" * 16 + "0" * 15 + "1", "0" * 16 + "f" * 16
    assert start_flags(low, 0.5) == "01" and start_flags(high, 0.5) == "00"
    assert start_flags(high, 1.0) == "01" and start_flags(low, 0.0) == "00"


async def test_the_last_spans_are_sent_when_the_gateway_stops(
        backends: Any, gateway: Any, http: aiohttp.ClientSession,
        collector: Collector) -> None:
    [node] = await backends(1)
    # No flush for a minute: only the shutdown sends them.
    gw = await gateway([node.url], tracing=tracing(collector, flush_interval="60s"))
    sent = {(await echoed(http, gw.traffic_url))[0] for _ in range(3)}
    assert collector.spans == []
    await gw.stop()
    assert collector.traces() == sent  # stop() returned after the flush


async def test_a_collector_that_is_down_costs_spans_never_traffic(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    [node] = await backends(1)
    gw = await gateway([node.url], tracing={
        "otlp_endpoint": f"http://127.0.0.1:{closed_port()}", "flush_interval": "50ms",
        "export_timeout": "500ms"})
    assert gw.config.tracing.traces_url.endswith("/v1/traces")  # added to a bare URL
    for _ in range(5):
        await echoed(http, gw.traffic_url)
    await wait_for(lambda: sample(gw, "hagw_trace_spans_total", result="failed") >= 5,
                   timeout=ARRIVAL, what="the failed exports counted")
    assert sample(gw, "hagw_trace_spans_total", result="exported") == 0


# -- the collector's credentials -----------------------------------------------------------


async def test_collector_headers_are_sent_and_never_shown(
        backends: Any, gateway: Any, http: aiohttp.ClientSession, collector: Collector,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OTLP_TOKEN", SECRET)
    [node] = await backends(1)
    keys = tracing(collector, headers={"Authorization": "Bearer ${OTLP_TOKEN}"})
    path = tmp_path / "gateway.yaml"
    data = config_dict([node.url], tmp_path / "state0", tracing=keys)
    path.write_text(yaml.safe_dump(data))
    gw = await gateway([node.url], config_path=str(path), tracing=keys)
    collector.status = 401  # the collector refuses them: counted, logged, not shown
    await echoed(http, gw.traffic_url)
    await wait_for(lambda: sample(gw, "hagw_trace_spans_total", result="failed") >= 1,
                   timeout=ARRIVAL, what="the refused export counted")
    assert collector.requests[0]["authorization"] == f"Bearer {SECRET}"
    # A reload that changes them names the key, never the value.
    monkeypatch.setenv("OTLP_TOKEN", SECRET + "-2")
    data["tracing"]["headers"]["X-Scope"] = "${OTLP_TOKEN}"
    path.write_text(yaml.safe_dump(data))
    async with http.post(f"{gw.admin_url}/reload", headers=auth()) as resp:
        assert resp.status == 200
        answer = await resp.text()
    assert "tracing.headers" in answer
    collector.status = 200
    trace_id = (await echoed(http, gw.traffic_url))[0]
    await collector.trace(trace_id)  # the reloaded export sends the new headers
    assert collector.requests[-1]["x-scope"] == SECRET + "-2"
    shown = answer + await texts(http, gw, "/", "/events?limit=1000", "/processes",
                                 "/metrics", headers=auth())
    shown += repr(gw.config) + repr(gw.config.tracing) + repr(gw.traffic.spans)
    shown += "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in shown
    assert "Authorization" in repr(gw.config.tracing)  # the names are shown


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("snippet", "message"), [
    ("tracing: {otlp_endpoint: 4318}",
     "gateway.yaml:5: tracing.otlp_endpoint: expected a string, found 4318"),
    ("tracing: {otlp_endpoint: 'collector:4318/v1/traces'}",
     "gateway.yaml:5: tracing.otlp_endpoint: expected an OTLP/HTTP URL like "
     '"http://otel-collector:4318/v1/traces"'),
    ("tracing: {otlp_endpoint: 'http://gw:pw@collector:4318/v1/traces'}",
     "tracing.otlp_endpoint: expected no user or password in the URL"),
    ("tracing: {sample_ratio: 2}",
     "gateway.yaml:5: tracing.sample_ratio: expected a percentage like 5% or a ratio like "
     "0.05, found 2"),
    ("tracing: {sample_ratio: often}", "tracing.sample_ratio: expected a percentage"),
    ("tracing: {export_timeout: 0s}", "tracing.export_timeout: expected a value above zero"),
    ("tracing: {flush_interval: soon}", "tracing.flush_interval: expected a duration"),
    ("tracing: {service_name: ' '}", "tracing.service_name: expected a service name"),
    ("tracing: {headers: {'Bad Header': x}}",
     "tracing.headers.Bad Header: expected a header name like Authorization"),
    ("tracing: {endpoint: 'http://collector:4318'}", "tracing.endpoint: unknown key"),
])
def test_tracing_errors_name_file_line_key_and_expectation(snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + snippet + "\n", "gateway.yaml")
    assert message in str(err.value)


def test_a_bad_header_value_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + "tracing: {headers: {X-Api-Key: 8151762215}}\n", "gateway.yaml")
    assert "tracing.headers.X-Api-Key: expected a header value as a string" in str(err.value)
    assert "8151762215" not in str(err.value)


def test_without_the_otlp_extra_the_endpoint_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = "tracing: {otlp_endpoint: 'http://collector:4318/v1/traces'}\n"
    assert parse_config(BASE + snippet).tracing.traces_url == \
        "http://collector:4318/v1/traces"
    for module in OTLP_MODULES:  # as Python sees a package that is not installed
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + snippet, "gateway.yaml")
    assert "gateway.yaml:5: tracing.otlp_endpoint: exporting spans needs the OpenTelemetry " \
        "SDK" in str(err.value)
    assert "pip install 'hagw[otlp]'" in str(err.value)
    # Without an endpoint nothing is needed.
    assert parse_config(BASE + "tracing: {sample_ratio: 10%}\n").tracing == \
        TracingConfig(sample_ratio=0.1)


def test_without_an_endpoint_no_process_imports_the_exporter(tmp_path: Path) -> None:
    """A gateway without tracing.otlp_endpoint serves without loading OpenTelemetry's trace
    SDK or exporter; a worker (the data plane alone) loads nothing of OpenTelemetry. (With
    the otlp extra installed, redis-py loads OpenTelemetry's metrics SDK on its own in the
    processes that import it: the supervisor, or the single process.)"""
    script = f"""
import asyncio, sys, urllib.request
import gateway.app.worker
assert not [m for m in sys.modules if m.startswith("opentelemetry")]
from gateway.app.runtime import Gateway
from gateway.config import parse_config

async def main():
    config = parse_config('''
listen: "127.0.0.1:0"
admin: {{listen: "127.0.0.1:0", token: t}}
nodes: [{{name: n, url: "http://127.0.0.1:{closed_port()}"}}]
state_dir: {str(tmp_path / "state")!r}
shutdown: {{grace: 0s}}
tracing: {{sample_ratio: 50%}}
''')
    async with Gateway(config) as gw:
        await asyncio.to_thread(lambda: urllib.request.urlopen(gw.admin_url + "/healthz"))
    loaded = [m for m in sys.modules if m.startswith(("opentelemetry.sdk.trace",
                                                      "opentelemetry.exporter"))]
    assert not loaded, loaded

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- workers -----------------------------------------------------------------------------------


async def test_each_worker_exports_its_own_spans_and_flushes_them_when_it_stops(
        backends: Any, supervised: Any, collector: Collector) -> None:  # noqa: F811
    nodes = await backends(1)
    gw: Supervised = await supervised([b.url for b in nodes], workers=2,
                                      tracing=tracing(collector, flush_interval="60s"))
    workers = {w["pid"] for w in (await gw.processes())["workers"]}
    sent = set()
    # A connection each, so both workers may take some.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(8):
            sent.add((await echoed(http, gw.traffic_url))[0])
    assert collector.spans == []  # no flush for a minute: only stopping sends them
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        while collector.traces() != sent:
            collector.arrived.clear()
            await collector.arrived.wait()
    exporters = {s.resource["process.pid"] for s in collector.spans}
    assert exporters <= workers and gw.proc.pid not in exporters
    # Each worker's spans carry its own instance id, one per process.
    instances = {s.resource["service.instance.id"] for s in collector.spans}
    assert len(instances) == len(exporters)
    await asyncio.to_thread(gw.proc.wait, 30)
