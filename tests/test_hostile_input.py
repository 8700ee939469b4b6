"""Hostile input at the edge: exact bytes on raw sockets against a real gateway in front of a
real demo node, and malformed JSON on the admin API.

For every request that must be refused, the test asserts the client's answer (400, 408, 431...
or a closed connection) *and* that nothing reached the node: the demo node's own request
counter and write log stay empty, and so does aiohttp's count of every request its server
parsed (health checks are off, so the gateway's proxy is the node's only client).

The traffic listener parses with httptools (llhttp, with none of its lenient flags) and
adds the checks a reverse proxy needs on top (gateway/listener/connection.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from monitor.incident.tracker import Incident
from tests.conftest import auth, sample, wait_for

# -- a raw HTTP/1.1 client --------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer as read off the socket; ``status`` is None when the connection was
    closed (or reset) without one."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Interim answers (100 Continue) that came first.
    interim: list[int] = field(default_factory=list)
    version: str = "HTTP/1.1"

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        """The connection ends with this answer: nothing more is read from it."""
        connection = self.headers.get("connection", "").lower()
        return self.status is None or connection == "close" or (
            self.version != "HTTP/1.1" and connection != "keep-alive")


class Raw:
    """A TCP connection to the gateway that sends exactly the bytes it is given."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def __aenter__(self) -> Raw:
        self.reader, self.writer = await asyncio.open_connection(*self.address)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def send(self, data: bytes) -> bool:
        """False when the gateway already closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            return False
        return True

    async def answer(self, timeout: float = 10.0) -> Answer:
        interim: list[int] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    head = await self.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    assert not exc.partial, f"a truncated answer: {exc.partial!r}"
                    return Answer(None, interim=interim)
                except ConnectionError:
                    return Answer(None, interim=interim)
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ", 2)
                assert parts[0].startswith("HTTP/"), f"not an HTTP answer: {head!r}"
                status = int(parts[1])
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                if 100 <= status < 200:
                    interim.append(status)
                    continue
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = await self._chunked()
                else:
                    body = await self.reader.readexactly(int(headers.get("content-length", 0)))
                return Answer(status, headers, body, interim, parts[0])

    async def _chunked(self) -> bytes:
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return body
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the gateway closed the connection (and sent nothing more)."""
        try:
            async with asyncio.timeout(timeout):
                extra = await self.reader.read(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        assert extra == b"", f"the gateway sent more after its answer: {extra!r}"
        return True


async def exchange(address: tuple[str, int], *parts: bytes, pause: float = 0.0,
                   timeout: float = 10.0) -> Answer:
    """Send ``parts`` (``pause`` seconds apart) and read one answer."""
    async with Raw(address) as raw:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            if not await raw.send(part):
                break
        return await raw.answer(timeout)


# -- the gateway and its node -----------------------------------------------------------------


@dataclass
class Edge:
    gw: Any
    node: Any  # tests.conftest.Backend

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.gw.traffic_address[:2]
        return host, port

    def parsed_by_node(self) -> int:
        """Every request the node's HTTP server parsed, whatever became of it."""
        return int(self.node.runner.server.requests_count)

    def assert_nothing_forwarded(self) -> None:
        info = self.node.info
        assert (info.requests, info.writes, self.parsed_by_node()) == (0, [], 0), \
            "the node received something"


@pytest.fixture
async def edge(backends: Any, gateway: Any) -> Edge:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], health={"enabled": False},
                       limits={"client_header_timeout": "2s", "client_body_timeout": "2s",
                               "max_header": "4KB", "max_headers": 30, "max_body": "64KB"})
    return Edge(gw, nodes[0])


def head(*lines: str, method: str = "POST", target: str = "/orders") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: gw.example\r\n"
            + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode("latin-1")


def assert_refused(answer: Answer, *statuses: int) -> None:
    """The gateway answered one of ``statuses`` (400 by default) in JSON and ends the
    connection, or it closed the connection without an answer."""
    if answer.status is not None:
        assert answer.status in (statuses or (400,)), (answer.status, answer.body)
        assert answer.json()["error"], answer.body
    assert answer.closes, f"the connection stays open after a refused request: {answer}"


# -- the harness itself works -----------------------------------------------------------------


async def test_well_formed_requests_are_forwarded_once(edge: Edge) -> None:
    """The control case: the same harness sees valid requests reach the node, exactly once."""
    answer = await exchange(edge.address, head("Content-Length: 5") + b"hello")
    assert answer.status == 201 and answer.json()["accepted"] is True
    chunked = head("Transfer-Encoding: chunked") + b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    answer = await exchange(edge.address, chunked)
    assert answer.status == 201
    answer = await exchange(edge.address, head(method="GET", target="/echo?q=1"))
    assert answer.status == 200 and answer.json()["path"] == "/echo?q=1"
    assert [w["body"] for w in edge.node.info.writes] == ["hello", "abcde"]
    assert edge.parsed_by_node() == 3


# -- request smuggling and malformed framing -----------------------------------------------------

SMUGGLED = b"POST /orders HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 8\r\n\r\nsmuggled"

MALFORMED = {
    # Content-Length and Transfer-Encoding together (RFC 9112 §6.1): CL.TE and TE.CL.
    "cl.te": head(f"Content-Length: {5 + len(SMUGGLED)}", "Transfer-Encoding: chunked")
    + b"0\r\n\r\n" + SMUGGLED,
    "te.cl": head("Transfer-Encoding: chunked", "Content-Length: 4")
    + b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
    "te.cl, obfuscated te": head("Transfer-Encoding: xchunked", "Content-Length: 4")
    + b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
    "duplicate content-length": head("Content-Length: 8", "Content-Length: 30")
    + b"smuggled" + SMUGGLED[:22],
    "duplicate content-length, same value": head("Content-Length: 3", "Content-Length: 3")
    + b"abc",
    "content-length list": head("Content-Length: 3, 3") + b"abc",
    "signed content-length": head("Content-Length: +3") + b"abc",
    "negative content-length": head("Content-Length: -1") + b"abc",
    "content-length overflow": head("Content-Length: 99999999999999999999999999") + b"abc",
    # Transfer-Encoding that is not exactly "chunked" (RFC 9112 §6.1, §7).
    "te chunked, identity": head("Transfer-Encoding: chunked, identity")
    + b"3\r\nabc\r\n0\r\n\r\n",
    "te identity": head("Transfer-Encoding: identity") + b"3\r\nabc\r\n0\r\n\r\n",
    "te twice": head("Transfer-Encoding: chunked", "Transfer-Encoding: identity")
    + b"3\r\nabc\r\n0\r\n\r\n",
    "te with space before colon": head("Transfer-Encoding : chunked")
    + b"3\r\nabc\r\n0\r\n\r\n",
    # obs-fold (RFC 9112 §5.2): a line starting with a space or tab continues the one above.
    "obs-fold, space": head("X-Note: a", " folded"),
    "obs-fold, tab": head("X-Note: a", "\tfolded"),
    "obs-fold te": head("Transfer-Encoding:", " chunked") + b"3\r\nabc\r\n0\r\n\r\n",
    "whitespace before the first header": b"POST /orders HTTP/1.1\r\n Host: gw.example\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    # Bad chunk sizes.
    "chunk size not hex": head("Transfer-Encoding: chunked") + b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk size 0x": head("Transfer-Encoding: chunked") + b"0x3\r\nabc\r\n0\r\n\r\n",
    "chunk size negative": head("Transfer-Encoding: chunked") + b"-3\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": head("Transfer-Encoding: chunked")
    + b"fffffffffffffffff3\r\nabc\r\n0\r\n\r\n",
    "chunk size with trailing space": head("Transfer-Encoding: chunked")
    + b"3 \r\nabc\r\n0\r\n\r\n",
    "chunk longer than its size": head("Transfer-Encoding: chunked")
    + b"3\r\nabcdef\r\n0\r\n\r\n",
    "chunk lines end in LF": head("Transfer-Encoding: chunked") + b"3\nabc\n0\n\n",
    # Line endings: bare LF and bare CR.
    "bare LF everywhere": b"POST /orders HTTP/1.1\nHost: gw.example\nContent-Length: 3\n\nabc",
    "bare LF after one header": b"GET /echo HTTP/1.1\r\nHost: gw.example\nX-Note: a\r\n\r\n",
    "bare CR inside a value": head("X-Note: a\rInjected: yes", method="GET", target="/echo"),
    # CR, LF, NUL and other controls inside the request.
    "LF inside a value": head("X-Note: a\nInjected: yes", method="GET", target="/echo"),
    "NUL inside a value": head("X-Note: a\0b", method="GET", target="/echo"),
    "NUL inside a name": head("X-No\0te: a", method="GET", target="/echo"),
    "NUL inside the target": head(method="GET", target="/ec\0ho"),
    "control character inside a value": head("X-Note: a\x01b", method="GET", target="/echo"),
    "DEL inside a value": head("X-Note: a\x7fb", method="GET", target="/echo"),
    "space inside a name": head("X Note: a", method="GET", target="/echo"),
    "space before a colon": head("X-Note : a", method="GET", target="/echo"),
    "space inside the target": head(method="GET", target="/echo /x"),
    # Hosts.
    "no Host": b"GET /echo HTTP/1.1\r\n\r\n",
    "two Hosts": head("Host: other.example", method="GET", target="/echo"),
}

#: Refusals other than 400: a declared body over limits.max_body may be refused as such.
STATUSES = {"content-length overflow": (400, 413)}

@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_requests_never_reach_the_node(edge: Edge,
                                                       case: str) -> None:
    answer = await exchange(edge.address, MALFORMED[case])
    assert_refused(answer, *STATUSES.get(case, ()))
    edge.assert_nothing_forwarded()


@pytest.mark.parametrize("tail", [b"zz\r\nabc\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n",
                                  b"3\r\nabcdef\r\n0\r\n\r\n"],
                         ids=["not hex", "negative", "longer than its size"])
async def test_a_bad_chunk_after_a_good_one_cuts_the_request(edge: Edge,
                                                             tail: bytes) -> None:
    """A chunked body streams to the node as it arrives, so its head is already there when a
    later chunk turns out bad: the client gets an error and the node an incomplete request,
    which it never acts on."""
    answer = await exchange(edge.address, head("Transfer-Encoding: chunked")
                            + b"5\r\nhello\r\n", tail, pause=0.3)
    assert_refused(answer, 400, 408)
    assert edge.node.info.writes == []


async def test_a_bad_chunk_after_a_good_one_is_a_prompt_400(edge: Edge) -> None:
    """400 right away, not 408 once limits.client_body_timeout has passed."""
    answer = await exchange(edge.address, head("Transfer-Encoding: chunked")
                            + b"5\r\nhello\r\n", b"zz\r\nabc\r\n0\r\n\r\n", pause=0.3)
    assert_refused(answer, 400)
    assert edge.node.info.writes == []


async def test_trailers_are_not_forwarded(edge: Edge) -> None:
    """The gateway re-frames bodies itself, so a trailer can never smuggle framing headers."""
    answer = await exchange(edge.address, head("Transfer-Encoding: chunked")
                            + b"3\r\nabc\r\n0\r\nContent-Length: 40\r\n"
                              b"Transfer-Encoding: identity\r\n\r\n")
    # llhttp refuses a Content-Length even in trailers.
    assert_refused(answer)
    edge.assert_nothing_forwarded()


async def test_a_refused_request_takes_its_pipelined_followers_with_it(edge: Edge) -> None:
    valid = head("Content-Length: 2") + b"ok"
    async with Raw(edge.address) as raw:
        await raw.send(MALFORMED["cl.te"] + valid + valid)
        assert_refused(await raw.answer())
        assert await raw.closed()
    edge.assert_nothing_forwarded()


# -- protocol versions, CONNECT and request targets -----------------------------------------


@pytest.mark.parametrize(("request_line", "status"), [
    pytest.param(b"GET /echo HTTP/1.2", 400, id="HTTP/1.2"),
    pytest.param(b"GET /echo HTTP/3.0", 400, id="HTTP/3.0"),
    pytest.param(b"PRI * HTTP/2.0", 400, id="HTTP/2 preface"),
    # llhttp accepts these two; the gateway refuses them itself (listener.screen).
    pytest.param(b"GET /echo HTTP/2.0", 505, id="HTTP/2.0"),
    pytest.param(b"GET /echo", 505, id="HTTP/0.9"),
])
async def test_unsupported_http_versions_are_refused(edge: Edge, request_line: bytes,
                                                     status: int) -> None:
    answer = await exchange(edge.address, request_line + b"\r\nHost: gw.example\r\n\r\n")
    assert_refused(answer, status)
    edge.assert_nothing_forwarded()


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"GET /echo HTTP/1.1\r\nHost: gw.example\r\nX-Big: " + b"a" * 5000
                 + b"\r\n\r\n", id="431"),
    pytest.param(b"GET /echo HTTP/1.1\r\nHost: gw.example\r\nno colon here\r\n\r\n",
                 id="400"),
    pytest.param(b"GET /echo HTTP/2.0\r\nHost: gw.example\r\n\r\n", id="505"),
])
async def test_the_gateways_own_refusals_speak_http11(edge: Edge, request_bytes: bytes) -> None:
    """RFC 9112 section 2.3: the highest version the gateway supports, up to the request's
    major version; never the HTTP/1.0 of an unparsed request, nor a 505 in HTTP/2.0."""
    answer = await exchange(edge.address, request_bytes)
    assert answer.status in (400, 431, 505)
    assert answer.version == "HTTP/1.1"
    edge.assert_nothing_forwarded()


async def test_transfer_encoding_in_http10_is_refused(edge: Edge) -> None:
    answer = await exchange(edge.address, b"POST /orders HTTP/1.0\r\nHost: gw.example\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert_refused(answer)
    edge.assert_nothing_forwarded()


async def test_connect_is_refused(edge: Edge) -> None:
    answer = await exchange(
        edge.address, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n" + SMUGGLED)
    assert_refused(answer, 405)
    edge.assert_nothing_forwarded()


# -- headers: injection, hop-by-hop, sizes ------------------------------------------------------


async def test_encoded_crlf_is_text_not_a_header(edge: Edge) -> None:
    answer = await exchange(edge.address, head("X-Note: a%0d%0aInjected: yes",
                                                  method="GET", target="/echo"))
    assert answer.status == 200
    received = {k.lower(): v for k, v in answer.json()["headers"]}
    assert received["x-note"] == "a%0d%0aInjected: yes"
    assert "injected" not in received


async def test_headers_named_in_connection_are_dropped_wherever_they_are(edge: Edge) -> None:
    answer = await exchange(edge.address, head("X-Hop: secret", "Connection: keep-alive, X-Hop",
                                                  "X-Kept: yes", method="GET", target="/echo"))
    assert answer.status == 200
    received = {k.lower() for k, _ in answer.json()["headers"]}
    assert "x-kept" in received
    assert "x-hop" not in received


async def test_headers_a_node_names_in_connection_never_reach_the_client(
        gateway: Any) -> None:
    async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nX-Hop: secret\r\nConnection: X-Hop, Keep-Alive\r\n"
                         b"Keep-Alive: timeout=5\r\nX-Kept: yes\r\nX-Hop-2: secret\r\n"
                         b"Connection: X-Hop-2\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(node, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        gw = await gateway([f"http://127.0.0.1:{port}"], health={"enabled": False})
        answer = await exchange(gw.traffic_address, head(method="GET", target="/x"))
    assert answer.status == 200 and answer.body == b"ok"
    assert answer.headers["x-kept"] == "yes"
    assert not {"x-hop", "x-hop-2", "keep-alive"} & set(answer.headers), answer.headers


@pytest.mark.parametrize(("raw_request", "status"), [
    pytest.param(head("X-Big: " + "a" * 5000, method="GET", target="/echo"), 431,
                 id="one long header line"),
    pytest.param(head("X-" + "n" * 5000 + ": a", method="GET", target="/echo"), 431,
                 id="one long header name"),
    pytest.param(head(*[f"X-H{i}: v" for i in range(40)], method="GET", target="/echo"), 431,
                 id="too many headers"),
    pytest.param(head(*[f"X-H{i}: {'v' * 200}" for i in range(25)], method="GET",
                      target="/echo"), 431, id="too many bytes of headers"),
    # RFC 9110 §15.5.15 would say 414 for a long request target; 431 is what the gateway says.
    pytest.param(head(method="GET", target="/echo?" + "q" * 5000), 431, id="long target"),
    pytest.param(head("Content-Length: 70000") + b"x" * 100, 413, id="body over max_body"),
])
async def test_oversized_requests(edge: Edge, raw_request: bytes, status: int) -> None:
    async with Raw(edge.address) as raw:
        await raw.send(raw_request)
        answer = await raw.answer()
    assert answer.status == status and answer.json()["error"]
    edge.assert_nothing_forwarded()


async def test_headers_over_the_limit_are_refused_before_they_end(edge: Edge) -> None:
    """The total is capped while parsing: a head that never ends gets its 431 within about
    twice limits.max_header (4KB here), not after a whole read or megabytes were buffered,
    nor at the header timeout."""
    async with Raw(edge.address) as raw:
        await raw.send(b"GET /echo HTTP/1.1\r\nHost: gw.example\r\nX-Big: " + b"a" * 12_000)
        answer = await raw.answer(timeout=5)
    assert answer.status == 431
    edge.assert_nothing_forwarded()


# -- slow clients -------------------------------------------------------------------------


async def slowloris(address: tuple[str, int], every: float, stop: asyncio.Event) -> Answer:
    """Trickle header bytes (one every ``every`` seconds) and never finish the headers."""
    async with Raw(address) as raw:
        sent = await raw.send(b"GET /echo HTTP/1.1\r\nHost: gw.example\r\nX-Slow: ")
        reading = asyncio.create_task(raw.answer(timeout=30))
        try:
            while sent and not reading.done() and not stop.is_set():
                await asyncio.sleep(every)
                sent = await raw.send(b"a")
            answer = await reading
        finally:
            reading.cancel()
        assert answer.status is None or await raw.closed()
        return answer


async def test_slowloris_clients_are_cut_off_and_others_still_served(
        edge: Edge, http: aiohttp.ClientSession) -> None:
    """limits.client_header_timeout is 2s here: each slow client gets 408 and a closed
    connection, and normal clients get their answers while the slow ones hang on."""
    stop = asyncio.Event()
    started = time.monotonic()
    slow = [asyncio.create_task(slowloris(edge.address, 0.2, stop)) for _ in range(6)]

    async def silent() -> Answer:  # connects and never sends a byte
        async with Raw(edge.address) as raw:
            answer = await raw.answer(timeout=30)
            assert answer.status is None or await raw.closed()
            return answer

    slow.append(asyncio.create_task(silent()))
    server = edge.gw.traffic_server.state
    try:
        await wait_for(lambda: len(server.connections) >= len(slow), what="slow clients")
        served = served_alongside = 0
        for _ in range(20):
            before = sum(1 for task in slow if not task.done())
            async with http.get(f"{edge.gw.traffic_url}/echo",
                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
                assert resp.status == 200
            served += 1
            if before == sum(1 for task in slow if not task.done()) == len(slow):
                served_alongside += 1
        answers = await asyncio.wait_for(asyncio.gather(*slow), timeout=20)
    finally:
        stop.set()
        for task in slow:
            task.cancel()
    assert served_alongside > 0, "no request was served while the slow clients were connected"
    assert [a.status for a in answers] == [408] * len(answers)
    assert time.monotonic() - started < 15
    assert edge.node.info.requests == served == edge.parsed_by_node()


async def test_a_stalled_body_is_cut_off(edge: Edge) -> None:
    async with Raw(edge.address) as raw:
        await raw.send(head("Content-Length: 10") + b"12345")
        answer = await raw.answer(timeout=15)  # limits.client_body_timeout is 2s here
        assert_refused(answer, 408)
    edge.assert_nothing_forwarded()


def gateway_errors(records: list[logging.LogRecord]) -> list[str]:
    """What the gateway itself logged at ERROR (the demo node's aiohttp may log its own)."""
    return [r.getMessage() for r in records
            if r.name.startswith("hagw") and r.levelno >= logging.ERROR]


def slo_counts(gw: Any) -> tuple[int, int, int]:
    good, bad, excluded = gw.slo.totals
    return good, bad, excluded


async def test_a_client_that_stops_reading_is_cut_and_frees_the_node(
        backends: Any, gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    """limits.client_send_timeout (nginx's send_timeout): a client that reads nothing of
    a big answer is cut, its node connection and in-flight slot freed, nothing charged
    to the SLO, and no traceback logged."""
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], health={"enabled": False},
                       limits={"client_send_timeout": "1s"})
    node = gw.cluster.get("node-1")
    async with Raw(gw.traffic_address) as raw:
        raw.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                        4096)
        raw.writer.transport.pause_reading()
        await raw.send(head(method="GET", target="/download?size=50000000"))
        await wait_for(lambda: node.in_flight == 1, what="the download started")
        started = time.monotonic()
        await wait_for(lambda: node.in_flight == 0, timeout=10, what="the node freed")
        assert time.monotonic() - started < 5
    await wait_for(lambda: sum(slo_counts(gw)) == 1, what="the request counted")
    assert slo_counts(gw) == (0, 0, 1)  # 499, the client's own doing: excluded
    assert gateway_errors(caplog.records) == []


@pytest.mark.parametrize("sent", [100, 150_000], ids=["buffered body", "streamed body"])
async def test_a_client_gone_mid_body_is_not_an_error(
        backends: Any, gateway: Any, caplog: pytest.LogCaptureFixture, sent: int) -> None:
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], health={"enabled": False})
    async with Raw(gw.traffic_address) as raw:
        await raw.send(head("Content-Length: 1000000", target="/upload") + b"x" * sent)
        await asyncio.sleep(0.2)
    await wait_for(lambda: gw.traffic_server.state.busy() == 0, what="the request ended")
    assert slo_counts(gw)[1] == 0
    assert gateway_errors(caplog.records) == []
    assert gw.cluster.get("node-1").ejected_until is None


async def test_a_slow_upload_is_not_the_nodes_timeout(backends: Any, gateway: Any) -> None:
    """timeouts.request counts from the end of the request: a client that takes longer
    than that to send its body (each part within client_body_timeout) gets the node's
    answer, not a 504 charged to the SLO and to the node."""
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], health={"enabled": False},
                       timeouts={"request": "500ms"},
                       retries={"per_try_timeout": "400ms"})
    part = b"x" * 70_000
    parts = [head(f"Content-Length: {len(part) * 5}", target="/upload")] + [part] * 5
    answer = await exchange(gw.traffic_address, *parts, pause=0.25)
    assert answer.status == 200, answer.body
    assert answer.json()["body_size"] == len(part) * 5
    assert slo_counts(gw) == (1, 0, 0)
    assert sample(gw, "hagw_upstream_requests_total", node="node-1", code_class="error") == 0


async def test_public_failure_answers_name_no_node(
        backends: Any, gateway: Any, http: aiohttp.ClientSession) -> None:
    """A 504 from the per-try timeout and a 503 from a node's circuit breaker say what
    happened, not which node or address (the log has that)."""
    nodes = await backends(1)
    gw = await gateway([nodes[0].url], health={"enabled": False},
                       retries={"attempts": 1, "per_try_timeout": "200ms"},
                       overload={"max_node_requests": 1})
    slow = asyncio.create_task(exchange(gw.traffic_address,
                                        head(method="GET", target="/slow?ms=1500")))
    await wait_for(lambda: gw.cluster.get("node-1").in_flight == 1, what="one in flight")
    full = await exchange(gw.traffic_address, head(method="GET", target="/x"))
    late = await slow
    assert (late.status, full.status) == (504, 503)
    for answer in (late, full):
        text = answer.body.decode()
        assert "node-1" not in text and str(nodes[0].port) not in text, text
        assert answer.json()["request_id"]


async def test_a_failed_websocket_upgrade_names_no_node(gateway: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = await gateway([f"http://127.0.0.1:{port}"], health={"enabled": False})
    answer = await exchange(gw.traffic_address, head(
        "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", method="GET", target="/ws"))
    assert answer.status == 502
    assert str(port) not in answer.body.decode() and "node-1" not in answer.body.decode()


# -- Host, absolute-form targets and where the gateway connects ---------------------------------


@dataclass
class Canary:
    """A listener the gateway must never connect to."""

    port: int
    connections: int = 0


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    found = Canary(0)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    async with server:
        yield found


@pytest.mark.parametrize("make", [
    lambda c: head(f"Host: 127.0.0.1:{c.port}", method="GET", target="/echo").replace(
        b"Host: gw.example\r\n", b""),
    lambda c: head("Host: 169.254.169.254", method="GET", target="/echo").replace(
        b"Host: gw.example\r\n", b""),
    lambda c: head("Host: localhost:22", method="GET", target="/echo").replace(
        b"Host: gw.example\r\n", b""),
    lambda c: head(f"Host: [::1]:{c.port}", method="GET", target="/echo").replace(
        b"Host: gw.example\r\n", b""),
    lambda c: head(f"X-Forwarded-Host: 127.0.0.1:{c.port}", "Forwarded: host=127.0.0.1",
                   method="GET", target="/echo"),
    lambda c: head(method="GET", target=f"http://127.0.0.1:{c.port}/echo"),
    lambda c: head(method="GET", target="http://169.254.169.254/latest/meta-data/"),
    lambda c: head(method="GET", target=f"//127.0.0.1:{c.port}/echo"),
    lambda c: head(method="OPTIONS", target="*"),
], ids=["host canary", "host metadata", "host ssh", "host ipv6", "x-forwarded-host",
        "absolute-form canary", "absolute-form metadata", "network-path target", "asterisk"])
async def test_the_gateway_only_ever_connects_to_its_nodes(
        edge: Edge, canary: Canary, make: Callable[[Canary], bytes]) -> None:
    answer = await exchange(edge.address, make(canary))
    if edge.parsed_by_node():
        assert edge.parsed_by_node() == 1 and answer.status is not None  # the node answered
    else:
        assert_refused(answer, 400, 405)
    assert canary.connections == 0


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A node that records the exact request heads it receives and answers 200."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads


async def test_absolute_form_reaches_the_node_in_origin_form(
        gateway: Any, recorder: tuple[str, list[bytes]]) -> None:
    url, heads = recorder
    gw = await gateway([url], health={"enabled": False})
    answer = await exchange(gw.traffic_address, head(
        method="GET", target="http://evil.example:8443/a/b?c=d"))
    assert answer.status == 200
    lines = heads[0].decode("latin-1").split("\r\n")
    assert lines[0] == "GET /a/b?c=d HTTP/1.1"
    sent = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    # One authority everywhere: the node, its logs and X-Forwarded-Host agree.
    assert sent["host"] == sent["x-forwarded-host"] == "evil.example:8443"


def received_headers(raw_head: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in raw_head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


SPOOFED = ("X-Forwarded-For: 203.0.113.9", "X-Forwarded-Proto: https",
           "X-Forwarded-Host: bank.example", "X-Real-IP: 203.0.113.9",
           "Forwarded: for=203.0.113.9;proto=https;host=bank.example")


async def test_forwarding_headers_from_a_client_are_the_gateways_own(
        gateway: Any, recorder: tuple[str, list[bytes]]) -> None:
    """At the edge the node learns only what the gateway saw: a client's X-Forwarded-*
    are replaced, never appended to, and X-Real-IP and Forwarded are dropped."""
    url, heads = recorder
    gw = await gateway([url], health={"enabled": False})
    answer = await exchange(gw.traffic_address, head(*SPOOFED, method="GET", target="/"))
    assert answer.status == 200
    sent = received_headers(heads[0])
    assert sent["x-forwarded-for"] == ["127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == ["gw.example"]
    assert "x-real-ip" not in sent and "forwarded" not in sent


async def test_forwarding_headers_from_a_trusted_proxy_are_kept(
        gateway: Any, recorder: tuple[str, list[bytes]]) -> None:
    url, heads = recorder
    gw = await gateway([url], health={"enabled": False}, trusted_proxies=["127.0.0.0/8"])
    answer = await exchange(gw.traffic_address, head(*SPOOFED, method="GET", target="/"))
    assert answer.status == 200
    sent = received_headers(heads[0])
    assert sent["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["https"]
    assert sent["x-forwarded-host"] == ["bank.example"]
    assert sent["x-real-ip"] == ["203.0.113.9"]
    assert sent["forwarded"] == ["for=203.0.113.9;proto=https;host=bank.example"]


async def test_a_websocket_upgrade_gets_the_same_forwarding_headers(
        gateway: Any, recorder: tuple[str, list[bytes]]) -> None:
    url, heads = recorder
    gw = await gateway([url], health={"enabled": False})
    answer = await exchange(gw.traffic_address, head(
        *SPOOFED, "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", method="GET", target="/ws"))
    assert answer.status == 200  # the recorder does not upgrade: its answer is relayed
    sent = received_headers(heads[0])
    assert sent["x-forwarded-for"] == ["127.0.0.1"]
    assert sent["x-forwarded-proto"] == ["http"]
    assert sent["x-forwarded-host"] == ["gw.example"]
    assert "x-real-ip" not in sent and "forwarded" not in sent


async def test_behind_a_trusted_proxy_rate_limits_key_on_the_real_client(
        gateway: Any, recorder: tuple[str, list[bytes]]) -> None:
    url, _ = recorder
    gw = await gateway([url], health={"enabled": False}, trusted_proxies=["127.0.0.1"],
                       rate_limit={"enabled": True, "rate": 0.001, "burst": 1})
    first = await exchange(gw.traffic_address, head("X-Forwarded-For: 198.51.100.1",
                                                    method="GET", target="/"))
    other = await exchange(gw.traffic_address, head("X-Forwarded-For: 198.51.100.2",
                                                    method="GET", target="/"))
    again = await exchange(gw.traffic_address, head("X-Forwarded-For: 198.51.100.1",
                                                    method="GET", target="/"))
    assert (first.status, other.status, again.status) == (200, 200, 429)


async def test_upgrades_a_node_refuses_charge_nothing_to_the_slo(
        gateway: Any, raw_node: Callable[..., Any]) -> None:
    """Issue 16, item 4: upgrades to a path the node does not upgrade get the node's own
    answer, and cost the error budget nothing (no incident, no page, no deploy gate)."""
    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(response(b"no websocket here", status="404 Not Found"))
        await writer.drain()
        return False

    node = await raw_node(script)
    gw = await gateway([node.url], health={"enabled": False},
                       incidents={"min_requests": 1})
    for _ in range(10):
        answer = await exchange(gw.traffic_address, head(
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", method="GET", target="/api"))
        assert (answer.status, answer.body) == (404, b"no websocket here")
    assert gw.slo.totals[1] == 0
    assert gw.slo.budget_remaining() == 1.0
    assert not [i for i in gw.incidents.tracker.incidents.values() if i.status == "open"]


@pytest.mark.parametrize("given", ["<script>alert(1)</script>", "a b", "x" * 129,
                                   "id\tinjected", "ok-1\", \"admin\": true"])
async def test_an_x_request_id_that_does_not_look_like_one_is_replaced(
        edge: Edge, given: str) -> None:
    """Envoy regenerates an external client's id; hagw keeps one only if it is 1 to 128 of
    A-Za-z0-9._:@/+=-, so it never injects into logs, JSON or headers."""
    answer = await exchange(edge.address, head(f"X-Request-Id: {given}", method="GET",
                                               target="/echo"))
    assert answer.status == 200
    sent = {k.lower(): v for k, v in answer.json()["headers"]}["x-request-id"]
    assert sent != given and sent == answer.headers["x-request-id"]
    kept = await exchange(edge.address, head("X-Request-Id: trace-7f3a:2@edge", method="GET",
                                             target="/echo"))
    assert kept.headers["x-request-id"] == "trace-7f3a:2@edge"


async def test_header_names_with_underscores_are_dropped(
        gateway: Any, recorder: tuple[str, list[bytes]]) -> None:
    """nginx's underscores_in_headers off: CGI, WSGI and PHP read X_Forwarded_For as
    X-Forwarded-For, so a node must never see one."""
    url, heads = recorder
    gw = await gateway([url], health={"enabled": False})
    answer = await exchange(gw.traffic_address, head(
        "X_Forwarded_For: 203.0.113.9", "X-Real_IP: 203.0.113.9", "X-Kept: yes",
        method="GET", target="/"))
    assert answer.status == 200
    sent = received_headers(heads[0])
    assert sent["x-kept"] == ["yes"]
    assert not [name for name in sent if "_" in name], sent


@pytest.mark.parametrize("host", [
    "bad host", "a/b", "a@b", "a:b:c", "[::1", "host:99999x", "a\\b", "é.example", "<x>",
])
async def test_an_invalid_host_is_a_400(edge: Edge, host: str) -> None:
    request = head(method="GET", target="/echo").replace(b"gw.example", host.encode("utf-8"))
    assert_refused(await exchange(edge.address, request))
    edge.assert_nothing_forwarded()


@pytest.mark.parametrize("host", ["gw.example", "gw.example:8080", "127.0.0.1:80", "[::1]:8080",
                                  "my_host.internal", "xn--bcher-kva.example"])
async def test_valid_hosts_are_forwarded(edge: Edge, host: str) -> None:
    request = head(method="GET", target="/echo").replace(b"gw.example", host.encode())
    answer = await exchange(edge.address, request)
    assert answer.status == 200
    assert {k.lower(): v for k, v in answer.json()["headers"]}["host"] == host


async def test_an_empty_host_is_the_nodes(edge: Edge) -> None:
    """RFC 9110 section 7.2 allows an empty Host; the node gets its own, and only one."""
    request = head(method="GET", target="/echo").replace(b"Host: gw.example", b"Host:")
    answer = await exchange(edge.address, request)
    assert answer.status == 200
    hosts = [v for k, v in answer.json()["headers"] if k.lower() == "host"]
    assert hosts == [f"127.0.0.1:{edge.node.port}"]


@pytest.mark.parametrize(("method", "status"), [("TRACE", 405), ("TRACK", 400)])
async def test_trace_is_refused(edge: Edge, method: str, status: int) -> None:
    answer = await exchange(edge.address, head("Cookie: session=secret", method=method,
                                               target="/echo"))
    assert_refused(answer, status)
    assert b"secret" not in answer.body
    assert "TRACE" not in answer.headers.get("allow", "")
    edge.assert_nothing_forwarded()


# -- the admin API's JSON ------------------------------------------------------------------------


@pytest.fixture
async def admin(backends: Any, gateway: Any, tmp_path: Any) -> Any:
    nodes = await backends(2)
    gw = await gateway([b.url for b in nodes],
                       deploy={"command": ["true"], "verify_version": False})
    now = gw.clock.time()
    gw.incidents.tracker.restore(Incident(id="inc-test", title="a test incident",
                                          opened_at=now, started_at=now))
    return gw


NOT_JSON = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"", None),  # no body: required bodies say so, optional ones are fine
    (b"[]", "expected a JSON object, found list"),
    (b'"drain"', "expected a JSON object, found str"),
    (b"5", "expected a JSON object, found int"),
    (b"null", "expected a JSON object, found NoneType"),
    (b"true", "expected a JSON object, found bool"),
]

WRONG = {
    "/nodes/node-1/drain": [({"reason": 5}, "reason: expected str")],
    "/nodes/node-1/undrain": [({"reason": ["x"]}, "reason: expected str")],
    "/deploys": [({}, "version: expected a non-empty string"),
                 ({"version": 2}, "version: expected str"),
                 ({"version": "  "}, "version: expected a non-empty string"),
                 # It reaches deploy commands and scripts: checked as given, never stripped.
                 ({"version": "v2; touch X"}, "version: invalid version 'v2; touch X'"),
                 ({"version": "$(id)"}, "version: invalid version"),
                 ({"version": "../../x"}, "version: invalid version"),
                 ({"version": "--help"}, "version: invalid version"),
                 ({"version": " v2\n"}, "version: invalid version"),
                 ({"version": "v2", "force": "yes"}, "force: expected bool"),
                 ({"version": "v2", "reason": {}}, "reason: expected str")],
    "/deploys/d-unknown/abort": [({"reason": 1.5}, "reason: expected str")],
    "/maintenance": [({"start": 5}, "expected a time"),
                     ({"start": "tomorrow"}, "expected a time"),
                     ({"end": []}, "expected a time"),
                     ({"duration": []}, "expected a duration"),
                     ({"duration": "5x"}, "expected a duration"),
                     ({"duration": True}, "expected a duration"),
                     ({"duration": -5}, "above zero"),
                     ({"nodes": "node-1"}, "nodes: expected a list"),
                     ({"nodes": [1]}, "nodes: expected a list"),
                     ({"nodes": ["node-9"]}, "no node named node-9"),
                     ({"reason": 5}, "reason: expected str")],
    "/incidents/inc-test/notes": [({}, "text: expected a non-empty string"),
                                  ({"text": 5}, "text: expected str"),
                                  ({"text": " "}, "text: expected a non-empty string")],
}
REQUIRED = {"/deploys", "/maintenance", "/incidents/inc-test/notes"}


@pytest.mark.parametrize("path", list(WRONG))
async def test_malformed_admin_json_is_a_400_with_a_reason(
        admin: Any, http: aiohttp.ClientSession, path: str) -> None:
    bodies: list[tuple[bytes, str | None]] = [
        *NOT_JSON, *((json.dumps(data).encode(), why) for data, why in WRONG[path])]
    for body, why in bodies:
        if why is None:
            if path not in REQUIRED:
                continue
            why = "expected a JSON object body"
        async with http.post(f"{admin.admin_url}{path}", data=body,
                             headers={**auth(), "Content-Type": "application/json"}) as resp:
            assert resp.status == 400, (body, resp.status, await resp.text())
            answer = await resp.json()
            assert answer["error"] == "bad_request", body
            assert why in answer["message"], (body, answer)
    # None of it changed anything.
    assert {n.name: n.state.value for n in admin.cluster} == {"node-1": "HEALTHY",
                                                             "node-2": "HEALTHY"}
    assert admin.deploys.history() == []
    assert admin.maintenance.schedule.windows == {}
    assert admin.incidents.tracker.incidents["inc-test"].notes == []


@pytest.mark.parametrize(("path", "data"), [
    ("/nodes/node-1/undrain", {"force": "yes"}),
    ("/maintenance", {"nodes": ""}),
    ("/maintenance", {"nodes": 0}),
    ("/maintenance", {"nodes": False}),
    ("/maintenance", {"nodes": {}}),
])
async def test_wrong_types_are_refused_even_when_unused(
        admin: Any, http: aiohttp.ClientSession, path: str, data: dict[str, Any]) -> None:
    async with http.post(f"{admin.admin_url}{path}", json=data, headers=auth()) as resp:
        assert resp.status == 400, await resp.text()
    assert admin.maintenance.schedule.windows == {}


async def test_deeply_nested_admin_json_is_a_400(admin: Any, http: aiohttp.ClientSession) -> None:
    for body in (b"[" * 100_000, b'{"a": ' * 100_000):
        async with http.post(f"{admin.admin_url}/deploys", data=body, headers=auth()) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "bad_request"


async def test_unrepresentable_maintenance_windows_are_refused(
        admin: Any, http: aiohttp.ClientSession) -> None:
    for body in (b'{"duration": 1e300}', b'{"duration": NaN}', b'{"duration": Infinity}',
                 b'{"duration": "99999999d"}', b'{"start": "9999-12-31T23:00Z", "duration": "2h"}'):
        async with http.post(f"{admin.admin_url}/maintenance", data=body, headers=auth()) as resp:
            assert resp.status == 400, (body, await resp.text())
            assert (await resp.json())["error"] == "bad_request"
        for path in ("/maintenance", "/status.json", "/status"):
            async with http.get(f"{admin.admin_url}{path}") as resp:
                assert resp.status == 200, (body, path, await resp.text())
    assert admin.maintenance.schedule.windows == {}


async def test_incident_not_found_is_valid_json_whatever_the_id(
        admin: Any, http: aiohttp.ClientSession) -> None:
    for name in ('a"b', "back\\slash", "tab\tx", "é"):
        for path in (f"/incidents/{name}", f"/incidents/{name}/report"):
            async with http.get(f"{admin.admin_url}{path}") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"] == "not_found"


async def test_admin_bodies_over_the_size_limit_are_413(admin: Any,
                                                        http: aiohttp.ClientSession) -> None:
    body = io.BytesIO(json.dumps({"reason": "x" * (1024 * 1024 + 1)}).encode())
    async with http.post(f"{admin.admin_url}/nodes/node-1/drain", data=body,
                         headers=auth()) as resp:
        assert resp.status == 413 and (await resp.json())["error"]
    assert admin.cluster.get("node-1").state.value == "HEALTHY"


# == the response side: what nodes may send, and what the gateway does with it ==================
#
# A node is trusted to answer its own requests, never to speak for another client's. The
# gateway takes exactly one response per request (nginx's upstream keepalive rule): bytes
# after a complete response, or on an idle pooled connection, close that connection; it is
# never reused. These nodes misbehave on purpose, on raw sockets.

Script = Callable[[int, bytes, asyncio.StreamWriter], Any]


@dataclass
class RawNode:
    """A node on a raw socket: ``script(n, head, writer)`` answers its n-th request (1-based)
    with whatever bytes it likes."""

    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    #: Connections accepted, and connections that ended (the gateway closed them).
    accepted: int = 0
    ended: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def raw_node() -> AsyncIterator[Callable[..., Any]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script, *, reads_bodies: bool = True) -> RawNode:
        node = RawNode()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            node.accepted += 1
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    node.heads.append(head)
                    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), 0)
                    if reads_bodies and length:
                        await reader.readexactly(length)
                    if await script(len(node.heads), head, writer) is False:
                        break  # the script ended the connection
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                node.ended += 1
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        node.port = server.sockets[0].getsockname()[1]
        return node

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def response(body: bytes = b"ok", *headers: str, status: str = "200 OK") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 {status}\r\n{lines}Content-Length: {len(body)}\r\n\r\n").encode() + body


OTHER_USER = response(b"not yours", "Set-Cookie: session=OTHER-USERS-SESSION")


async def fresh_gateway(gateway: Any, node: RawNode) -> Any:
    return await gateway([node.url], health={"enabled": False})


def get(target: str) -> bytes:
    return head(method="GET", target=target)


@pytest.mark.parametrize("when", ["same write", "later write"])
async def test_a_second_response_to_one_request_reaches_nobody(
        gateway: Any, raw_node: Callable[..., Any], when: str) -> None:
    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        if n > 1:
            writer.write(response(b"fresh"))
        elif when == "same write":
            writer.write(response(b"first") + OTHER_USER)
        else:
            writer.write(response(b"first"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(OTHER_USER)
        await writer.drain()

    node = await raw_node(script)
    gw = await fresh_gateway(gateway, node)
    first = await exchange(gw.traffic_address, get("/a"))
    assert (first.status, first.body) == (200, b"first")
    assert "set-cookie" not in first.headers, first.headers
    # The gateway closed the connection that carried the extra response...
    await wait_for(lambda: node.ended == 1, what="the connection closed")
    assert gw.pools[gw.cluster.get("node-1")].idle == 0
    # ...so the next client gets its own answer, on a new connection.
    second = await exchange(gw.traffic_address, get("/b"))
    assert (second.status, second.body) == (200, b"fresh")
    assert "set-cookie" not in second.headers, second.headers
    assert node.accepted == 2


async def test_bytes_on_an_idle_pooled_connection_close_it(
        gateway: Any, raw_node: Callable[..., Any]) -> None:
    poke = asyncio.Event()
    later: list[asyncio.Task[None]] = []

    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response(b"answer %d" % n))
        await writer.drain()

        async def stray() -> None:  # while the connection sits idle in the pool
            await poke.wait()
            writer.write(response(b"stray", "Set-Cookie: attacker=chosen"))
            await writer.drain()

        if n == 1:
            later.append(asyncio.create_task(stray()))

    node = await raw_node(script)
    gw = await fresh_gateway(gateway, node)
    pool = gw.pools[gw.cluster.get("node-1")]
    first = await exchange(gw.traffic_address, get("/a"))
    assert first.body == b"answer 1"
    await wait_for(lambda: pool.idle == 1, what="the connection pooled")
    poke.set()
    await wait_for(lambda: node.ended == 1, what="the idle connection closed")
    assert pool.idle == 0
    second = await exchange(gw.traffic_address, get("/b"))
    assert (second.status, second.body) == (200, b"answer 2")
    assert "set-cookie" not in second.headers
    assert node.accepted == 2
    await asyncio.gather(*later)


async def test_a_node_that_ignores_bodies_cannot_smuggle_into_the_next_answer(
        gateway: Any, raw_node: Callable[..., Any]) -> None:
    """CL.0: the node answers a POST without reading its body, then reads the body as a
    request of its own. Its answer to that must never become the next client's."""
    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET /smuggled"):
            writer.write(response(b"smuggled", "Set-Cookie: attacker=chosen"))
        else:
            writer.write(response(b"yours %d" % n))
        await writer.drain()

    node = await raw_node(script, reads_bodies=False)
    gw = await fresh_gateway(gateway, node)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: gw.example\r\n\r\n"
    attack = await exchange(gw.traffic_address,
                            head(f"Content-Length: {len(smuggled)}") + smuggled)
    assert attack.status == 200 and attack.body == b"yours 1"
    await wait_for(lambda: node.ended == 1, what="the desynchronised connection closed")
    victim = await exchange(gw.traffic_address, get("/account"))
    assert victim.status == 200 and victim.body.startswith(b"yours")
    assert "set-cookie" not in victim.headers, victim.headers
    assert node.accepted == 2


async def test_a_close_delimited_response_is_forwarded_whole(
        gateway: Any, raw_node: Callable[..., Any]) -> None:
    """No Content-Length, not chunked: the body ends when the node closes (RFC 9112 §6.3).
    The client gets all of it and a proper end (the final chunk), and the node is not
    counted as failing."""
    body = b"x" * 300_000

    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(0, len(body), 50_000):
            writer.write(body[i:i + 50_000])
            await writer.drain()
        return False  # and close

    node = await raw_node(script)
    gw = await fresh_gateway(gateway, node)
    async with Raw(gw.traffic_address) as raw:
        await raw.send(get("/download"))
        answer = await raw.answer()
        assert answer.status == 200 and answer.body == body
        assert answer.headers["transfer-encoding"] == "chunked"
        # The client connection stays usable: the answer ended properly.
        await raw.send(get("/again"))
        again = await raw.answer()
    assert again.status == 200 and again.body == body
    assert sample(gw, "hagw_upstream_requests_total", node="node-1", code_class="error") == 0
    assert sample(gw, "hagw_gateway_errors_total", reason="reset") == 0
    assert gw.cluster.get("node-1").ejected_until is None


async def test_a_101_for_a_request_that_did_not_ask_to_upgrade_is_a_502(
        gateway: Any, raw_node: Callable[..., Any]) -> None:
    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                     b"Connection: Upgrade\r\n\r\n\x00\x00\x12\x04\x00garbage")
        await writer.drain()

    node = await raw_node(script)
    gw = await fresh_gateway(gateway, node)
    answer = await exchange(gw.traffic_address, get("/x"))
    assert answer.status == 502
    assert answer.json()["error"] == "bad_gateway"
    assert str(node.port) not in answer.body.decode() and "node-1" not in answer.body.decode()


BAD_RESPONSES = {
    "content-length and chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "LF inside a header value": b"HTTP/1.1 200 OK\r\nX-A: a\nSet-Cookie: injected=1\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "NUL inside a header value": b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n",
    "a head over 64 KB": b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"Content-Length: 2\r\n\r\nok",
    "one endless header line": b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 200_000,
    "endless interim answers": b"HTTP/1.1 100 Continue\r\n\r\n" * 5000,
}


@pytest.mark.parametrize("case", list(BAD_RESPONSES))
async def test_a_malformed_response_is_a_502_and_never_pooled(
        gateway: Any, raw_node: Callable[..., Any], case: str) -> None:
    async def script(n: int, head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(BAD_RESPONSES[case])
        await writer.drain()

    node = await raw_node(script)
    gw = await gateway([node.url], health={"enabled": False}, retries={"attempts": 1})
    answer = await exchange(gw.traffic_address, get("/x"))
    assert answer.status == 502, (answer.status, answer.headers, answer.body[:200])
    assert "injected" not in answer.headers.get("set-cookie", "")
    await wait_for(lambda: node.ended == node.accepted, what="the connection closed")
    assert gw.pools[gw.cluster.get("node-1")].idle == 0


async def test_what_software_answers_is_nobodys_business(edge: Edge) -> None:
    """The demo node (aiohttp) says ``Server: Python/3.11 aiohttp/...``; the client sees no
    Server header, from the node or the gateway (nginx's proxy_hide_header default)."""
    proxied = await exchange(edge.address, head(method="GET", target="/echo"))
    assert proxied.status == 200
    own = await exchange(edge.address, head(method="TRACE", target="/"))
    assert own.status == 405
    for answer in (proxied, own):
        assert "server" not in answer.headers and "x-powered-by" not in answer.headers
