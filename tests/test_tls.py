"""TLS building blocks (gateway/tls.py), on real sockets on 127.0.0.1 with certificates made
at test time by trustme: listener contexts with SNI, mutual TLS and rotation, the handshake
failure classification, the upstream client context, TLS connection pools and probes, and
the TLS config keys."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from gateway.app.demo.backend import build_backend
from gateway.app.runtime import Gateway
from gateway.clock import FakeClock
from gateway.config import ConfigError, parse_config
from gateway.config.schema import HealthCheckConfig, SniCertificate, TlsConfig, UpstreamTlsConfig
from gateway.config.types import NodeURL
from gateway.node import NodeState
from gateway.tls import (
    ServerTls,
    TlsCollector,
    TlsError,
    check_files,
    classify_handshake_error,
    client_context,
)
from gateway.upstream import ConnectFailure, ConnectionPool
from monitor.health.probe import ProbeTls, probe
from tests.conftest import wait_for

#: Every wait in this file is bounded by this (seconds); none is a timing assertion.
WAIT = 10.0
UTC = datetime.UTC


# -- certificates ------------------------------------------------------------------------------

@dataclass
class Pair:
    """A certificate chain and its key, written to files."""

    cert: str
    key: str
    leaf: trustme.LeafCert

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.leaf.cert_chain_pems[0].bytes().decode())


class Certs:
    """A test CA that writes the certificates it issues under ``tmp_path``."""

    def __init__(self, directory: Path, ca: trustme.CA | None = None) -> None:
        self.dir = directory
        self.ca = ca or trustme.CA()
        self.ca_file = str(directory / f"ca-{id(self.ca)}.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def issue(self, file: str, *names: str, **kwargs: Any) -> Pair:
        leaf = self.ca.issue_cert(*names, **kwargs)
        return self.write(file, leaf)

    def write(self, file: str, leaf: trustme.LeafCert, *, key: bool = True) -> Pair:
        """Write ``leaf`` to FILE.pem and (unless told not to) its key to FILE.key."""
        cert_path, key_path = self.dir / f"{file}.pem", self.dir / f"{file}.key"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        if key:
            leaf.private_key_pem.write_to_path(str(key_path))
        return Pair(str(cert_path), str(key_path), leaf)

    def client(self) -> ssl.SSLContext:
        """A client context trusting this CA."""
        context = ssl.create_default_context(cafile=self.ca_file)
        context.set_alpn_protocols(["http/1.1"])
        return context


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def config(pair: Pair, **kwargs: Any) -> TlsConfig:
    return TlsConfig(cert=pair.cert, key=pair.key, **kwargs)


# -- servers -----------------------------------------------------------------------------------

async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each line with ``echo: <line>`` until the client goes."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while line := await reader.readline():
            writer.write(b"echo: " + line)
            await writer.drain()
    writer.close()


@dataclass
class Handshakes:
    """A server that makes the TLS handshake itself (``start_tls`` on a plain connection),
    as a listener does to count why handshakes fail."""

    port: int
    failures: asyncio.Queue[tuple[str, BaseException]]


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    started: list[asyncio.Server] = []

    async def start(tls: ServerTls, *, handshake_here: bool = False) -> Any:
        if not handshake_here:
            server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.context)
            started.append(server)
            return server.sockets[0].getsockname()[1]
        failures: asyncio.Queue[tuple[str, BaseException]] = asyncio.Queue()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(WAIT):
                    await writer.start_tls(tls.context)
            except (OSError, TimeoutError) as exc:
                failures.put_nowait((tls.handshake_failed(exc), exc))
                writer.transport.abort()
                return
            await echo(reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        started.append(server)
        return Handshakes(server.sockets[0].getsockname()[1], failures)

    yield start
    for server in started:
        server.close()
        await server.wait_closed()


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def der(self) -> bytes:
        der: bytes = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der

    async def ask(self, text: str = "ping") -> bytes:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()
        async with asyncio.timeout(WAIT):
            return await self.reader.readline()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def connect(port: int, context: ssl.SSLContext, name: str | None) -> Client:
    """A TLS client asking for ``name`` in SNI; None sends no SNI (and checks no name)."""
    if name is None:
        context.check_hostname = False
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=name or "")
    return Client(reader, writer)


def old_client() -> ssl.SSLContext:
    """A client that offers TLS 1.0 and 1.1 only (OpenSSL must be told it may)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


# -- serving certificates ----------------------------------------------------------------------

async def test_an_aiohttp_client_verifying_the_ca_gets_the_default_certificate(
        certs: Certs) -> None:
    pair = certs.issue("gateway", "gateway.test")
    tls = ServerTls("traffic", config(pair))

    async def hello(request: web.Request) -> web.Response:
        assert request.transport is not None
        version = request.transport.get_extra_info("ssl_object").version()
        return web.Response(text=f"hello over {version}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(WAIT), http.get(
                f"https://127.0.0.1:{port}/", ssl=certs.client(),
                server_hostname="gateway.test") as resp:
            # Verified against the test CA, for the default certificate's name.
            assert resp.status == 200
            assert (await resp.text()).startswith("hello over TLSv1.")
    finally:
        await runner.cleanup()


async def test_sni_picks_the_certificate_for_the_name(certs: Certs, servers: Any) -> None:
    default = certs.issue("gateway", "gateway.test")
    api = certs.issue("api", "api.example.com")
    apps = certs.issue("apps", "*.apps.example.com")
    tls = ServerTls("traffic", config(default, sni=(
        SniCertificate(("api.example.com",), api.cert, api.key),
        SniCertificate(("*.apps.example.com",), apps.cert, apps.key))))
    port = await servers(tls)
    for name, expected, verify in [
            ("api.example.com", api, True), ("API.Example.COM", api, True),
            ("shop.apps.example.com", apps, True), ("gateway.test", default, True),
            # A wildcard stands for one label only; an unknown name gets the default.
            ("a.b.apps.example.com", default, False), ("other.example.org", default, False)]:
        context = certs.client()
        context.check_hostname = verify
        client = await connect(port, context, name)
        assert client.der == expected.der, name
        assert await client.ask() == b"echo: ping\n"
        await client.close()


async def test_a_client_without_sni_gets_the_current_default_certificate(
        certs: Certs, servers: Any) -> None:
    first = certs.issue("first", "gateway.test")
    api = certs.issue("api", "api.example.com")
    tls = ServerTls("traffic", config(first, sni=(
        SniCertificate(("api.example.com",), api.cert, api.key),)))
    port = await servers(tls)
    client = await connect(port, certs.client(), None)
    assert client.der == first.der
    await client.close()
    # The base context still holds the first certificate: only the SNI callback, called
    # with no name, can hand out the second one.
    second = certs.issue("second", "gateway.test")
    tls.reload(config(second, sni=tls.config.sni))
    client = await connect(port, certs.client(), None)
    assert client.der == second.der
    assert await client.ask() == b"echo: ping\n"
    await client.close()


async def test_tls_1_1_is_refused_and_counted_as_protocol_version(
        certs: Certs, servers: Any) -> None:
    tls = ServerTls("traffic", config(certs.issue("gateway", "gateway.test")))
    server: Handshakes = await servers(tls, handshake_here=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(server.port, old_client(), None)
    async with asyncio.timeout(WAIT):
        reason, exc = await server.failures.get()
    assert reason == "protocol_version", exc
    assert classify_handshake_error(exc) == "protocol_version"
    assert tls.failures["protocol_version"] == 1
    # A modern client on the same listener is fine.
    client = await connect(server.port, certs.client(), "gateway.test")
    assert await client.ask() == b"echo: ping\n"
    await client.close()


async def test_min_version_1_3_refuses_a_tls_1_2_client(certs: Certs, servers: Any) -> None:
    tls = ServerTls("traffic", config(certs.issue("gateway", "gateway.test"), min_version="1.3"))
    port = await servers(tls)
    context = certs.client()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(port, context, "gateway.test")
    client = await connect(port, certs.client(), "gateway.test")
    assert client.writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    await client.close()


async def test_plain_http_to_the_tls_port_is_classified(certs: Certs, servers: Any) -> None:
    tls = ServerTls("traffic", config(certs.issue("gateway", "gateway.test")))
    server: Handshakes = await servers(tls, handshake_here=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(WAIT):
        reason, exc = await server.failures.get()
        assert await reader.read() == b""  # no answer
    assert reason == "http_on_tls_port", exc
    assert isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST"
    writer.close()


@pytest.mark.parametrize(("exc", "reason"), [
    (TimeoutError(), "timeout"),
    (ConnectionResetError(), "client_closed"),
    (asyncio.IncompleteReadError(b"", 5), "client_closed"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "client_closed"),
    (ValueError("something else"), "other"),
])
def test_classify_handshake_error_without_a_socket(exc: BaseException, reason: str) -> None:
    assert classify_handshake_error(exc) == reason


# -- mutual TLS --------------------------------------------------------------------------------

async def test_mtls_requires_a_client_certificate_from_client_ca(
        tmp_path: Path, certs: Certs, servers: Any) -> None:
    clients = Certs(tmp_path, trustme.CA())
    strangers = Certs(tmp_path, trustme.CA())
    tls = ServerTls("traffic", config(certs.issue("gateway", "gateway.test"),
                                      client_ca=clients.ca_file))
    server: Handshakes = await servers(tls, handshake_here=True)

    async def refused(context: ssl.SSLContext) -> None:
        # With TLS 1.3 the client may finish its side of the handshake before the server
        # refuses; either way it never gets an answer.
        try:
            client = await connect(server.port, context, "gateway.test")
        except (ssl.SSLError, ConnectionError):
            return
        try:
            assert await client.ask() == b""
        except (ssl.SSLError, ConnectionError):
            pass
        finally:
            await client.close()

    await refused(certs.client())
    async with asyncio.timeout(WAIT):
        assert (await server.failures.get())[0] == "no_client_certificate"

    stranger = certs.client()
    strangers.ca.issue_cert("stranger@example.com").configure_cert(stranger)
    await refused(stranger)
    async with asyncio.timeout(WAIT):
        assert (await server.failures.get())[0] == "bad_client_certificate"

    member = certs.client()
    clients.ca.issue_cert("member@example.com").configure_cert(member)
    client = await connect(server.port, member, "gateway.test")
    assert await client.ask() == b"echo: ping\n"
    await client.close()
    assert tls.failures["no_client_certificate"] == tls.failures["bad_client_certificate"] == 1


async def test_reload_switches_the_client_ca(tmp_path: Path, certs: Certs, servers: Any) -> None:
    old, new = Certs(tmp_path, trustme.CA()), Certs(tmp_path, trustme.CA())
    pair = certs.issue("gateway", "gateway.test")
    tls = ServerTls("traffic", config(pair, client_ca=old.ca_file))
    port = await servers(tls)
    old_member, new_member = certs.client(), certs.client()
    old.ca.issue_cert("a@example.com").configure_cert(old_member)
    new.ca.issue_cert("b@example.com").configure_cert(new_member)
    client = await connect(port, old_member, "gateway.test")
    assert await client.ask() == b"echo: ping\n"
    await client.close()
    tls.reload(config(pair, client_ca=new.ca_file))
    client = await connect(port, new_member, "gateway.test")
    assert await client.ask() == b"echo: ping\n"
    await client.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        client = await connect(port, old_member, "gateway.test")
        try:
            assert await client.ask() == b""
        finally:
            await client.close()


# -- rotation ----------------------------------------------------------------------------------

async def test_reload_serves_the_new_certificate_to_new_connections_only(
        certs: Certs, servers: Any) -> None:
    first = certs.issue("first", "gateway.test")
    tls = ServerTls("traffic", config(first))
    port = await servers(tls)
    before = await connect(port, certs.client(), "gateway.test")
    assert before.der == first.der
    second = certs.issue("second", "gateway.test")
    tls.reload(config(second))
    after = await connect(port, certs.client(), "gateway.test")
    assert after.der == second.der
    # The connection opened before keeps working, on the certificate it started with.
    assert await before.ask("still here") == b"echo: still here\n"
    assert before.der == first.der
    await before.close()
    await after.close()


@dataclass
class Broken:
    """A way to break a listener's new config, and what the error must say."""

    name: str
    make: Callable[[Certs, Path], TlsConfig]
    message: str


def _expired(certs: Certs, _: Path) -> TlsConfig:
    return config(certs.issue("expired", "gateway.test",
                              not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
                              not_after=datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)))


def _future(certs: Certs, _: Path) -> TlsConfig:
    return config(certs.issue("future", "gateway.test",
                              not_before=datetime.datetime(2300, 1, 1, tzinfo=UTC),
                              not_after=datetime.datetime(2301, 1, 1, tzinfo=UTC)))


def _mismatch(certs: Certs, _: Path) -> TlsConfig:
    one, other = certs.issue("one", "gateway.test"), certs.issue("other", "gateway.test")
    return TlsConfig(cert=one.cert, key=other.key)


def _not_pem(certs: Certs, tmp: Path) -> TlsConfig:
    (tmp / "junk.pem").write_bytes(b"this is not a certificate\n")
    return TlsConfig(cert=str(tmp / "junk.pem"), key=certs.issue("k", "gateway.test").key)


def _key_not_pem(certs: Certs, tmp: Path) -> TlsConfig:
    (tmp / "junk.key").write_bytes(b"\x00\x01binary junk")
    return TlsConfig(cert=certs.issue("c", "gateway.test").cert, key=str(tmp / "junk.key"))


def _encrypted(certs: Certs, tmp: Path) -> TlsConfig:
    pair = certs.issue("enc", "gateway.test")
    key = serialization.load_pem_private_key(Path(pair.key).read_bytes(), password=None)
    Path(pair.key).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret-passphrase")))
    return config(pair)


def _sni_name_not_covered(certs: Certs, _: Path) -> TlsConfig:
    default, api = certs.issue("d", "gateway.test"), certs.issue("api", "api.example.com")
    return config(default, sni=(SniCertificate(("www.example.com",), api.cert, api.key),))


def _bad_client_ca(certs: Certs, tmp: Path) -> TlsConfig:
    return config(certs.issue("d", "gateway.test"), client_ca=str(tmp / "missing-ca.pem"))


BROKEN = [
    Broken("missing certificate", lambda c, t: TlsConfig(cert=str(t / "nope.pem"),
                                                         key=str(t / "nope.key")),
           "certificate {tmp}/nope.pem: no such file"),
    Broken("missing key", lambda c, t: TlsConfig(cert=c.issue("c", "gateway.test").cert,
                                                 key=str(t / "nope.key")),
           "key {tmp}/nope.key: no such file"),
    Broken("a directory", lambda c, t: TlsConfig(cert=str(t), key=str(t)),
           "is a directory, expected a PEM file"),
    Broken("key that does not match", _mismatch,
           "key {tmp}/other.key does not match the certificate {tmp}/one.pem"),
    Broken("expired certificate", _expired,
           "certificate {tmp}/expired.pem expired on 2021-03-04T05:06:07Z"),
    Broken("certificate not yet valid", _future,
           "certificate {tmp}/future.pem is not yet valid: valid from 2300-01-01T00:00:00Z"),
    Broken("certificate not PEM", _not_pem, "{tmp}/junk.pem: not a PEM certificate"),
    Broken("key not PEM", _key_not_pem, "key {tmp}/junk.key: not a PEM private key"),
    Broken("encrypted key", _encrypted, "is encrypted with a passphrase"),
    Broken("SNI name the certificate does not cover", _sni_name_not_covered,
           "certificate {tmp}/api.pem is not valid for www.example.com (it names "
           "api.example.com)"),
    Broken("client CA missing", _bad_client_ca, "client CA {tmp}/missing-ca.pem: no such file"),
]


@pytest.mark.parametrize("broken", [pytest.param(b, id=b.name) for b in BROKEN])
async def test_a_broken_reload_keeps_the_old_certificate(
        broken: Broken, certs: Certs, servers: Any, tmp_path: Path) -> None:
    good = certs.issue("good", "gateway.test")
    tls = ServerTls("traffic", config(good))
    port = await servers(tls)
    new = broken.make(certs, tmp_path)
    with pytest.raises(TlsError) as err:
        tls.reload(new)
    message = str(err.value)
    assert message.startswith("traffic listener: ")
    assert broken.message.format(tmp=tmp_path) in message
    assert "PRIVATE KEY-----\n" not in message and "s3cret" not in message
    with pytest.raises(TlsError, match="traffic listener"):
        ServerTls("traffic", new)  # refused at start-up the same way
    with pytest.raises(TlsError):
        check_files(new)
    assert tls.config == config(good)
    client = await connect(port, certs.client(), "gateway.test")
    assert client.der == good.der
    assert await client.ask() == b"echo: ping\n"
    await client.close()


async def test_changed_files_are_picked_up_by_refresh(certs: Certs, servers: Any) -> None:
    first = certs.issue("gateway", "gateway.test")
    tls = ServerTls("traffic", config(first))
    port = await servers(tls)
    assert not tls.changed() and not tls.refresh()
    # Rotation in place (as certbot or a mounted secret does): same paths, new contents.
    second = certs.write("gateway", certs.ca.issue_cert("gateway.test"))
    assert tls.changed()
    assert tls.refresh()
    assert not tls.changed()
    client = await connect(port, certs.client(), "gateway.test")
    assert client.der == second.der
    await client.close()
    # Half a rotation (a new certificate, the old key): refused once, not retried until
    # the files change again; the working certificate keeps serving.
    third = certs.write("gateway", certs.ca.issue_cert("gateway.test"), key=False)
    assert tls.changed()
    with pytest.raises(TlsError, match="does not match"):
        tls.refresh()
    assert not tls.changed() and not tls.refresh()
    third.leaf.private_key_pem.write_to_path(third.key)
    assert tls.refresh()
    client = await connect(port, certs.client(), "gateway.test")
    assert client.der == third.der
    await client.close()


# -- expiry metric -----------------------------------------------------------------------------

def test_expiries_and_the_collector(certs: Certs) -> None:
    ends = datetime.datetime(2031, 6, 1, 12, 0, 0, tzinfo=UTC)
    default = certs.issue("gateway", "gateway.test", not_after=ends)
    api = certs.issue("api", "api.example.com", "www.example.com",
                      not_after=datetime.datetime(2030, 1, 1, tzinfo=UTC))
    traffic = ServerTls("traffic", config(default, sni=(
        SniCertificate(("www.example.com", "api.example.com"), api.cert, api.key),)))
    admin = ServerTls("admin", config(certs.issue("admin", "admin.test", not_after=ends)))
    assert traffic.expiries() == [
        ("traffic", "gateway.pem", ends.timestamp()),
        ("traffic", "www.example.com", datetime.datetime(2030, 1, 1, tzinfo=UTC).timestamp())]
    registry = CollectorRegistry()
    registry.register(TlsCollector(lambda: [traffic, admin]))
    sample = registry.get_sample_value
    assert sample("hagw_tls_certificate_expiry_timestamp_seconds",
                  {"listener": "admin", "cert": "admin.pem"}) == ends.timestamp()
    assert sample("hagw_tls_certificate_expiry_timestamp_seconds",
                  {"listener": "traffic", "cert": "www.example.com"}) == 1893456000.0
    traffic.handshake_failed(TimeoutError())
    assert sample("hagw_tls_handshake_failures_total",
                  {"listener": "traffic", "reason": "timeout"}) == 1.0
    assert sample("hagw_tls_handshake_failures_total",
                  {"listener": "admin", "reason": "timeout"}) == 0.0
    assert "admin" in repr(admin) and "gateway.pem" in repr(traffic)


def test_expiry_is_judged_by_the_clock(certs: Certs) -> None:
    pair = certs.issue("gateway", "gateway.test",
                       not_after=datetime.datetime(2030, 1, 1, tzinfo=UTC))
    assert check_files(config(pair), clock=FakeClock(start=1_800_000_000.0))  # 2027
    with pytest.raises(TlsError, match="expired on 2030-01-01T00:00:00Z"):
        ServerTls("traffic", config(pair), clock=FakeClock(start=1_900_000_000.0))  # 2030


# -- the client side ---------------------------------------------------------------------------

async def test_client_context_verifies_the_node(tmp_path: Path, certs: Certs,
                                                servers: Any) -> None:
    port = await servers(ServerTls("node", config(certs.issue("node", "node.test"))))
    context = client_context(UpstreamTlsConfig(ca=certs.ca_file))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    client = await connect(port, context, "node.test")
    assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    await client.close()
    with pytest.raises(ssl.SSLCertVerificationError, match="not valid for 'wrong.test'"):
        await connect(port, client_context(UpstreamTlsConfig(ca=certs.ca_file)), "wrong.test")
    # verify_hostname: false still verifies the chain.
    unchecked = client_context(UpstreamTlsConfig(ca=certs.ca_file, verify_hostname=False))
    client = await connect(port, unchecked, "wrong.test")
    await client.close()
    other = Certs(tmp_path, trustme.CA())
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(port, client_context(UpstreamTlsConfig(ca=other.ca_file,
                                                             verify_hostname=False)), "node.test")
    # The system CAs do not know the test CA.
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(port, client_context(UpstreamTlsConfig()), "node.test")


async def test_client_context_presents_a_client_certificate(
        tmp_path: Path, certs: Certs, servers: Any) -> None:
    clients = Certs(tmp_path, trustme.CA())
    server: Handshakes = await servers(ServerTls("node", config(
        certs.issue("node", "node.test"), client_ca=clients.ca_file)), handshake_here=True)
    gateway = clients.issue("gateway-client", "gateway.internal")
    context = client_context(UpstreamTlsConfig(ca=certs.ca_file, cert=gateway.cert,
                                               key=gateway.key))
    client = await connect(server.port, context, "node.test")
    assert await client.ask() == b"echo: ping\n"
    await client.close()
    assert server.failures.empty()


def test_client_context_file_errors_name_the_file(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(TlsError, match=f"upstream CA {tmp_path}/none.pem: no such file"):
        client_context(UpstreamTlsConfig(ca=str(tmp_path / "none.pem")))
    one, other = certs.issue("one", "gw.internal"), certs.issue("other", "gw.internal")
    with pytest.raises(TlsError, match="does not match the certificate"):
        client_context(UpstreamTlsConfig(cert=one.cert, key=other.key))


# -- upstream pools and probes over TLS --------------------------------------------------------

@pytest.fixture
async def tls_backend(certs: Certs) -> AsyncIterator[int]:
    """The demo backend behind TLS (certificate for node.test); its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs.ca.issue_cert("node.test").configure_cert(context)
    app = build_backend("node-1", "v1")

    async def peer(request: web.Request) -> web.Response:
        return web.Response(text=str(request.transport.get_extra_info("peername")[1]))

    app.router.add_get("/peer", peer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def exchange(pool: ConnectionPool, path: str) -> tuple[int, bytes, Any]:
    conn = await pool.acquire()
    conn.begin(head_only=False)
    conn.write(f"GET {path} HTTP/1.1\r\nHost: node.test\r\n\r\n".encode())
    async with asyncio.timeout(WAIT):
        await conn.read_head()
        await conn.wait_complete()
    body = conn.take_buffered()
    pool.release(conn)
    return conn.status, body, conn


async def test_a_tls_pool_reuses_one_connection(certs: Certs, tls_backend: int) -> None:
    pool = ConnectionPool("node-1", "127.0.0.1", tls_backend, connect_timeout=WAIT,
                          idle_timeout=60.0,
                          ssl=client_context(UpstreamTlsConfig(ca=certs.ca_file)),
                          server_hostname="node.test")
    try:
        status, first_port, first = await exchange(pool, "/peer")
        assert status == 200
        status, second_port, second = await exchange(pool, "/peer")
        assert status == 200
        assert second is first and first.exchanges == 2
        assert first_port == second_port  # the node saw one connection
        assert pool.size == 1 and pool.idle == 1
        assert "tls" in repr(pool)
    finally:
        pool.abort_all()


async def test_a_tls_pool_refuses_a_node_with_the_wrong_name(
        certs: Certs, tls_backend: int) -> None:
    pool = ConnectionPool("node-1", "127.0.0.1", tls_backend, connect_timeout=WAIT,
                          idle_timeout=60.0,
                          ssl=client_context(UpstreamTlsConfig(ca=certs.ca_file)),
                          server_hostname="other.test")
    with pytest.raises(ConnectFailure, match="TLS handshake with 127.0.0.1:.* failed: "
                                             "Hostname mismatch"):
        await pool.acquire()
    assert pool.size == 0


async def test_health_probe_over_tls(certs: Certs, tls_backend: int) -> None:
    url = NodeURL("https", "127.0.0.1", tls_backend)
    check = HealthCheckConfig(timeout=WAIT)
    context = client_context(UpstreamTlsConfig(ca=certs.ca_file))
    async with aiohttp.ClientSession() as session:
        result = await probe(session, url, check, ProbeTls(context, "node.test"))
        assert result.ok and result.version == "v1", result.detail
        wrong = await probe(session, url, check, ProbeTls(context, "other.test"))
        assert not wrong.ok and "certificate" in wrong.detail.lower()


async def test_a_gateway_proxies_to_an_https_node(certs: Certs, tls_backend: int,
                                                  gateway: Any, http: Any) -> None:
    gw = await gateway([f"https://127.0.0.1:{tls_backend}"],
                       upstream_tls={"ca": certs.ca_file, "server_name": "node.test"})
    [node] = gw.cluster
    await wait_for(lambda: node.state is NodeState.HEALTHY, WAIT, "the https node is healthy")
    for _ in range(2):
        async with http.get(f"{gw.traffic_url}/") as resp:
            assert resp.status == 200
            assert (await resp.json())["node"] == "node-1"
    pool = gw.pools[node]
    assert pool.ssl is gw.client_tls and pool.server_hostname == "node.test"
    assert pool.size == 1  # both requests went over one TLS connection


async def test_a_websocket_to_an_https_node_goes_over_tls(certs: Certs, tls_backend: int,
                                                          gateway: Any, http: Any) -> None:
    """The tunnel reaches the node as its pool does: TLS, the node's certificate checked
    for upstream_tls.server_name. (It used to speak plain TCP to the TLS port.)"""
    gw = await gateway([f"https://127.0.0.1:{tls_backend}"],
                       upstream_tls={"ca": certs.ca_file, "server_name": "node.test"})
    [node] = gw.cluster
    await wait_for(lambda: node.state is NodeState.HEALTHY, WAIT, "the https node is healthy")
    async with http.ws_connect(f"{gw.traffic_url}/ws") as ws:
        await ws.send_str("over tls")
        reply = await asyncio.wait_for(ws.receive(), WAIT)
        assert reply.type is aiohttp.WSMsgType.TEXT and "over tls" in reply.data


def test_a_gateway_refuses_a_missing_upstream_ca(tmp_path: Path, certs: Certs) -> None:
    text = f"""admin: {{token: t}}
nodes: [{{name: node-1, url: "https://127.0.0.1:1"}}]
upstream_tls: {{ca: "{tmp_path}/missing.pem"}}
state_dir: "{tmp_path}/state"
"""
    with pytest.raises(ConfigError, match=f"upstream_tls: upstream CA {tmp_path}/missing.pem: "
                                          "no such file"):
        Gateway(parse_config(text, "gw.yaml"), config_path="gw.yaml")


# -- config ------------------------------------------------------------------------------------

BASE = 'admin: {token: "t"}\nnodes: [{name: node-1, url: "http://127.0.0.1:9601"}]\n'


def load(text: str) -> Any:
    return parse_config(BASE + text, "gw.yaml")


@pytest.mark.parametrize(("url", "scheme", "port", "text"), [
    ("https://10.0.0.5:8443", "https", 8443, "https://10.0.0.5:8443"),
    ("https://api-1.internal", "https", 443, "https://api-1.internal"),
    ("https://api-1.internal:443/", "https", 443, "https://api-1.internal"),
    ("http://api-1.internal", "http", 80, "http://api-1.internal"),
    ("http://10.0.0.5:8000", "http", 8000, "http://10.0.0.5:8000"),
    ("https://[::1]", "https", 443, "https://[::1]"),
])
def test_node_urls(url: str, scheme: str, port: int, text: str) -> None:
    parsed = NodeURL.parse(url)
    assert (parsed.scheme, parsed.port, str(parsed)) == (scheme, port, text)
    assert parsed.tls == (scheme == "https")


@pytest.mark.parametrize("url", ["ftp://x", "https://x/api", "https://x?a=1", "https://x:",
                                 "http://h:99999", "http://[::1", "https://", "x:80", 8080])
def test_node_urls_refused(url: object) -> None:
    with pytest.raises(ValueError, match="expected a URL like"):
        NodeURL.parse(url)


def test_https_node_in_a_config() -> None:
    config = parse_config('admin: {token: t}\nnodes: [{name: a, url: "https://a.internal"}]\n'
                          'upstream_tls: {ca: /etc/hagw/nodes-ca.pem, server_name: a.svc}\n')
    assert config.nodes[0].url.port == 443 and config.nodes[0].url.tls
    assert config.upstream_tls == UpstreamTlsConfig(ca="/etc/hagw/nodes-ca.pem",
                                                    server_name="a.svc")


def test_admin_off_loopback_needs_tls_or_insecure() -> None:
    text = 'admin: {token: "t", listen: "0.0.0.0:9901"}\nnodes: [{name: a, url: "http://h:1"}]\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, "gw.yaml")
    assert str(err.value) == (
        "gw.yaml:1: admin.listen: 0.0.0.0:9901 is not a loopback address: the admin token "
        "would cross the network in clear text; set admin.tls, or admin.insecure: true to "
        "accept that")
    assert parse_config(text.replace("}", ", insecure: true}", 1)).admin.insecure
    tls = parse_config(text.replace("}", ", tls: {cert: a.pem, key: a.key}}", 1)).admin.tls
    assert tls == TlsConfig(cert="a.pem", key="a.key")
    for loopback in ("127.0.0.1:1", "127.8.9.10:1", "localhost:1", "[::1]:1",
                     "[::ffff:127.0.0.1]:1"):
        parse_config(text.replace("0.0.0.0:9901", loopback))
    for remote in ("10.0.0.1:1", "[::]:1", "admin.internal:1", "[::ffff:10.0.0.1]:1"):
        with pytest.raises(ConfigError, match="not a loopback address"):
            parse_config(text.replace("0.0.0.0:9901", remote))


def test_tls_config_keys() -> None:
    config = load("""tls:
  cert: /etc/hagw/gateway.pem
  key: /etc/hagw/gateway.key
  min_version: 1.3
  ciphers: "ECDHE+AESGCM"
  client_ca: /etc/hagw/clients.pem
  http_redirect: "0.0.0.0:80"
  hsts: {max_age: 365d, include_subdomains: true, preload: true}
  sni:
    - {names: [api.example.com, "*.apps.example.com"], cert: /a.pem, key: /a.key}
""")
    tls = config.tls
    assert tls is not None and tls.min_version == "1.3" and tls.alpn == ("http/1.1",)
    assert tls.sni[0].names == ("api.example.com", "*.apps.example.com")
    assert tls.http_redirect is not None and tls.http_redirect.port == 80
    assert tls.hsts is not None
    assert tls.hsts.header == "max-age=31536000; includeSubDomains; preload"
    assert tls.files == ("/etc/hagw/gateway.pem", "/etc/hagw/gateway.key", "/a.pem", "/a.key",
                         "/etc/hagw/clients.pem")
    assert load("tls: {cert: a, key: b}").tls == TlsConfig(cert="a", key="b")
    assert config.upstream_tls == UpstreamTlsConfig()


@pytest.mark.parametrize(("snippet", "message"), [
    ("tls: {cert: a.pem}", "gw.yaml:3: tls.key: required key is missing"),
    ("tls: {cert: a, key: b, alpn: [h2]}",
     "tls.alpn[0]: h2 (HTTP/2) is not supported yet; expected http/1.1"),
    ("tls: {cert: a, key: b, alpn: [spdy/3]}", "tls.alpn[0]: expected http/1.1, found 'spdy/3'"),
    ("tls: {cert: a, key: b, alpn: []}", "tls.alpn: expected at least one protocol"),
    ("tls: {cert: a, key: b, min_version: 1.1}",
     "tls.min_version: TLS 1.1 is refused (deprecated by RFC 8996); expected 1.2 or 1.3"),
    ('tls: {cert: a, key: b, min_version: "1.0"}', "tls.min_version: TLS 1.0 is refused"),
    ("tls: {cert: a, key: b, min_version: 2}",
     'tls.min_version: expected a TLS version, "1.2" or "1.3", found 2'),
    ("tls: {cert: a, key: b, ciphers: NOT-A-CIPHER}",
     "tls.ciphers: expected an OpenSSL cipher list like 'ECDHE+AESGCM:ECDHE+CHACHA20'; "
     "OpenSSL selects no cipher from 'NOT-A-CIPHER'"),
    ('tls: {cert: "", key: b}', "tls.cert: expected a file path, found an empty string"),
    ("tls: {cert: a, key: b, sni: [{names: [], cert: c, key: d}]}",
     "tls.sni[0].names: expected at least one name"),
    ('tls: {cert: a, key: b, sni: [{names: ["*.com"], cert: c, key: d}]}',
     "tls.sni[0].names[0]: expected a DNS name like api.example.com or a wildcard like "
     "*.example.com, found '*.com'"),
    ('tls: {cert: a, key: b, sni: [{names: ["a.*.example.com"], cert: c, key: d}]}',
     "tls.sni[0].names[0]: expected a DNS name"),
    ("tls: {cert: a, key: b, sni: [{names: [x.example], cert: c, key: d}, "
     "{names: [y.example, X.Example], cert: e, key: f}]}",
     "tls.sni[1].names[1]: 'X.Example' is already served by sni[0]"),
    ("tls: {cert: a, key: b, hsts: {}}", "tls.hsts.max_age: required key is missing"),
    ("tls: {cert: a, key: b, hsts: {max_age: 1d, preload: true}}",
     "tls.hsts.preload: expected include_subdomains: true and a max_age of 365d or more"),
    ('tls: {cert: a, key: b, http_redirect: "127.0.0.1:8080"}',
     "tls.http_redirect: 127.0.0.1:8080 is the traffic listener itself"),
    ("admin: {token: t, tls: {cert: a, key: b, hsts: {max_age: 1d}}}",
     "admin.tls.hsts: only the traffic listener's tls takes hsts"),
    ("upstream_tls: {cert: c.pem}",
     "upstream_tls.key: expected cert and key together (a client certificate needs its key)"),
    ("upstream_tls: {server_name: 'not a name'}",
     "upstream_tls.server_name: expected a DNS name like api.internal, found 'not a name'"),
    ("upstream_tls: {verify_hostname: no}", "upstream_tls.verify_hostname: expected true or false"),
])
def test_tls_config_errors(snippet: str, message: str) -> None:
    text = BASE + snippet + "\n"
    if snippet.startswith("admin:"):
        text = 'nodes: [{name: node-1, url: "http://127.0.0.1:9601"}]\n' + snippet + "\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "gw.yaml")
    assert message in str(err.value)


def test_check_files_reports_what_a_listener_would_serve(certs: Certs) -> None:
    pair = certs.issue("gateway", "gateway.test", "www.gateway.test")
    [info] = check_files(config(pair))
    assert info.label == "gateway.pem" and info.path == pair.cert
    assert info.names == ("gateway.test", "www.gateway.test")


def test_hagw_check_files_reads_the_tls_files(tmp_path: Path, certs: Certs) -> None:
    pair = certs.issue("gateway", "gateway.test",
                       not_after=datetime.datetime(2031, 6, 1, 12, 0, tzinfo=UTC))
    path = tmp_path / "gw.yaml"
    path.write_text(f"""admin: {{token: t}}
nodes: [{{name: node-1, url: "https://127.0.0.1:1"}}]
tls: {{cert: "{pair.cert}", key: "{pair.key}"}}
upstream_tls: {{ca: "{certs.ca_file}"}}
""")

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path),
                               *extra], capture_output=True, text=True, timeout=30)

    good = check("--files")
    assert good.returncode == 0, good.stderr
    assert f"tls: {pair.cert}: gateway.test, valid until 2031-06-01 12:00 UTC" in good.stdout
    assert f"upstream_tls: ok (CA {certs.ca_file})" in good.stdout
    Path(pair.key).unlink()
    assert check().returncode == 0  # the structure alone: fine on any machine
    bad = check("--files")
    assert bad.returncode == 2
    assert f"invalid config: {path}: tls: key {pair.key}: no such file" in bad.stderr
