"""When a failed request may be tried again, and the budget that stops retry storms.

Safety first: a request that never reached a node is safe to send elsewhere
whatever its method. One that reached a node is retried only if repeating it is
harmless: an idempotent method, or a client-supplied ``Idempotency-Key``.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from gateway.config.schema import RetriesConfig
from gateway.node import Node
from gateway.upstream import UpstreamConnection, UpstreamError, UpstreamReset


class Retryable(Exception):
    """An attempt failed in a way the policy allows retrying; carries what to fall back on."""

    def __init__(self, node: Node, reason: str, error: BaseException | None = None, *,
                 conn: UpstreamConnection | None = None) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason
        self.error = error
        #: For a retryable status: the node's answer, returned if no retry succeeds.
        self.conn = conn
        self.returned = False

    @property
    def safe(self) -> bool:
        """Free of the retry budget: nothing reached the node (a refused or timed-out
        connect, a full pool, a write to a connection already closed), or the node closed
        or reset the connection before any answer, which is how a node's death meets every
        request it held. Neither is a sick node's load coming back to the fleet, which is
        what the budget limits; whether a try may be repeated at all is still the
        policy's call (``error_reason``)."""
        error = self.error
        if not isinstance(error, UpstreamError):
            return False
        if not error.sent:
            return True
        return isinstance(error, UpstreamReset) and not error.answered


class RetryBudget:
    """Envoy's retry budget: retries in flight <= max(min_concurrency, percent x active).

    The budget is there to stop retry storms against nodes that are already failing
    under load. A try that never reached a node adds no load to any node, so it is
    always allowed: when a node dies, every request that was about to use it must be
    able to go elsewhere at once, however many there are."""

    __slots__ = ("active", "min_concurrency", "percent", "retrying")

    def __init__(self, percent: float, min_concurrency: int) -> None:
        self.percent = percent
        self.min_concurrency = min_concurrency
        self.active = 0
        self.retrying = 0

    def allows(self, safe: bool = False) -> bool:
        return safe or self.retrying < max(self.min_concurrency, self.percent * self.active)


class RetryPolicy:
    def __init__(self, config: RetriesConfig) -> None:
        self.config = config
        self.attempts = config.attempts
        self.methods = frozenset(config.methods)
        self.statuses = config.retry_statuses
        on = set(config.on)
        self.on_connect = "connect-failure" in on
        self.on_reset = "reset" in on or "gateway-error" in on or "5xx" in on
        self.on_timeout = "timeout" in on or "gateway-error" in on or "5xx" in on

    def idempotent(self, method: str, has_key: bool) -> bool:
        return has_key or method in self.methods

    def error_reason(self, err: UpstreamError, idempotent: bool, replayable: bool) -> str | None:
        """The retry reason if ``err`` may be retried, else None."""
        if self.attempts < 2:
            return None
        if not err.sent:
            # Never reached the node: safe for every method.
            if err.kind == "connect-failure" and self.on_connect:
                return "connect-failure"
            if err.kind == "overflow":
                return "overflow"
            return "reset" if self.on_reset else None
        if not (idempotent and replayable):
            return None
        if err.kind in ("reset", "protocol") and self.on_reset:
            return "reset"
        return None

    def timeout_reason(self, idempotent: bool, replayable: bool) -> str | None:
        if self.attempts >= 2 and self.on_timeout and idempotent and replayable:
            return "timeout"
        return None

    def status_retryable(self, status: int, idempotent: bool, replayable: bool) -> bool:
        return self.attempts >= 2 and status in self.statuses and idempotent and replayable

    def retrying(self, budget: RetryBudget,
                 free: Callable[[Retryable], bool]) -> AsyncRetrying:
        """The tenacity loop for attempts after the first; built only once a retry is needed,
        so the no-retry path costs nothing. ``free``: is this failure's retry outside the
        budget?"""
        cfg = self.config
        return AsyncRetrying(
            stop=stop_after_attempt(max(1, self.attempts - 1)),
            wait=wait_random_exponential(multiplier=cfg.backoff_base, max=cfg.backoff_max),
            retry=retry_if_exception(lambda e: isinstance(e, Retryable)
                                     and budget.allows(free(e))),
            reraise=True,
        )
