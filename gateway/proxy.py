"""The route: one client request -> a node chosen by the cluster -> the answer back.

Hot-path rules: bind metrics once per node, build the upstream head in one
pass over the raw headers, buffer small bodies whole and stream large ones, and
touch tenacity only after a first attempt failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import HttpVersion11 as HTTP11
from aiohttp import web

from gateway.admission import Admission
from gateway.config.schema import GatewayConfig
from gateway.errors import error_response
from gateway.headers import BadHeader, new_request_id, request_head, response_head
from gateway.listener import screen
from gateway.node import Node
from gateway.raw_response import RawResponse
from gateway.retry import Retryable, RetryBudget, RetryPolicy
from gateway.stall import Judgement, StallDetector, Verdict
from gateway.upstream import ConnectionPool, PoolOverflow, UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("hagw.proxy")
access_log = logging.getLogger("hagw.access")

_CHUNK_END = b"0\r\n\r\n"
#: Above this much unsent answer, wait for the client before reading more from the node.
_CLIENT_HIGH_WATER = 1024 * 1024


class LocalRoute(Protocol):
    """Something the traffic listener answers itself instead of proxying (the public status
    page, maintenance mode, queue tickets)."""

    def matches(self, request: web.BaseRequest) -> bool:
        """A cheap synchronous check, made on every request."""

    async def answer(self, request: web.BaseRequest,
                     request_id: str) -> tuple[web.StreamResponse, str | None] | None:
        """The response and how it counts for the SLO (see gateway.slo), or None to let the
        request through after all."""


class NoNode(Exception):
    pass


class TryTimeout(TimeoutError):
    """One attempt got no answer within ``retries.per_try_timeout`` (the request's own
    deadline had not passed); the message names the node and says why no retry followed."""


class BodyTooLarge(Exception):
    pass


class UpstreamBroke(ConnectionResetError):
    """The node failed after the response had started; the client connection is cut."""


class ClientBodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Exchange:
    """What the proxy knows about one request while it tries nodes: a live client request,
    or a queued write being replayed (then ``request`` is None and ``body`` is whole)."""

    request: web.BaseRequest | None
    request_id: str
    method: str
    #: Path and query as received.
    target: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    client_ip: str
    scheme: str
    body: bytes | None
    length: int | None
    chunked: bool
    idempotent: bool
    #: loop.time() by which the node's response headers must have arrived (retries included).
    deadline: float = float("inf")
    tried: list[Node] = field(default_factory=list)
    #: A replayed write goes back to the node that got it before, if that node serves:
    #: a backend that remembers Idempotency-Keys per node then drops the repeat.
    prefer: str | None = None
    #: Awaited with the chosen node just before the first byte is sent (the replay
    #: records where the entry goes, durably, before it goes).
    before_send: Callable[[Node], Awaitable[None]] | None = None
    body_consumed: bool = False
    #: Why the gateway answered itself (for metrics): "no_node", "timeout", "upstream"...
    failure: str | None = None

    @property
    def replayable(self) -> bool:
        return self.body is not None or not self.body_consumed


class Proxy:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.budget = RetryBudget(0.2, 3)
        self.admission = Admission(gateway.config.rate_limit, gateway.config.overload,
                                   gateway.clock)
        #: Checked in order before proxying; the first that answers wins.
        self.local_routes: list[LocalRoute] = []
        #: Called with (status, seconds, failure) for every client request (SLO, warning...).
        self.observers: list[Callable[[int, float, str | None], None]] = []
        self._advisory: str | None = None
        #: The running loop, looked up once (on 3.11 every lookup is a getpid() syscall).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._advisory_line = b""
        self.configure(gateway.config)

    @property
    def advisory(self) -> str | None:
        """X-Maintenance-Scheduled for every proxied answer while a window is announced."""
        return self._advisory

    @advisory.setter
    def advisory(self, value: str | None) -> None:
        self._advisory = value
        self._advisory_line = (b"" if value is None
                               else f"X-Maintenance-Scheduled: {value}\r\n".encode())

    def configure(self, config: GatewayConfig) -> None:
        self.config = config
        self.policy = RetryPolicy(config.retries)
        self.stall = StallDetector(config.outlier_detection.stall)
        self.hedge_on_stall = config.retries.hedge_on_stall
        self.hedge_on_per_try_timeout = config.retries.hedge_on_per_try_timeout
        self.budget.percent = config.retries.budget.percent
        self.budget.min_concurrency = config.retries.budget.min_concurrency
        self.request_timeout = config.timeouts.request
        self.per_try_timeout = config.retries.per_try_timeout
        self.stream_idle = config.timeouts.stream_idle
        self.retry_buffer = config.retries.buffer
        self.max_body = config.limits.max_body
        self.max_header = config.limits.max_header
        self.body_timeout = config.limits.client_body_timeout
        self.max_node_requests = config.overload.max_node_requests
        self.admission.configure(config.rate_limit, config.overload)
        self._key_header = (config.rate_limit.header if config.rate_limit.key == "header"
                            else None)

    def _now(self) -> float:
        return (self.loop or asyncio.get_running_loop()).time()

    # -- entry point ------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        start = loop.time()
        refused_early = screen(request)
        if refused_early is not None:
            log.info("refused a request from %s: %s", request.remote, refused_early.text)
            return refused_early
        request_id = request.headers.get("X-Request-Id") or new_request_id()
        admission = self.admission
        key = admission.client_key(request.remote or "", request.headers.get(self._key_header)
                                   if self._key_header else None)
        refused = admission.admit(key)
        if refused is not None:
            self.gw.metrics.admission_refused.labels(
                "shed" if refused.status == 503 else "rate_limit").inc()
            self.gw.metrics.observe_request(refused.status, loop.time() - start)
            for observe in self.observers:
                observe(refused.status, 0.0, "shed" if refused.status == 503 else None)
            return error_response(refused.status, refused.message, request_id,
                                  error="overloaded" if refused.status == 503 else None,
                                  retry_after=refused.retry_after)
        status = 500
        failure: str | None = None
        try:
            for route in self.local_routes:
                if not route.matches(request):
                    continue
                local = await route.answer(request, request_id)
                if local is not None:
                    response, failure = local
                    status = response.status
                    return response
            ex, response = await self._proxy(request, request_id)
            status = response.status
            failure = ex.failure if ex is not None else None
            return response
        except UpstreamBroke:
            status, failure = 502, "reset"
            raise
        except (ConnectionError, asyncio.CancelledError):
            status, failure = 499, "client_closed"  # nginx's code for a client that hung up
            raise
        finally:
            admission.done(key)
            elapsed = loop.time() - start
            self.gw.metrics.observe_request(status, elapsed)
            for observe in self.observers:
                observe(status, elapsed, failure)
            if self.config.access_log:
                access_log.info("%s %s %s %d %.1fms %s", request.remote, request.method,
                                request.path_qs, status, elapsed * 1000, request_id)

    async def _proxy(self, request: web.BaseRequest,
                     request_id: str) -> tuple[Exchange | None, web.StreamResponse]:
        headers = request.headers
        if sum(len(k) + len(v) + 4 for k, v in request.raw_headers) > self.max_header:
            return None, error_response(431, f"request headers exceed {self.max_header} bytes",
                                        request_id, close=True)
        length = request.content_length
        if length is not None and length > self.max_body:
            return None, error_response(413, f"request body of {length} bytes exceeds "
                                             f"{self.max_body}", request_id, close=True)
        if headers.get("Upgrade", "").lower() == "websocket":
            return None, await self.gw.websockets.proxy(request, request_id)
        chunked = length is None and request.body_exists
        body: bytes | None = b""
        if request.body_exists:
            if headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = None
            if length is not None and length <= self.retry_buffer:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        body = await request.content.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return None, error_response(408, "the request body did not arrive in time",
                                                request_id, close=True)
        method = request.method
        ex = Exchange(request, request_id, method, request.raw_path, request.raw_headers,
                      request.remote or "", request.scheme, body, length, chunked,
                      self.policy.idempotent(method, "Idempotency-Key" in headers))
        try:
            conn, node = await self._send(ex)
        except TryTimeout as exc:
            ex.failure = "timeout"
            self.gw.metrics.gateway_errors.labels("timeout").inc()
            return ex, error_response(504, str(exc), request_id)
        except TimeoutError:
            ex.failure = "timeout"
            self.gw.metrics.gateway_errors.labels("timeout").inc()
            return ex, error_response(504, f"no answer from a node within "
                                           f"{self.request_timeout:g}s", request_id)
        except NoNode:
            ex.failure = "no_node"
            self.gw.metrics.gateway_errors.labels("no_node").inc()
            return ex, error_response(503, "no node is available to take the request",
                                      request_id, retry_after=1)
        except BadHeader as exc:
            return ex, error_response(400, str(exc), request_id, close=True)
        except BodyTooLarge:
            return ex, error_response(413, f"request body exceeds {self.max_body} bytes",
                                      request_id, close=True)
        except ClientBodyError as exc:
            return ex, error_response(exc.status, str(exc), request_id, close=True)
        except UpstreamError as exc:
            ex.failure = "upstream"
            self.gw.metrics.gateway_errors.labels(exc.kind).inc()
            if exc.kind == "overflow":
                return ex, error_response(503, str(exc), request_id, retry_after=1)
            if not exc.sent:
                # Nothing reached a node (every try failed to connect): a 503 with
                # Retry-After tells the client that retrying later is safe, even for a
                # write. The nodes' addresses stay out of the answer.
                return ex, error_response(503, "no node could be reached", request_id,
                                          retry_after=1)
            return ex, error_response(502, str(exc), request_id)
        return ex, await self._respond(ex, conn, node)

    # -- attempts --------------------------------------------------------------------------

    async def _send(self, ex: Exchange) -> tuple[UpstreamConnection, Node]:
        """Send ``ex`` to a node, retrying as the policy allows, counted as active for the
        retry budget meanwhile."""
        budget = self.budget
        budget.active += 1
        # One deadline for the whole request, checked by a timer on the wait for the node's
        # answer (cheaper on every request than an asyncio.timeout scope).
        ex.deadline = self._now() + self.request_timeout
        try:
            try:
                return await self._attempt(ex)
            except Retryable as first:
                failed = first  # retried outside the handler: no chained exception context
            return await self._retry(ex, failed)
        finally:
            budget.active -= 1

    async def _retry(self, ex: Exchange, failed: Retryable) -> tuple[UpstreamConnection, Node]:
        # A retryable status keeps its answer here until something better arrives.
        held: Retryable | None = failed if failed.conn is not None else None
        budget = self.budget
        try:
            if not budget.allows(failed.safe):
                self.gw.metrics.retry_budget_exhausted.inc()
                return self._give_up(failed, held)
            async for attempt in self.policy.retrying(budget):
                with attempt:
                    self.gw.metrics.retries.labels(failed.node.name, failed.reason).inc()
                    budget.retrying += 1
                    try:
                        return await self._attempt(ex)
                    except Retryable as again:
                        failed = again
                        if again.conn is not None:
                            if held is not None and held.conn is not None:
                                held.conn.abort()
                            held = again
                        raise
                    finally:
                        budget.retrying -= 1
        except (Retryable, NoNode):
            return self._give_up(failed, held)
        finally:
            if held is not None and held.conn is not None and not held.returned:
                held.conn.abort()
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    @staticmethod
    def _give_up(failed: Retryable, held: Retryable | None) -> tuple[UpstreamConnection, Node]:
        """No retry succeeded: the last node answer we kept, else the last error."""
        if held is not None and held.conn is not None:
            held.returned = True
            held.node.acquire()
            return held.conn, held.node
        assert failed.error is not None
        raise failed.error

    def _choose(self, ex: Exchange) -> Node:
        """The node for the next try: a replay's preferred node, else the balancer's pick,
        passing over a node stall detection suspects while another one is available."""
        cluster = self.gw.cluster
        node = None
        if ex.prefer is not None and not ex.tried:
            preferred = cluster.get(ex.prefer)
            node = preferred if preferred is not None and preferred.serving else None
        if node is None:
            node = cluster.pick(ex.tried)
            if node is not None and self.gw.pools[node].signal.suspect:
                other = cluster.pick([*ex.tried, node])
                if other is not None and other is not node and other not in ex.tried:
                    node = other
        if node is None:
            raise NoNode()
        return node

    async def _attempt(self, ex: Exchange) -> tuple[UpstreamConnection, Node]:
        gw = self.gw
        node = self._choose(ex)
        ex.tried.append(node)
        if self.max_node_requests and node.in_flight >= self.max_node_requests:
            # Envoy's max_requests circuit breaker: nothing was sent, so try another node.
            raise Retryable(node, "overflow", PoolOverflow(
                f"{node.name}: {node.in_flight} requests in flight "
                f"(max_node_requests={self.max_node_requests})"))
        pool = gw.pools[node]
        bound = gw.metrics.node(node.name)
        loop = self.loop or asyncio.get_running_loop()
        started = loop.time()
        node.acquire()
        conn: UpstreamConnection | None = None
        deadline = ex.deadline
        if self.per_try_timeout is not None:
            deadline = min(deadline, started + self.per_try_timeout)
        try:
            if ex.before_send is not None:
                await ex.before_send(node)
            conn = await pool.acquire(ex.deadline)
            # The request goes out in one write when its body is buffered; only a streamed
            # body needs awaiting (one coroutine frame less on the common path).
            if self._send_request(ex, conn, node):
                await self._stream_body(ex, conn)
            hedged = await self._wait_head(ex, conn, node, pool, started, deadline)
            if hedged is not None:
                return hedged
            pool.signal.answered(loop.time() - started, loop.time())
            if ex.idempotent and ex.replayable and not conn.complete:
                # A small answer is read whole before anything reaches the client, so a node
                # that breaks mid-body is retried like one that broke before answering (not
                # under the per-try timeout, which is about the node answering at all).
                declared = _declared_length(conn)
                if declared is not None and declared <= self.retry_buffer:
                    await conn.wait_complete(loop.time() + self.stream_idle)
        except UpstreamError as exc:
            node.release()
            if conn is not None:
                conn.abort()
            bound.error()
            if exc.kind != "overflow":
                gw.outlier.failure(node, exc.kind)
                gw.monitor.record(node, loop.time() - started, True)
            reason = self.policy.error_reason(exc, ex.idempotent, ex.replayable)
            if reason is not None:
                raise Retryable(node, reason, exc) from exc
            raise
        except TimeoutError as exc:
            node.release()
            if conn is not None:
                conn.abort()
            bound.error()
            gw.monitor.record(node, loop.time() - started, True)
            if loop.time() >= ex.deadline:
                raise  # the whole request's deadline: answered 504 by the caller
            gw.outlier.failure(node, "timeout")
            reason = self.policy.timeout_reason(ex.idempotent, ex.replayable)
            per_try = self.per_try_timeout
            late = (f"no answer from {node.name} within retries.per_try_timeout ({per_try:g}s)"
                    if per_try is not None and loop.time() - started >= per_try
                    else f"{node.name}: {exc}")
            if reason is not None:
                raise Retryable(node, reason, TryTimeout(late)) from exc
            raise TryTimeout(f"{late}; not retried: a {ex.method} that reached a node is "
                             "retried only with an Idempotency-Key") from exc
        except BaseException:
            node.release()
            if conn is not None:
                conn.abort()
            raise
        status = conn.status
        elapsed = loop.time() - started
        bound.observe(status, elapsed)
        gw.monitor.record(node, elapsed, status >= 500)
        if 502 <= status <= 504:
            gw.outlier.failure(node, str(status))
        else:
            gw.outlier.success(node)
        if (self.policy.status_retryable(status, ex.idempotent, ex.replayable)
                and len(ex.tried) < self.policy.attempts):
            node.release()
            raise Retryable(node, str(status), conn=conn)
        return conn, node

    # -- stalls and hedging ----------------------------------------------------------------

    def _hedgeable(self, ex: Exchange) -> bool:
        """May this request be sent to a second node while the first still holds it? Only
        if repeating it is harmless and its body is in memory. Replayed queue entries are
        never hedged: their node is on record before each send."""
        return ex.idempotent and ex.body is not None and ex.before_send is None

    async def _wait_head(self, ex: Exchange, conn: UpstreamConnection, node: Node,
                         pool: ConnectionPool, started: float,
                         deadline: float) -> tuple[UpstreamConnection, Node] | None:
        """Wait for the node's response head, judging its silence on the way (see
        gateway.stall). None once the head is here; a hedge's winner if one was raced."""
        signal = pool.signal
        hedge_on_stall = self.hedge_on_stall and self._hedgeable(ex)
        per_try_hedge = (self.hedge_on_per_try_timeout and deadline < ex.deadline
                         and self._hedgeable(ex))
        check_at = self.stall.first_check(signal, started)
        wait_until = ex.deadline if per_try_hedge else deadline
        loop = self.loop or asyncio.get_running_loop()
        while not await conn.read_head(wait_until, min(check_at, deadline)
                                       if per_try_hedge else check_at):
            now = loop.time()
            if per_try_hedge and now >= deadline:
                return await self._hedge(ex, conn, node, started, "per_try_timeout")
            if not signal.stalled:
                judgement = self._judge(node, pool, started, now)
                check_at = judgement.recheck
            if signal.stalled:
                if hedge_on_stall:
                    return await self._hedge(ex, conn, node, started, "stall")
                check_at = float("inf")  # not safe to repeat: wait for its answer
        return None

    def _judge(self, node: Node, pool: ConnectionPool, started: float, now: float) -> Judgement:
        gw = self.gw
        others = [gw.pools[n].signal for n in gw.cluster if n is not node and n.serving
                  and n in gw.pools]
        judgement = self.stall.judge(pool.signal, started, now, node.in_flight, others)
        if judgement.verdict is Verdict.SUSPECT:
            pool.signal.suspect = True
        elif judgement.verdict is Verdict.STALLED:
            pool.signal.suspect = pool.signal.stalled = True
            gw.metrics.stalls.labels(node.name).inc()
            gw.outlier.stalled(node, judgement.reason)
            # Every other request waiting on this node is woken to be hedged too.
            pool.interrupt_waiting()
        return judgement

    async def _hedge(self, ex: Exchange, conn: UpstreamConnection, node: Node, started: float,
                     why: str) -> tuple[UpstreamConnection, Node] | None:
        """Race the try that ``node`` holds against a second try on another node; the first
        answer wins, the other try is cancelled and its connection discarded. None when the
        held try answered first (it goes on as if nothing happened), else the winner."""
        self.gw.metrics.hedges.labels(node.name, why).inc()

        async def hold() -> None:
            while not await conn.read_head(ex.deadline):
                pass  # woken early again (another interrupt): keep holding

        original = asyncio.ensure_future(hold())
        backup = asyncio.ensure_future(self._attempt(ex))
        pending: set[asyncio.Future[Any]] = {original, backup}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if backup in done and not backup.cancelled() and backup.exception() is None:
                    original.cancel()
                    self._abandon(node, conn, started)
                    result: tuple[UpstreamConnection, Node] = backup.result()
                    return result
                if original in done and original.exception() is None:
                    backup.cancel()
                    await asyncio.gather(backup, return_exceptions=True)
                    if not backup.cancelled() and backup.exception() is None:
                        spare_conn, spare_node = backup.result()  # answered at the same time
                        spare_conn.abort()
                        spare_node.release()
                    return None
                for future in done:
                    exc = future.exception()
                    if isinstance(exc, Retryable) and exc.conn is not None:
                        exc.conn.abort()  # a retryable status from the backup: not kept
                    if future is original or error is None:
                        error = exc
            assert error is not None
            raise error
        finally:
            for future in (original, backup):
                future.cancel()

    def _abandon(self, node: Node, conn: UpstreamConnection, started: float) -> None:
        """The held try lost its race: its connection goes, and it counts as a failure."""
        conn.abort()
        node.release()
        self.gw.metrics.node(node.name).error()
        self.gw.monitor.record(node, self._now() - started, True)

    def _send_request(self, ex: Exchange, conn: UpstreamConnection, node: Node) -> bool:
        """Write the request head (and a buffered body); True if a body must be streamed."""
        conn.begin(head_only=ex.method == "HEAD")
        head = request_head(
            ex.method, ex.target, ex.raw_headers, client_ip=ex.client_ip, scheme=ex.scheme,
            node_host=node.host_header, request_id=ex.request_id,
            content_length=ex.length if not ex.chunked else None, chunked=ex.chunked)
        body = ex.body
        if body is None:
            conn.write(head)
            return True
        if len(body) < 65536:
            conn.write(head + body if body else head)
        else:
            conn.write(head)
            conn.write(body)
        return False

    async def _stream_body(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.body_consumed = True
        assert ex.request is not None
        content = ex.request.content
        sent = 0
        while not conn.early_response:
            try:
                async with asyncio.timeout(self.body_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise ClientBodyError(408, "the request body stalled") from None
            except Exception as exc:  # aiohttp raises its own payload errors here
                raise ClientBodyError(400, f"bad request body: {exc}") from None
            if not chunk:
                break
            sent += len(chunk)
            if sent > self.max_body:
                raise BodyTooLarge()
            if ex.chunked:
                conn.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                conn.write(chunk)
            await conn.drain()
        else:
            conn.keep_alive = False  # the node answered before reading everything
            return
        if ex.chunked:
            conn.write(_CHUNK_END)

    # -- the answer ------------------------------------------------------------------------

    async def _respond(self, ex: Exchange, conn: UpstreamConnection,
                       node: Node) -> web.StreamResponse:
        pool: ConnectionPool = self.gw.pools[node]
        request = ex.request
        assert request is not None
        try:
            status = conn.status
            if conn.complete:
                # The whole answer is here: one prebuilt write (the common, fast case).
                body = conn.take_buffered()
                pool.release(conn)
                if ex.method == "HEAD" or status in (204, 304) or status < 200:
                    length = _declared_length(conn) if ex.method == "HEAD" else None
                    body = b""
                else:
                    length = len(body)
                keep_alive = request.keep_alive
                head = response_head(
                    status, conn.headers, ex.request_id, content_length=length,
                    keep_alive=keep_alive, http10=request.version < HTTP11,
                    extra=self._advisory_line)
                return RawResponse(status, head + body, keep_alive=keep_alive)
            return await self._stream(ex, request, conn, pool)
        except (UpstreamError, TimeoutError) as exc:
            # Too late for an error status: cut the client connection so it sees a failure.
            conn.abort()
            # Still the node's failure: outlier detection and the warning detector count it.
            self.gw.outlier.failure(node, "reset")
            self.gw.monitor.record(node, 0.0, True)
            log.warning("node %s failed mid-response (%s); closing the client connection",
                        node.name, exc)
            if request.transport is not None:
                request.transport.abort()
            raise UpstreamBroke(str(exc)) from None
        except BaseException:
            conn.abort()
            raise
        finally:
            node.release()


    async def _stream(self, ex: Exchange, request: web.BaseRequest, conn: UpstreamConnection,
                      pool: ConnectionPool) -> web.StreamResponse:
        """A body still arriving: forward it as it comes, written straight to the client's
        transport, whatever has arrived coalesced into one write, with flow control both
        ways (the node is paused while the client is slow)."""
        declared = _declared_length(conn)
        keep_alive = request.keep_alive
        http10 = request.version < HTTP11
        chunked = declared is None and not http10
        if declared is None and http10:
            keep_alive = False  # an HTTP/1.0 client: the end of the body is the close
        head = response_head(conn.status, conn.headers, ex.request_id, content_length=declared,
                             keep_alive=keep_alive, http10=http10, extra=self._advisory_line
                             + (b"Transfer-Encoding: chunked\r\n" if chunked else b""))
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        transport.write(head)
        loop = self.loop or asyncio.get_running_loop()
        sent = 0
        while chunk := await conn.read_chunk(loop.time() + self.stream_idle):
            # Whatever else arrived meanwhile goes out in the same (vectored) write.
            parts = [chunk, *conn.take_chunks()]
            size = sum(map(len, parts))
            if transport.is_closing():
                raise ConnectionResetError("the client went away")
            if chunked:
                transport.writelines((b"%x\r\n" % size, *parts, b"\r\n"))
            else:
                transport.writelines(parts)
            sent += size
            if transport.get_write_buffer_size() > _CLIENT_HIGH_WATER:
                await request.writer.drain()
        if chunked:
            transport.write(_CHUNK_END)
        pool.release(conn)
        return RawResponse.already_sent(conn.status, sent, keep_alive=keep_alive)

    # -- replaying queued writes ------------------------------------------------------

    async def forward(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, request_id: str,
                      max_answer: int = 10 * 1024 * 1024, *, prefer: str | None = None,
                      before_send: Callable[[Node], Awaitable[None]] | None = None,
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send a stored request through the same routing, retries and pools as live traffic,
        and return the node's whole answer. Raises UpstreamError, NoNode or TimeoutError."""
        raw = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
        ex = Exchange(None, request_id, method, target, raw, "", "http", body, len(body),
                      False, self.policy.idempotent(method, any(
                          k.lower() == "idempotency-key" for k, _ in headers)),
                      prefer=prefer, before_send=before_send)
        conn, node = await self._send(ex)
        pool = self.gw.pools[node]
        try:
            chunks = [conn.take_buffered()]
            size = len(chunks[0])
            async with asyncio.timeout(self.stream_idle):
                while (chunk := await conn.read_chunk()):
                    size += len(chunk)
                    if size > max_answer:
                        raise UpstreamBroke(f"answer larger than {max_answer} bytes")
                    chunks.append(chunk)
            status = conn.status
            answer = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in conn.headers]
            pool.release(conn)
            return status, answer, b"".join(chunks)
        except BaseException:
            conn.abort()
            raise
        finally:
            node.release()


def _declared_length(conn: UpstreamConnection) -> int | None:
    for name, value in conn.headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


__all__ = ["LocalRoute", "Proxy"]
