"""One try of an exchange on one node: choose the node, send, wait for its answer while
judging its silence (gateway.stall), and hedge to a second node when it stalls.

Envoy calls this an upstream request. The router (gateway.router.router) decides
whether a failed try is tried again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.accounting import Accounting
from gateway.cluster import Cluster
from gateway.config.schema import GatewayConfig
from gateway.headers import request_head
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.retry import Retryable, RetryPolicy
from gateway.router.exchange import BodyTooLarge, Exchange, NoNode, TryTimeout, declared_length
from gateway.stall import Judgement, StallDetector, Verdict
from gateway.upstream import ConnectionPool, PoolOverflow, UpstreamConnection, UpstreamError

_CHUNK_END = b"0\r\n\r\n"


class PassiveObserver(Protocol):
    """Who learns how each try went (the warning detector, in the control plane)."""

    def record(self, node: str, seconds: float, error: bool) -> None:
        """One try on ``node``: how long it took, and whether it failed."""


class Attempts:
    def __init__(self, cluster: Cluster, pools: Mapping[Node, ConnectionPool],
                 outlier: OutlierDetector, passive: PassiveObserver, accounting: Accounting,
                 config: GatewayConfig) -> None:
        self.cluster = cluster
        self.pools = pools
        self.outlier = outlier
        self.passive = passive
        self.accounting = accounting
        #: The running loop, looked up once (on 3.11 every lookup is a getpid() syscall).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        self.policy = RetryPolicy(config.retries)
        self.stall = StallDetector(config.outlier_detection.stall)
        self.hedge_on_stall = config.retries.hedge_on_stall
        self.hedge_on_per_try_timeout = config.retries.hedge_on_per_try_timeout
        self.per_try_timeout = config.retries.per_try_timeout
        self.request_timeout = config.timeouts.request
        self.stream_idle = config.timeouts.stream_idle
        self.retry_buffer = config.retries.buffer
        self.max_body = config.limits.max_body
        self.max_node_requests = config.overload.max_node_requests

    def _now(self) -> float:
        return (self.loop or asyncio.get_running_loop()).time()

    def _choose(self, ex: Exchange) -> Node:
        """The node for the next try: a replay's preferred node, else the balancer's pick,
        passing over a node stall detection suspects while another one is available."""
        cluster = self.cluster
        node = None
        if ex.prefer is not None and not ex.tried:
            preferred = cluster.get(ex.prefer)
            node = preferred if preferred is not None and preferred.serving else None
        if node is None:
            node = cluster.pick(ex.tried)
            if node is not None and self.pools[node].signal.suspect and self._may_avoid():
                other = cluster.pick([*ex.tried, node])
                if other is not None and other is not node and other not in ex.tried:
                    node = other
        if node is None:
            raise NoNode()
        return node

    def _may_avoid(self) -> bool:
        """Passing over suspect nodes counts against max_ejection_percent, like ejecting
        them: past the cap, suspects take their share again."""
        nodes = list(self.cluster)
        out = sum(1 for n in nodes if n.ejected_until is not None
                  or (n in self.pools and self.pools[n].signal.suspect))
        return out <= self.outlier.cap(len(nodes))

    async def attempt(self, ex: Exchange) -> tuple[UpstreamConnection, Node]:
        node = self._choose(ex)
        ex.tried.append(node)
        if self.max_node_requests and node.in_flight >= self.max_node_requests:
            # Envoy's max_requests circuit breaker: nothing was sent, so try another node.
            raise Retryable(node, "overflow", PoolOverflow(
                f"{node.name}: {node.in_flight} requests in flight "
                f"(max_node_requests={self.max_node_requests})"))
        pool = self.pools[node]
        bound = self.accounting.node(node.name)
        loop = self.loop or asyncio.get_running_loop()
        self.loop = loop
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
                # The time the client took to send its body is not the node's: the
                # deadlines count from the request's end (Envoy's route timeout does).
                sent = loop.time()
                ex.deadline = max(ex.deadline, sent + self.request_timeout)
                deadline = ex.deadline if self.per_try_timeout is None else min(
                    ex.deadline, max(deadline, sent + self.per_try_timeout))
            hedged = await self._wait_head(ex, conn, node, pool, started, deadline)
            if hedged is not None:
                return hedged
            pool.signal.answered(loop.time() - started, loop.time())
            if ex.idempotent and ex.replayable and not conn.complete:
                # A small answer is read whole before anything reaches the client, so a node
                # that breaks mid-body is retried like one that broke before answering (not
                # under the per-try timeout, which is about the node answering at all).
                declared = declared_length(conn.headers)
                if declared is not None and declared <= self.retry_buffer:
                    await conn.wait_complete(loop.time() + self.stream_idle)
        except UpstreamError as exc:
            node.release()
            if conn is not None:
                conn.abort()
            bound.error()
            if exc.kind != "overflow":
                self.outlier.failure(node, exc.kind)
                self.passive.record(node.name, loop.time() - started, True)
            reason = self.policy.error_reason(exc, ex.idempotent, ex.replayable)
            if reason is not None:
                raise Retryable(node, reason, exc) from exc
            raise
        except TimeoutError as exc:
            node.release()
            if conn is not None:
                conn.abort()
            bound.error()
            self.passive.record(node.name, loop.time() - started, True)
            if loop.time() >= ex.deadline:
                raise  # the whole request's deadline: answered 504 by the caller
            self.outlier.failure(node, "timeout")
            reason = self.policy.timeout_reason(ex.idempotent, ex.replayable)
            per_try = self.per_try_timeout
            late = (f"no answer within retries.per_try_timeout ({per_try:g}s)"
                    if per_try is not None and loop.time() - started >= per_try else str(exc))
            if reason is not None:
                raise Retryable(node, reason, TryTimeout(late, node.name)) from exc
            raise TryTimeout(f"{late}; not retried: a {ex.method} that reached a node is "
                             "retried only with an Idempotency-Key", node.name) from exc
        except BaseException:
            node.release()
            if conn is not None:
                conn.abort()
            raise
        status = conn.status
        elapsed = loop.time() - started
        bound.observe(status, elapsed)
        self.passive.record(node.name, elapsed, status >= 500)
        if 502 <= status <= 504:
            self.outlier.failure(node, str(status))
        else:
            self.outlier.success(node)
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
                return await self._hedge(ex, conn, node, pool, started, "per_try_timeout")
            if signal.stalled:
                verdict = Verdict.STALLED  # another request's judgement woke this one
                check_at = float("inf")
            else:
                judgement = self._judge(node, pool, started, now)
                verdict, check_at = judgement.verdict, judgement.recheck
            if hedge_on_stall and verdict in (Verdict.SUSPECT, Verdict.STALLED):
                return await self._hedge(ex, conn, node, pool, started, "stall")
        return None

    def _judge(self, node: Node, pool: ConnectionPool, started: float, now: float) -> Judgement:
        others = [self.pools[n].signal for n in self.cluster if n is not node and n.serving
                  and n in self.pools]
        judgement = self.stall.judge(pool.signal, started, now, node.in_flight, others)
        if judgement.verdict is Verdict.SUSPECT:
            pool.signal.suspect_at = now
        elif judgement.verdict is Verdict.STALLED:
            pool.signal.suspect_at = pool.signal.stalled_at = now
            self.accounting.stalls.labels(node.name).inc()
            self.outlier.stalled(node, judgement.reason)
            # Every other request waiting on this node is woken to be hedged too.
            pool.interrupt_waiting()
        return judgement

    async def _hedge(self, ex: Exchange, conn: UpstreamConnection, node: Node,
                     pool: ConnectionPool, started: float,
                     why: str) -> tuple[UpstreamConnection, Node] | None:
        """Race the try that ``node`` holds against a second try on another node; the first
        answer wins. None when the held try answered first (it goes on as if nothing
        happened, and the second try is cancelled and its connection discarded), else the
        second try's answer: the held try is then abandoned (``_abandon``)."""
        self.accounting.hedges.labels(node.name, why).inc()

        async def hold() -> None:
            while not await conn.read_head(ex.deadline):
                pass  # woken early again (another interrupt): keep holding

        original = asyncio.ensure_future(hold())
        backup = asyncio.ensure_future(self.attempt(ex))
        pending: set[asyncio.Future[Any]] = {original, backup}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if backup in done and not backup.cancelled() and backup.exception() is None:
                    self._abandon(node, conn, pool, started, original)
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
        except BaseException:
            original.cancel()
            backup.cancel()
            raise

    def _abandon(self, node: Node, conn: UpstreamConnection, pool: ConnectionPool,
                 started: float, held: asyncio.Future[Any]) -> None:
        """The held try lost its race: the client has its answer from another node. The held
        try is never read and its connection never reused, but it is left to end on its
        own (its head arriving, or its deadline), so that a node that was only slow is
        heard from: its real latency reaches the warning detector, and its next byte
        clears the suspicion. Only then is the connection closed."""

        def ended(future: asyncio.Future[Any]) -> None:
            conn.abort()
            node.release()
            now = self._now()
            bound = self.accounting.node(node.name)
            if future.cancelled() or future.exception() is not None:
                bound.error()
                self.passive.record(node.name, now - started, True)
                return
            pool.signal.answered(now - started, now)
            bound.observe(conn.status, now - started)
            self.passive.record(node.name, now - started, conn.status >= 500)

        held.add_done_callback(ended)

    def _send_request(self, ex: Exchange, conn: UpstreamConnection, node: Node) -> bool:
        """Write the request head (and a buffered body); True if a body must be streamed."""
        conn.begin(head_only=ex.method == "HEAD")
        head = request_head(
            ex.method, ex.target, ex.raw_headers, client_ip=ex.client_ip, scheme=ex.scheme,
            node_host=node.host_header, request_id=ex.request_id,
            content_length=ex.length if not ex.chunked else None, chunked=ex.chunked,
            trusted=ex.trusted)
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
        source = ex.source
        assert source is not None, "a streamed body needs its source"
        sent = 0
        while not conn.early_response:
            chunk = await source.read()
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
