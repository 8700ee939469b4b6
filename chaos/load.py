"""Constant mixed load through the gateway: GETs and unique POST writes at a fixed rate.

Open loop: requests start on a schedule whatever happens to earlier ones, so a
stalled gateway does not slow the load down (coordinated omission). In-flight
requests are capped; when the cap is reached the schedule waits and the shortfall
is visible in the achieved rate. Every outcome is kept, except the bodies of
successful GETs (only their count and latency), which bounds memory in a soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from array import array
from dataclasses import dataclass

import aiohttp

#: Which requests of every ten are writes (POST /orders): 30%, spread out.
POST_SLOTS = frozenset({1, 4, 7})


@dataclass(slots=True)
class Outcome:
    method: str
    seq: int
    sent: float
    done: float
    #: HTTP status, or 0 when no answer arrived.
    status: int
    #: "" on success; else what went wrong, e.g. "gateway 502 bad_gateway", "node 503",
    #: "refused" (no connection to the gateway), "disconnected", "timeout".
    failure: str = ""
    #: The POST body (unique per request).
    body: str = ""
    #: The node that acknowledged a write (201) and its position in that node's log.
    ack_node: str = ""
    ack_seq: int = 0
    #: A 202: the write waits in the gateway's durable queue under this ticket.
    ticket: str = ""
    #: A planned answer (maintenance 503): by design, not counted as a failure.
    planned: bool = False
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.method == "POST" and self.status in (201, 202)


@dataclass
class LoadConfig:
    rate: float
    max_in_flight: int = 512
    #: Longer than anything the gateway may take (request timeout 10s).
    client_timeout: float = 20.0
    #: Hard caps, whatever the phases ask for.
    max_requests: int = 2_000_000
    #: Reuse connections. Off, every request opens its own: a gateway process that dies
    #: then fails only the requests it had accepted, not the ones a client is about to
    #: send on a pooled connection to it that the client has not yet seen reset.
    keepalive: bool = True


class MixedLoad:
    def __init__(self, base_url: str, tag: str, config: LoadConfig) -> None:
        self.base = base_url
        self.tag = tag
        self.config = config
        self.outcomes: list[Outcome] = []
        self.latencies = array("d")
        self.sent = 0
        self.started_at = 0.0
        self.stopped_at = 0.0
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.max_in_flight)

    # -- control -----------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_in_flight,
                                           force_close=not self.config.keepalive),
            timeout=aiohttp.ClientTimeout(total=self.config.client_timeout),
            auto_decompress=False)
        self.started_at = time.monotonic()
        self._pacer = asyncio.create_task(self._pace(), name=f"load {self.tag}")

    async def stop(self) -> None:
        """Stop sending and wait for every request in flight to finish."""
        self._stop.set()
        if self._pacer is not None:
            await self._pacer
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stopped_at = time.monotonic()
        if self._session is not None:
            await self._session.close()

    async def abort(self) -> None:
        """On an error or Ctrl-C: cancel everything in flight."""
        self._stop.set()
        for task in [*self._tasks, *([self._pacer] if self._pacer else [])]:
            task.cancel()
        # A second Ctrl-C while cleaning up must not stop the cleanup half-way.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def exhausted(self, timeout: float) -> None:
        """Until the schedule has sent ``max_requests`` (or ``timeout`` passed)."""
        if self._pacer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pacer), timeout)

    def achieved_rate(self) -> float:
        end = self.stopped_at or time.monotonic()
        return self.sent / max(1e-9, end - self.started_at)

    # -- the schedule ------------------------------------------------------------------

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.config.rate
        next_at = loop.time()
        while not self._stop.is_set() and self.sent < self.config.max_requests:
            delay = next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                if self._stop.is_set():
                    return
            await self._slots.acquire()
            self.sent += 1
            n = self.sent
            method = "POST" if n % 10 in POST_SLOTS else "GET"
            task = asyncio.create_task(self._one(method, n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            next_at += interval
            # Never burst to catch up after a stall: the schedule restarts from now.
            next_at = max(next_at, loop.time() - 0.1)

    async def _one(self, method: str, n: int) -> None:
        assert self._session is not None
        request_id = f"{self.tag}-{n}"
        body = json.dumps({"order": request_id, "qty": 1 + n % 5}, separators=(",", ":")) \
            if method == "POST" else ""
        sent = time.monotonic()
        outcome = Outcome(method, n, sent, sent, 0, body=body)
        try:
            if method == "POST":
                ctx = self._session.post(f"{self.base}/orders", data=body, headers={
                    "Content-Type": "application/json", "X-Request-Id": request_id})
            else:
                ctx = self._session.get(f"{self.base}/item/{n}",
                                        headers={"X-Request-Id": request_id})
            async with ctx as resp:
                raw = await resp.read()
                outcome.status = resp.status
                _judge(outcome, raw)
        except aiohttp.ClientConnectorError as exc:
            outcome.failure, outcome.detail = "refused", str(exc)[:200]
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                aiohttp.ClientOSError) as exc:
            outcome.failure, outcome.detail = "disconnected", f"{type(exc).__name__}: {exc}"[
                :200]
        except TimeoutError:
            outcome.failure = "timeout"
        except aiohttp.ClientError as exc:
            outcome.failure, outcome.detail = "client error", f"{type(exc).__name__}: {exc}"[
                :200]
        finally:
            outcome.done = time.monotonic()
            self._slots.release()
        if method == "GET" and not outcome.failure and not outcome.planned:
            self.latencies.append(outcome.done - outcome.sent)
            return
        if not outcome.failure:
            self.latencies.append(outcome.done - outcome.sent)
        self.outcomes.append(outcome)


def _judge(outcome: Outcome, raw: bytes) -> None:
    """Success, planned or failure, from the status and (for errors) who produced them."""
    status = outcome.status
    try:
        data = json.loads(raw) if raw[:1] == b"{" else None
    except ValueError:
        data = None
    if outcome.method == "GET" and status == 200:
        return
    if outcome.method == "POST" and status in (200, 201, 202):
        if isinstance(data, dict):
            outcome.ack_node = str(data.get("node", ""))
            outcome.ack_seq = int(data.get("seq", 0) or 0)
            outcome.ticket = str(data.get("ticket", ""))
        return
    error = data.get("error") if isinstance(data, dict) else None
    if error == "maintenance":
        outcome.planned = True
        return
    if isinstance(data, dict) and "request_id" in data:
        # The gateway's own answer (it carries the request id): no node, timeout, reset...
        message = str(data.get("message", ""))
        outcome.failure = f"gateway {status} {error}" + _cause(message)
        outcome.detail = message[:200]
    elif error is not None:
        outcome.failure = f"node {status}"
        outcome.detail = str(error)[:200]
    else:
        outcome.failure = f"status {status}"
        outcome.detail = raw[:200].decode("utf-8", "replace")


def _cause(message: str) -> str:
    """What the gateway's message says happened upstream; "connect failed" means the request
    never reached a node, so a write was certainly not applied."""
    if message.startswith("connect to"):
        return " (connect failed)"
    if "closed the connection" in message:
        return " (node closed the connection)"
    return ""
