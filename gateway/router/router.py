"""The router: sends an exchange to a node, and tries again when that is safe.

Safety first: a try that never reached a node is safe to send elsewhere whatever its
method. One that reached a node is tried again only if repeating it is harmless (see
gateway.retry). Each try is an ``Attempts.attempt`` (gateway.router.attempt).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.accounting import Accounting
from gateway.cluster import Cluster
from gateway.config.schema import GatewayConfig
from gateway.node import Node
from gateway.outlier import OutlierDetector
from gateway.retry import Retryable, RetryBudget
from gateway.router.attempt import Attempts, PassiveObserver
from gateway.router.exchange import Exchange, NoNode
from gateway.upstream import ConnectionPool, UpstreamConnection


class Router:
    def __init__(self, cluster: Cluster, pools: Mapping[Node, ConnectionPool],
                 outlier: OutlierDetector, passive: PassiveObserver, accounting: Accounting,
                 config: GatewayConfig) -> None:
        self.cluster = cluster
        self.pools = pools
        self.accounting = accounting
        self.budget = RetryBudget(0.2, 3)
        self.attempts = Attempts(cluster, pools, outlier, passive, accounting, config)
        self.configure(config)

    def configure(self, config: GatewayConfig) -> None:
        self.config = config
        self.attempts.configure(config)
        self.policy = self.attempts.policy
        self.budget.percent = config.retries.budget.percent
        self.budget.min_concurrency = config.retries.budget.min_concurrency
        self.request_timeout = config.timeouts.request

    def idempotent(self, method: str, has_key: bool) -> bool:
        return self.policy.idempotent(method, has_key)

    async def send(self, ex: Exchange) -> tuple[UpstreamConnection, Node]:
        """Send ``ex`` to a node, retrying as the policy allows, counted as active for the
        retry budget meanwhile."""
        budget = self.budget
        budget.active += 1
        # One deadline for the whole request, checked by a timer on the wait for the node's
        # answer (cheaper on every request than an asyncio.timeout scope).
        loop = self.attempts.loop or asyncio.get_running_loop()
        ex.deadline = loop.time() + self.request_timeout
        try:
            try:
                return await self.attempts.attempt(ex)
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
            if not budget.allows(self._free(failed)):
                self.accounting.retry_budget_exhausted.inc()
                return self._give_up(failed, held)
            async for attempt in self.policy.retrying(budget, self._free):
                with attempt:
                    self.accounting.retries.labels(failed.node.name, failed.reason).inc()
                    budget.retrying += 1
                    try:
                        return await self.attempts.attempt(ex)
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

    def _free(self, failed: Retryable) -> bool:
        """Is retrying ``failed`` outside the retry budget? When nothing reached the node or
        it broke the connection before answering (``Retryable.safe``), or when outlier or
        stall detection has taken the node out of new requests' way: its share of the
        traffic goes to the other nodes anyway, and the requests it held go with it (a
        hung node's tries all time out at once). The budget is for a fleet that is sick
        as a whole, whose retries would add to its load."""
        if failed.safe:
            return True
        node = failed.node
        pool = self.pools.get(node)
        return node.ejected_until is not None or (pool is not None and pool.signal.suspect)

    @staticmethod
    def _give_up(failed: Retryable, held: Retryable | None) -> tuple[UpstreamConnection, Node]:
        """No retry succeeded: the last node answer we kept, else the last error."""
        if held is not None and held.conn is not None:
            held.returned = True
            held.node.acquire()
            return held.conn, held.node
        assert failed.error is not None
        raise failed.error

    def __repr__(self) -> str:
        return (f"<Router {len(self.pools)} pools active={self.budget.active} "
                f"retrying={self.budget.retrying}>")
