"""Admission: who may send a request now. Per-client token buckets and concurrency caps,
and the gateway-wide concurrency limit that sheds load with a fast 503 instead of
collapsing. Synchronous, with an injectable clock.

Fairness under a flood comes from keying by client: an abusive client spends its
own bucket and gets 429s, which cost the gateway almost nothing, while everyone
else's buckets stay full.

With several worker processes each has its own buckets, and they are kept in step: a
worker reports what each client spent (``take_spent``) and how many of its requests are
in flight (``busy``), and every other worker is charged for it (``charge``, ``remote_busy``)
within a report interval. A client is then limited to its rate whichever worker it lands
on, give or take what the other workers admitted in the last interval, which its bucket
pays back (it may go down to ``-burst``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.config.schema import OverloadConfig, RateLimitConfig
from gateway.forwarding import TrustedProxies


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


class Verdict:
    """Why a request was refused: status, message and Retry-After."""

    __slots__ = ("message", "retry_after", "status")

    def __init__(self, status: int, message: str, retry_after: float) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Admission:
    def __init__(self, limits: RateLimitConfig, overload: OverloadConfig, clock: Clock) -> None:
        self.clock = clock
        self.active = 0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: Tokens each client spent here since the last ``take_spent`` (workers only).
        self.spent: Counter[str] | None = None
        #: Each client's requests in flight on the other workers.
        self.remote_busy: dict[str, int] = {}
        self.configure(limits, overload)

    def configure(self, limits: RateLimitConfig, overload: OverloadConfig,
                  trusted_proxies: tuple[str, ...] = ()) -> None:
        """``trusted_proxies``: the top-level key, used when rate_limit has none of its own."""
        self.limits = limits
        self.overload = overload
        self._trusted = TrustedProxies(limits.trusted_proxies or trusted_proxies)

    def client_key(self, peer: str, header_value: str | None) -> str:
        """The client's identity: its address, or what a trusted proxy says it is."""
        if self.limits.key != "header" or header_value is None \
                or not self._trusted.trusts(peer):
            return peer
        if self.limits.header.lower() != "x-forwarded-for":
            return header_value.strip() or peer
        # The rightmost address no trusted proxy added is the client (RFC 7239 reasoning).
        return self._trusted.client(peer, header_value)

    def admit(self, key: str) -> Verdict | None:
        """None to let the request in (then call ``done(key)``), or why not."""
        overload = self.overload
        if overload.max_requests and self.active >= overload.max_requests:
            return Verdict(503, f"the gateway is at its limit of {overload.max_requests} "
                                "requests in flight", 1.0)
        limits = self.limits
        if limits.enabled:
            bucket = self._bucket(key)
            if limits.max_concurrent and (bucket.in_flight + self.remote_busy.get(key, 0)
                                          >= limits.max_concurrent):
                return Verdict(429, f"more than {limits.max_concurrent} requests in flight "
                                    "from this client", 1.0)
            now = self.clock.monotonic()
            bucket.tokens = min(float(limits.burst),
                                bucket.tokens + (now - bucket.stamp) * limits.rate)
            bucket.stamp = now
            if bucket.tokens < 1.0:
                return Verdict(429, f"over the rate limit of {limits.rate:g} requests/s",
                               (1.0 - bucket.tokens) / limits.rate)
            bucket.tokens -= 1.0
            bucket.in_flight += 1
            if self.spent is not None:
                self.spent[key] += 1
        self.active += 1
        return None

    # -- kept in step with other workers ------------------------------------------------------

    def share(self) -> None:
        """From now on, count what each client spends (this is one of several workers)."""
        if self.spent is None:
            self.spent = Counter()

    def take_spent(self) -> dict[str, int]:
        """What each client spent here since the last call."""
        if not self.spent:
            return {}
        out = dict(self.spent)
        self.spent.clear()
        return out

    def busy(self) -> dict[str, int]:
        """Each client's requests in flight here (those with any)."""
        if not self.limits.max_concurrent:
            return {}
        return {key: b.in_flight for key, b in self._buckets.items() if b.in_flight}

    def charge(self, spent: dict[str, int]) -> None:
        """Other workers admitted ``spent`` requests: take them from these buckets too."""
        if not self.limits.enabled:
            return
        now = self.clock.monotonic()
        limits = self.limits
        for key, count in spent.items():
            bucket = self._bucket(key)
            bucket.tokens = max(-float(limits.burst),
                                min(float(limits.burst),
                                    bucket.tokens + (now - bucket.stamp) * limits.rate) - count)
            bucket.stamp = now

    def done(self, key: str) -> None:
        self.active -= 1
        if self.limits.enabled:
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.in_flight > 0:
                bucket.in_flight -= 1

    def _bucket(self, key: str) -> _Bucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(float(self.limits.burst), self.clock.monotonic())
            if len(buckets) > self.limits.max_clients:
                # Forget the least recently seen idle client.
                for old_key, old in buckets.items():
                    if old.in_flight == 0 and old_key != key:
                        del buckets[old_key]
                        break
        else:
            buckets.move_to_end(key)
        return bucket

    @property
    def clients(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"<Admission active={self.active} clients={len(self._buckets)}>"
