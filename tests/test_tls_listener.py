"""TLS on the gateway's own listeners, in both process models: the traffic listener (SNI,
protocol floor, mutual TLS, X-Forwarded-Proto, HSTS, the redirect listener, bad input
counted), the admin API over TLS, certificates rotated under HTTPS load (by a reload and
by a change of the files) and a bad certificate refused while the old one keeps serving,
and the hagw_tls_* metrics on the admin /metrics.

Real sockets on 127.0.0.1, certificates made at test time by trustme. ``single`` is a
gateway in the test's process (``workers: 0``); ``workers`` is ``hagw run`` with a real
supervisor and two worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import free_port
from gateway.app import runtime
from gateway.app.runtime import Gateway
from gateway.config import load_config
from gateway.listener import HttpsRedirect
from gateway.request import Headers, Request
from tests.conftest import TOKEN, Backend, auth, config_dict, hagw
from tests.test_tls import Certs, Pair, old_client
from tests.test_workers import alive

pytestmark = pytest.mark.timeout(120)

#: Every wait is bounded by this (seconds); none is a timing assertion.
WAIT = 15.0
NAME = "gateway.test"


class Served:
    """A gateway with TLS, in one of the two process models, and what a test asks of it."""

    def __init__(self, model: str, workdir: Path, config: dict[str, Any], certs: Certs,
                 session: aiohttp.ClientSession, *, in_process: bool) -> None:
        self.model = model
        #: A single-process gateway in the test's own event loop (else ``hagw run``).
        self.in_process = in_process
        self.workdir = workdir
        self.config = config
        self.certs = certs
        self.http = session
        self.path = workdir / "gateway.yaml"
        self.gw: Gateway | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.traffic_port = 0
        self.admin_port = 0
        #: Supervisors started by an upgrade (in their own session), stopped at the end.
        self.successors: list[int] = []
        self.write(config)

    def write(self, config: dict[str, Any]) -> None:
        self.config = config
        self.path.write_text(yaml.safe_dump(config))

    @property
    def admin_scheme(self) -> str:
        return "https" if self.config["admin"].get("tls") else "http"

    @property
    def traffic_url(self) -> str:
        return f"https://127.0.0.1:{self.traffic_port}"

    @property
    def admin_url(self) -> str:
        return f"{self.admin_scheme}://127.0.0.1:{self.admin_port}"

    async def start(self) -> None:
        if self.in_process:
            self.gw = Gateway(load_config(self.path), config_path=str(self.path))
            await self.gw.start()
            assert self.gw.traffic_address is not None and self.gw.admin_address is not None
            self.traffic_port = self.gw.traffic_address[1]
            self.admin_port = self.gw.admin_address[1]
            return
        self.traffic_port = int(self.config["listen"].rsplit(":", 1)[1])
        self.admin_port = int(self.config["admin"]["listen"].rsplit(":", 1)[1])
        self.proc = self.spawn()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                _, data = await self.admin("GET", "/processes")
                if sum(1 for w in data["workers"] if w["serving"]) == self.config["workers"]:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not serve:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def spawn(self) -> subprocess.Popen[bytes]:
        """``hagw run -c FILE``, as an operator starts it."""
        with (self.workdir / "gateway.log").open("ab") as log:
            return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c",
                                     str(self.path)], stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def log_tail(self) -> str:
        path = self.workdir / "gateway.log"
        return path.read_text()[-4000:] if path.exists() else ""

    async def stop(self) -> None:
        if self.gw is not None:
            await self.gw.stop()
        for pid in self.successors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    async def admin(self, method: str, path: str) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.admin_url}{path}", headers=auth(),
                                     ssl=self.certs.client(), server_hostname=NAME
                                     if self.admin_scheme == "https" else None,
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def metrics_text(self) -> str:
        async with self.http.get(f"{self.admin_url}/metrics", ssl=self.certs.client(),
                                 server_hostname=NAME if self.admin_scheme == "https"
                                 else None) as resp:
            return await resp.text()

    async def metrics(self) -> dict[str, float]:
        text = await self.metrics_text()
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    async def get(self, path: str = "/echo", *, name: str = NAME,
                  ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any, Any]:
        async with self.http.get(f"{self.traffic_url}{path}",
                                 ssl=ssl_context or self.certs.client(), server_hostname=name,
                                 timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
            return resp.status, resp.headers, await resp.json(content_type=None)

    async def served(self, name: str = NAME) -> bytes:
        """The certificate a new connection asking for ``name`` gets (DER)."""
        return (await self.handshake(name))[0]

    async def handshake(self, name: str = NAME) -> tuple[bytes, str | None]:
        """A new connection asking for ``name``: the certificate it gets (DER) and the
        protocol ALPN chose (the client offers http/1.1)."""
        async with asyncio.timeout(WAIT):
            _, writer = await asyncio.open_connection("127.0.0.1", self.traffic_port,
                                                      ssl=self.certs.client(),
                                                      server_hostname=name)
        tls = writer.get_extra_info("ssl_object")
        der: bytes = tls.getpeercert(binary_form=True)
        alpn: str | None = tls.selected_alpn_protocol()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return der, alpn


def not_after(pair: Pair) -> float:
    """When ``pair``'s certificate expires, Unix seconds."""
    cert = x509.load_pem_x509_certificate(pair.leaf.cert_chain_pems[0].bytes())
    return cert.not_valid_after_utc.timestamp()


def failures(metrics: dict[str, float], reason: str) -> float:
    return metrics.get("hagw_tls_handshake_failures_total"
                       f"[('listener', 'traffic'), ('reason', '{reason}')]", 0.0)


def expiry(metrics: dict[str, float], listener: str, cert: str) -> float | None:
    return metrics.get("hagw_tls_certificate_expiry_timestamp_seconds"
                       f"[('cert', '{cert}'), ('listener', '{listener}')]")


@pytest.fixture
async def tls_gateway(tmp_path: Path, backends: Any
                      ) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """``gw = await tls_gateway(model, certs, tls={...}, **overrides)``: started, serving."""
    made: list[Served] = []
    session = aiohttp.ClientSession(auto_decompress=False)

    async def start(model: str, certs: Certs, *, tls: dict[str, Any],
                    admin_tls: dict[str, Any] | None = None, in_process: bool | None = None,
                    **overrides: Any) -> Served:
        in_process = model == "single" if in_process is None else in_process
        nodes: list[Backend] = await backends(2)
        workdir = tmp_path / f"gw{len(made)}"
        workdir.mkdir()
        workers = 0 if model == "single" else 2
        config = config_dict([b.url for b in nodes], workdir / "state", workers=workers,
                             log_level="warning", tls=tls, **overrides)
        if not in_process:
            config["listen"] = f"127.0.0.1:{free_port()}"
            config["admin"] = {"listen": f"127.0.0.1:{free_port()}", "token": TOKEN}
        if admin_tls is not None:
            config["admin"]["tls"] = admin_tls
        served = Served(model, workdir, config, certs, session, in_process=in_process)
        made.append(served)
        await served.start()
        return served

    yield start
    for served in made:
        await served.stop()
    await session.close()


def tls_of(pair: Pair, **more: Any) -> dict[str, Any]:
    return {"cert": pair.cert, "key": pair.key, **more}


MODELS = ["single", "workers"]


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the traffic listener ----------------------------------------------------------------------

async def test_https_sni_hsts_forwarded_proto_redirect_and_admin_tls(
        model: str, tmp_path: Path, tls_gateway: Any) -> None:
    certs = Certs(tmp_path)
    default = certs.issue("gateway", NAME)
    api = certs.issue("api", "api.example.com")
    admin = certs.issue("admin", NAME)
    redirect = free_port()
    gw: Served = await tls_gateway(model, certs, tls=tls_of(
        default, sni=[{"names": ["api.example.com"], "cert": api.cert, "key": api.key}],
        http_redirect=f"127.0.0.1:{redirect}", hsts={"max_age": "1d"}),
        admin_tls=tls_of(admin))
    # Verified by an aiohttp client against the test CA; the node is told it was https.
    status, headers, body = await gw.get("/echo?x=1")
    assert status == 200
    sent = {k.lower(): v for k, v in body["headers"]}
    assert sent["x-forwarded-proto"] == "https"
    assert headers["Strict-Transport-Security"] == "max-age=86400"
    # SNI picks the certificate of two; an unknown name gets the default one.
    assert await gw.served("api.example.com") == api.der
    assert await gw.handshake(NAME) == (default.der, "http/1.1")
    status, _, body = await gw.get("/echo", name="api.example.com")
    assert status == 200 and body["path"] == "/echo"
    # The plain listener sends every request to https: same host, path and query.
    async with gw.http.post(f"http://127.0.0.1:{redirect}/some/path?a=1&b=2", data=b"x",
                            allow_redirects=False, headers={"Host": "shop.test:80"}) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == f"https://shop.test:{gw.traffic_port}/some/path?a=1&b=2"
        assert "Strict-Transport-Security" not in resp.headers
    # The admin API over TLS (its own certificate), and the metrics of both listeners.
    status, data = await gw.admin("GET", "/healthz")
    assert status == 200, data
    metrics = await gw.metrics()
    assert expiry(metrics, "traffic", "gateway.pem") == not_after(default)
    assert expiry(metrics, "traffic", "api.example.com") == not_after(api)
    assert expiry(metrics, "admin", "admin.pem") == not_after(admin)
    # One family per name (a supervisor's own and its workers' series are not repeated).
    types = re.findall(r"^# TYPE (\S+)", await gw.metrics_text(), re.MULTILINE)
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    await gw.get("/echo")  # a handshake failure now would be counted; none is
    assert failures(await gw.metrics(), "other") == 0


async def test_bad_tls_input_fails_cleanly_and_is_counted(
        model: str, tmp_path: Path, tls_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    certs = Certs(tmp_path)
    gw: Served = await tls_gateway(model, certs, tls=tls_of(certs.issue("gateway", NAME)),
                                   limits={"client_header_timeout": "500ms"})
    # TLS 1.1 only: refused.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        async with asyncio.timeout(WAIT):
            await asyncio.open_connection("127.0.0.1", gw.traffic_port, ssl=old_client())
    # Plain HTTP to the TLS port: the connection closes (after a TLS alert, or a reset).
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.traffic_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(WAIT):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(65536):
                pass
    writer.close()
    # A handshake that never starts: cut after client_header_timeout.
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.traffic_port)
    async with asyncio.timeout(WAIT):
        assert await reader.read(65536) == b""
    assert time.monotonic() - started < WAIT
    writer.close()
    # Nothing crashed: a good client is served, and each failure has its reason.
    status, _, _ = await gw.get("/echo")
    assert status == 200
    deadline = time.monotonic() + WAIT
    while True:
        metrics = await gw.metrics()
        counted = {r: failures(metrics, r) for r in ("protocol_version", "http_on_tls_port",
                                                     "timeout")}
        if all(counted.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert counted == {"protocol_version": 1, "http_on_tls_port": 1, "timeout": 1}, counted
    if model == "single":
        assert not [r for r in caplog.records if r.exc_info], caplog.text
    else:
        assert "Traceback" not in gw.log_tail(), gw.log_tail()


async def test_mutual_tls_refuses_a_client_without_a_certificate(
        model: str, tmp_path: Path, tls_gateway: Any) -> None:
    certs = Certs(tmp_path)
    (tmp_path / "clients").mkdir()
    clients = Certs(tmp_path / "clients")
    gw: Served = await tls_gateway(model, certs, tls=tls_of(
        certs.issue("gateway", NAME), client_ca=clients.ca_file))
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await gw.get("/echo")
    context = certs.client()
    clients.ca.issue_cert("client.test").configure_cert(context)
    status, _, body = await gw.get("/echo", ssl_context=context)
    assert status == 200 and body["path"] == "/echo"
    if model == "single":
        metrics = await gw.metrics()
        assert failures(metrics, "no_client_certificate") >= 1


# -- rotation --------------------------------------------------------------------------------

def rotate(certs: Certs, file: str) -> Pair:
    """A new certificate for the same name at the same paths, each file replaced whole."""
    leaf = certs.ca.issue_cert(NAME)
    staged = certs.write(f"{file}.new", leaf)
    os.replace(staged.key, certs.dir / f"{file}.key")
    os.replace(staged.cert, certs.dir / f"{file}.pem")
    return Pair(str(certs.dir / f"{file}.pem"), str(certs.dir / f"{file}.key"), leaf)


#: Answers the load must have had before the swap began and after it ended (the swap is
#: under load whatever the machine's speed; at 200 req/s, half a second each way).
AROUND = 100


async def https_load(gw: Served, during: Callable[[], Awaitable[None]], *, rate: float = 200,
                     max_requests: int = 3000) -> tuple[int, int, int, list[str]]:
    """``rate`` requests/s over HTTPS (open loop), half on kept-alive connections, half
    each on a new one (a new handshake): ``AROUND`` answers first, then ``during`` while
    the load goes on, then ``AROUND`` answers more. The requests sent, the answers before
    ``during`` and after it, and what failed."""
    failed: list[str] = []
    sent = answered = 0
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    kept = gw.http
    tasks: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal answered
        try:
            async with session.get(f"{gw.traffic_url}/echo", ssl=gw.certs.client(),
                                   server_hostname=NAME,
                                   timeout=aiohttp.ClientTimeout(total=WAIT)) as resp:
                await resp.read()
                if resp.status != 200:
                    failed.append(f"status {resp.status}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
        answered += 1

    stop = asyncio.Event()

    async def schedule() -> None:
        nonlocal sent
        start = time.monotonic()
        while not stop.is_set() and sent < max_requests:
            task = asyncio.create_task(one(fresh if sent % 2 else kept))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))

    async def answers(count: int) -> None:
        async with asyncio.timeout(30):
            while answered < count and sent < max_requests:
                await asyncio.sleep(0.01)

    scheduler = asyncio.create_task(schedule())
    try:
        await answers(AROUND)
        before = answered
        await during()
        ended = answered
        await answers(ended + AROUND)
        after = answered - ended
    finally:
        stop.set()
        await scheduler
        await asyncio.gather(*tasks)
        await fresh.close()
    return sent, before, after, failed


async def until_served(gw: Served, der: bytes, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while await gw.served() != der:
        assert time.monotonic() < deadline, "the new certificate was not served in time"
        await asyncio.sleep(0.1)


async def test_a_certificate_swapped_under_load_fails_no_request(
        model: str, tmp_path: Path, tls_gateway: Any) -> None:
    """In one process the swap is a reload (POST /reload); with workers, a change of the
    files the supervisor notices and passes to every worker through its snapshot. The
    gateway runs as ``hagw run`` in both models, so the load has this process to itself."""
    certs = Certs(tmp_path)
    first = certs.issue("gateway", NAME)
    gw: Served = await tls_gateway(model, certs, tls=tls_of(first), in_process=False)
    assert await gw.served() == first.der
    new: dict[str, Pair] = {}

    async def swap() -> None:
        new["pair"] = rotate(certs, "gateway")
        if model == "single":
            status, data = await gw.admin("POST", "/reload")
            assert status == 200, data
        await until_served(gw, new["pair"].der)

    sent, before, after, failed = await https_load(gw, swap)
    assert before >= AROUND and after >= AROUND, (sent, before, after)
    assert failed == [], failed[:10]
    assert await gw.served() == new["pair"].der
    metrics = await gw.metrics()
    assert expiry(metrics, "traffic", "gateway.pem") == not_after(new["pair"])


async def test_a_bad_certificate_on_reload_is_refused_and_the_old_one_serves(
        model: str, tmp_path: Path, tls_gateway: Any) -> None:
    certs = Certs(tmp_path)
    good = certs.issue("gateway", NAME)
    gw: Served = await tls_gateway(model, certs, tls=tls_of(good))
    other = certs.issue("other", NAME)
    # The config now names a certificate with another certificate's key.
    config = {**gw.config, "tls": {"cert": good.cert, "key": other.key}}
    gw.write(config)
    status, data = await gw.admin("POST", "/reload")
    assert status == 422, data
    assert f"key {other.key} does not match the certificate {good.cert}" in data["message"]
    assert "tls" in data["message"] and str(gw.path) in data["message"]
    assert await gw.served() == good.der
    status, _, _ = await gw.get("/echo")
    assert status == 200
    # A missing file, the same.
    gw.write({**gw.config, "tls": {"cert": str(tmp_path / "gone.pem"), "key": good.key}})
    status, data = await gw.admin("POST", "/reload")
    assert status == 422 and f"certificate {tmp_path}/gone.pem: no such file" in data["message"]
    assert await gw.served() == good.der


async def test_changed_files_are_watched_and_a_broken_change_is_refused(
        tmp_path: Path, tls_gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "TLS_WATCH_EVERY", 0.1)
    certs = Certs(tmp_path)
    first = certs.issue("gateway", NAME)
    gw: Served = await tls_gateway("single", certs, tls=tls_of(first))
    assert gw.gw is not None
    # Half a rotation: a new certificate with the old key. Refused; the old one serves.
    half = certs.write("gateway", certs.ca.issue_cert(NAME), key=False)
    deadline = time.monotonic() + WAIT
    while not [e for e in gw.gw.events.since(kind="tls") if e.kind == "tls.reload_failed"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    [event] = [e for e in gw.gw.events.since(kind="tls") if e.kind == "tls.reload_failed"]
    assert f"key {half.key} does not match the certificate {half.cert}" in event.message
    assert await gw.served() == first.der
    # The key follows: loaded.
    half.leaf.private_key_pem.write_to_path(half.key)
    await until_served(gw, half.der)


async def test_the_cli_reaches_an_admin_api_over_tls(tmp_path: Path, tls_gateway: Any) -> None:
    certs = Certs(tmp_path)
    gw: Served = await tls_gateway("single", certs, tls=tls_of(certs.issue("gateway", NAME)),
                                   admin_tls=tls_of(certs.issue("admin", "127.0.0.1")))
    cli = tmp_path / "cli.yaml"
    cli.write_text(yaml.safe_dump({**gw.config, "admin": {
        **gw.config["admin"], "listen": f"127.0.0.1:{gw.admin_port}"}}))
    env = {"SSL_CERT_FILE": certs.ca_file}
    done = await asyncio.to_thread(
        lambda: subprocess.run([sys.executable, "-m", "gateway", "nodes", "-c", str(cli)],
                               capture_output=True, text=True, timeout=30,
                               env={**os.environ, **env}))
    assert done.returncode == 0, done.stderr
    assert "node-1" in done.stdout
    unverified = await asyncio.to_thread(hagw, "nodes", config=cli)
    assert unverified.returncode != 0
    assert "certificate verify failed" in unverified.stderr.lower() or (
        "certificate" in unverified.stderr.lower()), unverified.stderr


async def test_sighup_to_the_supervisor_serves_the_certificate_the_config_now_names(
        tmp_path: Path, tls_gateway: Any) -> None:
    """Other paths, so only the reload (not the watch of the old files) can pick them up;
    each new worker reads them."""
    certs = Certs(tmp_path)
    first = certs.issue("gateway", NAME)
    gw: Served = await tls_gateway("workers", certs, tls=tls_of(first))
    second = certs.issue("rotated", NAME)
    gw.write({**gw.config, "tls": tls_of(second)})
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGHUP)
    await until_served(gw, second.der, timeout=30)
    metrics = await gw.metrics()
    assert expiry(metrics, "traffic", "rotated.pem") == not_after(second)
    assert expiry(metrics, "traffic", "gateway.pem") is None


async def test_an_upgrade_hands_over_the_tls_and_redirect_listeners(
        tmp_path: Path, tls_gateway: Any) -> None:
    certs = Certs(tmp_path)
    pair = certs.issue("gateway", NAME)
    redirect = free_port()
    gw: Served = await tls_gateway("workers", certs, tls=tls_of(
        pair, http_redirect=f"127.0.0.1:{redirect}"))
    status, answer = await gw.admin("POST", "/upgrade")
    assert status == 202, answer
    gw.successors.append(answer["pid"])
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            _, data = await gw.admin("GET", "/processes")
            if data["supervisor"]["pid"] == answer["pid"] and sum(
                    1 for w in data["workers"] if w["serving"]) == 2:
                break
        assert time.monotonic() < deadline, gw.log_tail()
        await asyncio.sleep(0.1)
    assert gw.proc is not None
    await asyncio.to_thread(gw.proc.wait, 30)  # the old supervisor has handed over
    assert await gw.served() == pair.der
    async with gw.http.get(f"http://127.0.0.1:{redirect}/after?upgrade=1",
                           allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == (
            f"https://127.0.0.1:{gw.traffic_port}/after?upgrade=1")


# -- the admin listener off loopback -----------------------------------------------------------

def test_hagw_run_refuses_an_admin_listener_off_loopback_without_tls(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    config = config_dict(["http://127.0.0.1:1"], tmp_path / "state", workers=0)
    config["admin"] = {"listen": f"0.0.0.0:{free_port()}", "token": TOKEN}
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert (f"{path}:" in done.stderr and "admin.listen: " in done.stderr
            and "is not a loopback address" in done.stderr
            and "set admin.tls, or admin.insecure: true" in done.stderr), done.stderr


async def test_admin_insecure_starts_with_a_warning(backends: Any, gateway: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    nodes: list[Backend] = await backends(1)
    with caplog.at_level("WARNING"):
        gw: Gateway = await gateway([nodes[0].url], admin={
            "listen": "0.0.0.0:0", "token": TOKEN, "insecure": True})
    warned = [r for r in caplog.records if "gateway.admin_insecure" in r.getMessage()]
    assert warned and warned[0].levelname == "WARNING"
    assert "without TLS" in warned[0].getMessage() and TOKEN not in caplog.text
    assert gw.admin_url.startswith("http://")


async def test_a_worker_replaced_while_the_files_are_broken_waits_for_them(
        tmp_path: Path, tls_gateway: Any) -> None:
    """Half a rotation (a new certificate, the old key) is refused by the supervisor; a
    worker killed meanwhile cannot start on those files, the other one serves the old
    certificate; once the key follows, a replacement starts and serves the new one."""
    certs = Certs(tmp_path)
    first = certs.issue("gateway", NAME)
    gw: Served = await tls_gateway("workers", certs, tls=tls_of(first))
    half = certs.write("gateway", certs.ca.issue_cert(NAME), key=False)
    deadline = time.monotonic() + WAIT
    while True:
        _, events = await gw.admin("GET", "/events?kind=tls")
        refused = [e for e in events["events"] if e["kind"] == "tls.reload_failed"]
        if refused:
            break
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.2)
    assert f"key {half.key} does not match the certificate {half.cert}" in refused[0]["message"]
    _, processes = await gw.admin("GET", "/processes")
    victim = processes["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    # Its replacement cannot start on these files; the survivor serves the old certificate.
    deadline = time.monotonic() + 30
    while True:
        _, events = await gw.admin("GET", "/events?kind=worker")
        if any(e["kind"] == "worker.died" and "exited with 2" in e["message"]
               for e in events["events"]):
            break
        assert time.monotonic() < deadline, gw.log_tail()
        assert await gw.served() == first.der
        status, _, _ = await gw.get("/echo")
        assert status == 200
        await asyncio.sleep(0.1)
    half.leaf.private_key_pem.write_to_path(half.key)
    await until_served(gw, half.der, timeout=30)
    deadline = time.monotonic() + 30
    while True:
        _, processes = await gw.admin("GET", "/processes")
        serving = [w for w in processes["workers"] if w["serving"]]
        if len(serving) == 2 and victim not in {w["pid"] for w in serving}:
            break
        assert time.monotonic() < deadline, gw.log_tail()
        await asyncio.sleep(0.2)
    # The supervisor sees the fixed files within its 5 s watch and tells the survivor: from
    # then on every new connection, on either worker, gets the new certificate.
    deadline = time.monotonic() + WAIT
    while True:
        _, events = await gw.admin("GET", "/events?kind=tls")
        if any(e["kind"] == "tls.reloaded" for e in events["events"]):
            break
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.2)
    deadline = time.monotonic() + WAIT
    streak = 0
    while streak < 8:
        streak = streak + 1 if await gw.served() == half.der else 0
        assert time.monotonic() < deadline, "a worker still serves the old certificate"
    # The worker that could not start said why, naming the config file and the key.
    assert (f"{gw.path}: tls: traffic listener: key {half.key} does not match the "
            f"certificate {half.cert}") in gw.log_tail()


# -- the redirect's URL ------------------------------------------------------------------------

def _request(target: str, host: str | None) -> Request:
    headers = Headers([] if host is None else [(b"Host", host.encode())])
    return Request("GET", target, "1.1", headers, "127.0.0.1", "http", keep_alive=True,
                   upgrade=False, content_length=None, chunked=False, body=None)


@pytest.mark.parametrize(("port", "target", "host", "location"), [
    (443, "/a/b?c=d&e", "shop.example.com", "https://shop.example.com/a/b?c=d&e"),
    (443, "/", "shop.example.com:80", "https://shop.example.com/"),
    (8443, "/x", "shop.example.com:8080", "https://shop.example.com:8443/x"),
    (443, "/x", "[2001:db8::1]:80", "https://[2001:db8::1]/x"),
    (443, "/x", "[2001:db8::1]", "https://[2001:db8::1]/x"),
    (443, "/x", "10.0.0.1", "https://10.0.0.1/x"),
    # Absolute-form: its authority wins over Host (RFC 9112 section 3.2.2).
    (443, "http://api.example.com:80/p?q=1", "other.example.com", "https://api.example.com/p?q=1"),
    (443, "http://api.example.com", None, "https://api.example.com/"),
    (443, "http://user:secret@api.example.com/p", None, "https://api.example.com/p"),
])
def test_the_redirect_keeps_host_path_and_query(port: int, target: str, host: str | None,
                                                 location: str) -> None:
    assert HttpsRedirect(port).location(_request(target, host)) == location


def test_the_redirect_without_a_host_is_a_400() -> None:
    answer = HttpsRedirect(443).answer(_request("/x", None))
    assert answer.status == 400 and answer.close
