"""The config schema: frozen, typed dataclasses. Field defaults are the documented defaults.

Every section is validated once at load time (``gateway.config.load_config``); the
rest of the program trusts these objects.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

from gateway.config.build import check
from gateway.config.errors import FieldProblem
from gateway.config.redact import redact_urls
from gateway.config.redis_url import RedisURL, redact_url
from gateway.config.types import (
    URL,
    Address,
    Duration,
    HostPort,
    MinTlsVersion,
    NodeQuota,
    Ratio,
    Size,
    StatusSet,
    Workers,
)
from gateway.units import Quota, parse_duration

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: An instance name among peers: a host name fits (up to 253 characters).
PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
KEY_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}")
METHOD = re.compile(r"[A-Z]{1,20}")
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^`|~-]{1,128}")
RETRY_CONDITIONS = ("connect-failure", "reset", "timeout", "gateway-error", "5xx")


def _parse_retry_condition(value: object) -> str:
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if text in RETRY_CONDITIONS or re.fullmatch(r"[45]\d\d", text):
        return text
    raise ValueError("expected one of " + ", ".join(RETRY_CONDITIONS)
                     + f' or a status like 503, found {value!r}')


RetryCondition = Annotated[str, _parse_retry_condition]

positive = check(lambda v: v > 0, "expected a value above zero")
at_least_one = check(lambda v: v >= 1, "expected 1 or more")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: A DNS name (``api.example.com``), as a client sends it in SNI.
HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}", re.IGNORECASE)
#: ``*.example.com``: any one label in front of at least two (never ``*.com``).
WILDCARD_NAME = re.compile(rf"\*\.(?:{_LABEL}\.)+{_LABEL}", re.IGNORECASE)
#: What ``tls.alpn`` may offer. HTTP/2 ("h2") needs a listener that speaks it; not yet.
ALPN_PROTOCOLS = ("http/1.1",)
#: hstspreload.org's least max-age for the preload list: one year.
HSTS_PRELOAD_MIN_AGE = 365 * 86400.0


def _check_cidrs(key: str, cidrs: tuple[str, ...]) -> None:
    for i, cidr in enumerate(cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise FieldProblem(f"{key}.{i}", "expected an address or CIDR like 10.0.0.0/8, "
                                             f"found {cidr!r}") from None


def _check_path(key: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise FieldProblem(key, "expected a file path, found an empty string")


def _check_cipher_list(ciphers: str) -> None:
    """Refuse a cipher string OpenSSL selects nothing from, as ``set_ciphers`` would at
    start-up. (It applies to TLS 1.2; TLS 1.3's suites are OpenSSL's defaults.)"""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except (ssl.SSLError, ValueError):
        raise FieldProblem("ciphers", "expected an OpenSSL cipher list like "
                                      "'ECDHE+AESGCM:ECDHE+CHACHA20'; OpenSSL selects no "
                                      f"cipher from {ciphers!r}") from None


@dataclass(frozen=True, slots=True)
class SniCertificate:
    """A certificate served to clients that ask for one of ``names`` (TLS SNI)."""

    #: Exact names (``api.example.com``) or wildcards of one label (``*.example.com``).
    names: tuple[str, ...]
    cert: str
    key: str

    def validate(self) -> None:
        if not self.names:
            raise FieldProblem("names", "expected at least one name like api.example.com")
        for i, name in enumerate(self.names):
            if len(name) > 253 or not (HOST_NAME.fullmatch(name)
                                       or WILDCARD_NAME.fullmatch(name)):
                raise FieldProblem(f"names.{i}", "expected a DNS name like api.example.com or "
                                                 f"a wildcard like *.example.com, found {name!r}")
        _check_path("cert", self.cert)
        _check_path("key", self.key)


@dataclass(frozen=True, slots=True)
class HstsConfig:
    """``Strict-Transport-Security`` on every answer over TLS (RFC 6797)."""

    max_age: Duration = field(metadata=check(lambda v: v >= 0, "expected 0s or more"))
    include_subdomains: bool = False
    #: Ask to be on the browsers' preload list (hstspreload.org): needs include_subdomains
    #: and a max_age of a year or more. Hard to undo; read hstspreload.org first.
    preload: bool = False

    def validate(self) -> None:
        if self.preload and (not self.include_subdomains
                             or self.max_age < HSTS_PRELOAD_MIN_AGE):
            raise FieldProblem("preload", "expected include_subdomains: true and a max_age of "
                                          "365d or more with preload (hstspreload.org requires "
                                          "both)")

    @property
    def header(self) -> str:
        """The header's value: ``max-age=31536000; includeSubDomains; preload``."""
        value = f"max-age={int(self.max_age)}"
        if self.include_subdomains:
            value += "; includeSubDomains"
        return value + ("; preload" if self.preload else "")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """A listener's TLS: its certificates, protocol floor, ciphers and client certificates.

    Only the structure is checked at load, so ``hagw check`` works on a machine without the
    files; ``gateway.tls`` reads and checks the files when it builds the contexts."""

    #: PEM certificate chain: the server's certificate first, then its intermediates.
    cert: str
    #: PEM private key of that certificate (unencrypted; protect it with file permissions).
    key: str
    #: Further certificates chosen by the name the client asks for; others get ``cert``.
    sni: tuple[SniCertificate, ...] = ()
    #: The oldest TLS version accepted. TLS 1.0 and 1.1 are always refused (RFC 8996).
    min_version: MinTlsVersion = "1.2"
    #: OpenSSL cipher string for TLS 1.2 (default: Python's). TLS 1.3 suites are OpenSSL's.
    ciphers: str | None = None
    #: Mutual TLS: clients must present a certificate issued by one of these CAs (PEM).
    client_ca: str | None = None
    #: Protocols offered in ALPN. Only http/1.1 for now.
    alpn: tuple[str, ...] = ("http/1.1",)
    #: A plain-HTTP listener that answers every request with a 308 to the https URL.
    http_redirect: Address | None = None
    hsts: HstsConfig | None = None

    def validate(self) -> None:
        for key in ("cert", "key", "client_ca"):
            _check_path(key, getattr(self, key))
        if self.ciphers is not None:
            _check_cipher_list(self.ciphers)
        if not self.alpn:
            raise FieldProblem("alpn", "expected at least one protocol: [http/1.1]")
        for i, protocol in enumerate(self.alpn):
            if protocol == "h2":
                raise FieldProblem(f"alpn.{i}", "h2 (HTTP/2) is not supported yet; expected "
                                                "http/1.1")
            if protocol not in ALPN_PROTOCOLS:
                raise FieldProblem(f"alpn.{i}", f"expected http/1.1, found {protocol!r}")
        served: dict[str, int] = {}
        for i, entry in enumerate(self.sni):
            for j, name in enumerate(entry.names):
                other = served.setdefault(name.lower(), i)
                if other != i:
                    raise FieldProblem(f"sni.{i}.names.{j}",
                                       f"{name!r} is already served by sni[{other}]")

    @property
    def files(self) -> tuple[str, ...]:
        """Every file this config reads (watched for rotation)."""
        paths = [self.cert, self.key]
        for entry in self.sni:
            paths += [entry.cert, entry.key]
        if self.client_ca is not None:
            paths.append(self.client_ca)
        return tuple(paths)


@dataclass(frozen=True, slots=True)
class UpstreamTlsConfig:
    """How the gateway connects to ``https://`` nodes."""

    #: PEM CA bundle the nodes' certificates are verified against (default: the system's).
    ca: str | None = None
    #: A client certificate and its key, for nodes that require mutual TLS.
    cert: str | None = None
    key: str | None = None
    #: Check that the node's certificate names it (``server_name`` or the URL's host). With
    #: false the chain is still verified against ``ca``.
    verify_hostname: bool = True
    #: The name sent in SNI and checked against the certificate (default: the URL's host).
    server_name: str | None = None

    def validate(self) -> None:
        for key in ("ca", "cert", "key"):
            _check_path(key, getattr(self, key))
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise FieldProblem(missing, "expected cert and key together (a client "
                                        "certificate needs its key)")
        if self.server_name is not None and not HOST_NAME.fullmatch(self.server_name):
            raise FieldProblem("server_name", "expected a DNS name like api.internal, found "
                                              f"{self.server_name!r}")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    #: Bearer token for every mutating admin call. ``${HAGW_ADMIN_TOKEN}`` reads the environment.
    token: str
    listen: Address = HostPort("127.0.0.1", 9901)
    #: HTTPS for the admin API. Required off loopback unless ``insecure``.
    tls: TlsConfig | None = None
    #: Accept an admin listener off loopback without TLS (the token crosses in clear text).
    insecure: bool = False
    #: A bearer token every read needs too (GET /healthz and /readyz excepted); the admin
    #: token works for reads as well. None: reads are open, deploy output hidden.
    read_token: str | None = None
    #: Host names (in the Host header) the plain-HTTP admin API answers to besides IP
    #: addresses, localhost and admin.listen's own host; others get 403, so a web page
    #: cannot reach it through DNS rebinding.
    hosts: tuple[str, ...] = ()

    def validate(self) -> None:
        if not self.token.strip():
            raise FieldProblem("token", "expected a non-empty token (mutating admin calls "
                                        "need it; set HAGW_ADMIN_TOKEN)")
        if self.read_token is not None and not self.read_token.strip():
            raise FieldProblem("read_token", "expected a non-empty token, or no read_token "
                                             "(reads open)")
        for i, host in enumerate(self.hosts):
            if not HOST_NAME.fullmatch(host):
                raise FieldProblem(f"hosts.{i}", "expected a DNS name like gw.internal, "
                                                 f"found {host!r}")
        if not self.listen.is_loopback and self.tls is None and not self.insecure:
            raise FieldProblem("listen", f"{self.listen} is not a loopback address: the admin "
                                         "token would cross the network in clear text; set "
                                         "admin.tls, or admin.insecure: true to accept that")
        if self.tls is not None:
            for key in ("http_redirect", "hsts"):
                if getattr(self.tls, key) is not None:
                    raise FieldProblem(f"tls.{key}", "only the traffic listener's tls takes "
                                                     f"{key}; remove it from admin.tls")


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    #: Opening a TCP connection to a node.
    connect: Duration = field(default=1.0, metadata=positive)
    #: From the start of a client request to the node's response headers, retries included.
    request: Duration = field(default=30.0, metadata=positive)
    #: A pooled upstream connection idle longer than this is closed. Keep it below the
    #: nodes' keep-alive timeout so the gateway never reuses a connection the node closed.
    idle_upstream: Duration = field(default=30.0, metadata=positive)
    #: Longest silence while a body streams in either direction.
    stream_idle: Duration = field(default=60.0, metadata=positive)


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    #: Retries in flight may be at most this share of active requests (Envoy's retry budget)...
    percent: Ratio = 0.2
    #: ...but at least this many, so a quiet gateway can still retry.
    min_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    #: Total tries per request, the first included (1 disables retries).
    attempts: int = field(default=2, metadata=at_least_one)
    #: connect-failure, reset, timeout, gateway-error (502/503/504), 5xx, or a status code.
    #: A try that failed before any byte reached the node is retried whatever this says.
    on: tuple[RetryCondition, ...] = ("connect-failure", "reset", "timeout", "502", "503")
    #: Methods retried after the request reached a node (or any request with Idempotency-Key).
    methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    per_try_timeout: Duration | None = None
    #: An idempotent request held by a node that stalled is sent to another node too, and
    #: the client gets the first answer (Finagle's backup request, Envoy's hedging).
    hedge_on_stall: bool = True
    #: At ``per_try_timeout``, keep the first try and race a second one against it instead
    #: of abandoning it (Envoy's ``hedge_on_per_try_timeout``).
    hedge_on_per_try_timeout: bool = False
    backoff_base: Duration = 0.025
    backoff_max: Duration = 0.25
    budget: RetryBudgetConfig = RetryBudgetConfig()
    #: Request bodies up to this size are kept so that a retry can re-send them.
    buffer: Size = 64 * 1024

    def validate(self) -> None:
        for i, method in enumerate(self.methods):
            if not METHOD.fullmatch(method):
                raise FieldProblem(f"methods.{i}",
                                   f"expected an upper-case HTTP method, found {method!r}")

    @property
    def retry_statuses(self) -> frozenset[int]:
        codes = {int(c) for c in self.on if c.isdigit()}
        if "gateway-error" in self.on:
            codes |= {502, 503, 504}
        if "5xx" in self.on:
            codes |= set(range(500, 600))
        return frozenset(codes)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    #: Larger request bodies get 413.
    max_body: Size = 10 * 1024 * 1024
    #: Larger request headers (in total, or any one line) get 431.
    max_header: Size = 16 * 1024
    max_headers: int = field(default=100, metadata=at_least_one)
    #: A client must finish sending its request headers within this time (slowloris guard).
    client_header_timeout: Duration = field(default=10.0, metadata=positive)
    #: Longest pause allowed between two parts of a request body.
    client_body_timeout: Duration = field(default=30.0, metadata=positive)
    #: Idle client keep-alive connections are closed after this.
    client_keepalive: Duration = field(default=75.0, metadata=positive)
    #: A client that reads nothing of its answer for this long is cut, and the node
    #: connection behind it freed (nginx's send_timeout, HAProxy's timeout client).
    client_send_timeout: Duration = field(default=60.0, metadata=positive)


@dataclass(frozen=True, slots=True)
class StallDetectionConfig:
    """A node that stops answering while the others keep answering (see gateway.stall).

    A request may wait ``factor`` times its node's own latency (the smoothed mean plus
    four mean deviations, as TCP times a round trip), never less than ``min_time``. If
    the node has sent nothing since the request went out while another node answered,
    the node is then suspect: new requests go elsewhere and the idempotent requests it
    holds are hedged. Silent past ``eject_after`` (at least twice that wait) with at
    least ``min_requests`` requests waiting, it is stalled: ejected."""

    enabled: bool = True
    factor: float = field(default=2.0, metadata=check(lambda v: v >= 1,
                                                      "expected a factor of 1 or more"))
    min_time: Duration = field(default=0.05, metadata=positive)
    eject_after: Duration = field(default=1.0, metadata=positive)
    min_requests: int = field(default=2, metadata=at_least_one)
    #: Answers a node must have given before its latency is trusted for this.
    min_samples: int = field(default=8, metadata=at_least_one)


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    enabled: bool = True
    #: Consecutive gateway failures (connect errors, resets, 502/503/504) that eject a node.
    consecutive_failures: int = field(default=5, metadata=at_least_one)
    #: Ejection time is this times the number of times the node was ejected before.
    base_ejection_time: Duration = field(default=30.0, metadata=positive)
    max_ejection_time: Duration = field(default=300.0, metadata=positive)
    #: At most this share of nodes is ejected at once (at least one may always be ejected).
    max_ejection_percent: Ratio = 0.5
    stall: StallDetectionConfig = StallDetectionConfig()


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-client token buckets: a client over its rate gets 429 with Retry-After."""

    enabled: bool = False
    #: Sustained requests per second per client...
    rate: float = field(default=50.0, metadata=positive)
    #: ...and the burst a client may send at once.
    burst: int = field(default=100, metadata=at_least_one)
    #: Requests in flight per client at once (0: no limit).
    max_concurrent: int = 0
    #: How a client is told apart: its address, or a header set by a trusted proxy.
    key: Literal["ip", "header"] = "ip"
    header: str = "X-Forwarded-For"
    #: Peers whose ``header`` is believed (CIDRs); empty: the top-level trusted_proxies.
    #: Anyone else is keyed by address.
    trusted_proxies: tuple[str, ...] = ()
    #: Clients remembered at once (least recently seen are forgotten first).
    max_clients: int = field(default=100_000, metadata=at_least_one)
    #: ``local``: each instance's own buckets. ``fleet`` (needs ``peers``): the instances
    #: exchange what each client spent through Redis every 100 ms and charge it to their
    #: buckets, so ``rate`` and ``burst`` hold for the whole fleet (Envoy's global rate
    #: limit, without a separate service). ``max_concurrent`` stays per instance.
    scope: Literal["local", "fleet"] = "local"

    def validate(self) -> None:
        _check_cidrs("trusted_proxies", self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    """Load shedding and Envoy-style circuit breakers."""

    #: Requests in flight through the gateway at once; more get a fast 503 (0: no limit).
    max_requests: int = 10_000
    #: Per node: open connections, requests waiting for one, and requests in flight.
    max_connections: int = 1024
    max_pending: int = 1024
    max_node_requests: int = 1024


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    #: How long /readyz reports not-ready before the listener stops accepting.
    grace: Duration = 5.0
    #: How long in-flight requests may take to finish after the listener stopped.
    drain_timeout: Duration = 30.0
    #: With workers: how long a worker being replaced keeps its idle keep-alive
    #: connections open, answering a request on one with ``Connection: close``, while the
    #: others accept new ones. Closing them at once loses a POST a client just sent on one.
    idle_grace: Duration = 1.0


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """An extra check a node must pass before it is readmitted."""

    path: str = "/ready"
    expect_status: StatusSet = frozenset({200})

    def validate(self) -> None:
        if not self.path.startswith("/"):
            raise FieldProblem("path", f"expected a path starting with '/', found {self.path!r}")


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    enabled: bool = True
    mode: Literal["http", "tcp"] = "http"
    path: str = "/health"
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    expect_status: StatusSet = frozenset(range(200, 300))
    #: A regular expression the response body must match.
    body_match: str | None = None
    interval: Duration = field(default=5.0, metadata=positive)
    #: Probe interval while a node is not healthy, so it is readmitted quickly.
    unhealthy_interval: Duration = field(default=1.0, metadata=positive)
    #: Each wait is lengthened by a random share of up to this much, to spread probes out.
    jitter: Ratio = 0.1
    timeout: Duration = field(default=1.0, metadata=positive)
    healthy_threshold: int = field(default=2, metadata=at_least_one)
    unhealthy_threshold: int = field(default=3, metadata=at_least_one)
    #: The JSON field of the health answer that carries the node's version.
    version_field: str = "version"
    verify: VerifyConfig | None = None

    def validate(self) -> None:
        if not self.path.startswith("/"):
            raise FieldProblem("path", f"expected a path starting with '/', found {self.path!r}")
        if not METHOD.fullmatch(self.method):
            raise FieldProblem("method",
                               f"expected an upper-case HTTP method, found {self.method!r}")
        if self.body_match is not None:
            try:
                re.compile(self.body_match)
            except (re.error, OverflowError, RecursionError) as exc:
                raise FieldProblem("body_match", f"expected a regular expression: {exc}") from None


@dataclass(frozen=True, slots=True)
class WarningConfig:
    """When a node counts as degrading (WARNING) and when it has recovered."""

    #: Live traffic p95 latency above this is a warning sign.
    latency_p95: Duration = 0.25
    #: Live traffic error rate (5xx and failures) above this is a warning sign.
    error_rate: Ratio = 0.05
    #: The sliding window live traffic is judged over...
    window: Duration = field(default=30.0, metadata=positive)
    #: ...and the fewest requests in it before it is judged at all.
    min_requests: int = field(default=20, metadata=at_least_one)
    #: The median of the last ``probe_samples`` probe latencies above this is a warning sign.
    probe_latency: Duration = 0.25
    probe_samples: int = field(default=5, metadata=at_least_one)
    #: Signs must stay clear this long before a WARNING node counts as healthy again.
    recover_after: Duration = 30.0
    #: A WARNING node that cannot be drained (capacity floor) serves at this share of its weight.
    reduced_weight: Ratio = 0.25


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    #: A readmitted node ramps from min_weight to full weight over this window (0 disables).
    window: Duration = 30.0
    min_weight: Ratio = 0.1


@dataclass(frozen=True, slots=True)
class SloConfig:
    """The availability objective and how requests count against it."""

    #: 0.9999 (or "99.99%"): at most 1 bad request in 10,000.
    target: Ratio = field(default=0.9999, metadata=check(lambda v: 0 < v < 1,
                                                          "expected a target between 0 and 1"))
    window: Duration = field(default=30 * 86400.0, metadata=positive)
    #: Planned-maintenance answers: excluded from the SLI (false) or charged to it (true).
    count_maintenance: bool = False
    #: Statuses below 500 that count as bad anyway (e.g. 429 from the gateway's own shedding).
    bad_statuses: tuple[int, ...] = ()
    #: How often the SLO history is written to state_dir.
    flush_interval: Duration = field(default=10.0, metadata=positive)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: Duration = field(default=30.0, metadata=positive)

    def validate(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise FieldProblem("url", f"expected an http(s) URL, found {self.url!r}")


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """Rolling deploys: how many nodes at once, the gates, and the action that redeploys."""

    #: Nodes out of rotation at once (a count, or a percentage rounded down, at least 1).
    max_unavailable: NodeQuota = Quota(count=1)
    #: Refuse to start below this share of error budget left (--force overrides).
    min_error_budget: Ratio = 0.1
    drain_timeout: Duration = field(default=60.0, metadata=positive)
    #: From the action's end until the node is verified and reports the new version.
    node_timeout: Duration = field(default=120.0, metadata=positive)
    #: How long a readmitted node is watched before the next batch.
    bake_time: Duration = 30.0
    #: rollback: return moved nodes to their previous version; halt: stop where it is.
    on_failure: Literal["rollback", "halt"] = "rollback"
    #: argv run without a shell; {node}, {url}, {version}, {previous_version} are filled in.
    command: tuple[str, ...] = ()
    command_timeout: Duration = field(default=300.0, metadata=positive)
    #: Or an HTTP POST with a JSON body {node, url, version, previous_version, deploy}.
    webhook: WebhookConfig | None = None
    #: Tries of the action; transient failures (timeouts, exit code 75, webhook 5xx/429) retry.
    action_attempts: int = field(default=3, metadata=at_least_one)
    retry_exit_codes: tuple[int, ...] = (75,)
    #: The node must report the deployed version (health version_field) before readmission.
    verify_version: bool = True
    #: During bake, the gateway's own 5xx share above this fails the deploy.
    max_5xx_ratio: Ratio = 0.01

    def validate(self) -> None:
        if self.command and self.webhook is not None:
            raise FieldProblem("webhook", "expected either deploy.command or deploy.webhook, "
                                          "not both")
        placeholders = re.compile(r"\{([^{}]*)\}")
        for i, arg in enumerate(self.command):
            for name in placeholders.findall(arg):
                if name not in ("node", "url", "version", "previous_version"):
                    raise FieldProblem(f"command.{i}", f"unknown placeholder {{{name}}} (known: "
                                       "{node}, {url}, {version}, {previous_version})")


def parse_instant(value: object) -> float:
    """An ISO 8601 instant with its zone ("2026-12-01T02:00Z", "...T04:00+02:00") -> Unix
    seconds. A time without a zone is refused: guessing UTC moved windows by hours."""
    import datetime as dt

    moment: dt.datetime | None = None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if moment is None:
        raise ValueError(f'expected a time like "2026-12-01T02:00Z", found {value!r}')
    if moment.tzinfo is None:
        raise ValueError(f'expected a time with its zone, like "2026-12-01T02:00Z" or '
                         f'"2026-12-01T04:00+02:00", found {value!r} (no zone)')
    return moment.timestamp()


def parse_start(value: object, now: float) -> float:
    """When a window starts: "now", "+2h" (from now; any duration), or an instant with its
    zone (see parse_instant)."""
    if value is None or value == "now":
        return now
    if isinstance(value, str) and value.strip().startswith("+"):
        try:
            return now + parse_duration(value.strip()[1:])
        except ValueError:
            raise ValueError(f'expected a relative time like "+2h" or "+30m", found '
                             f'{value!r}') from None
    return parse_instant(value)


Instant = Annotated[float, parse_instant]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A method and a path pattern: ``*`` matches within a path segment, ``**`` across."""

    method: str
    path: str

    def validate(self) -> None:
        if not METHOD.fullmatch(self.method) and self.method != "*":
            raise FieldProblem("method", f"expected an upper-case HTTP method or *, found "
                                         f"{self.method!r}")
        if not self.path.startswith("/"):
            raise FieldProblem("path", f"expected a path starting with '/', found {self.path!r}")


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """A maintenance window declared in the config."""

    start: Instant
    duration: Duration = field(metadata=positive)
    reason: str = "planned maintenance"
    #: Node names; empty means the whole fleet (maintenance mode).
    nodes: tuple[str, ...] = ()

    def validate(self) -> None:
        import datetime as dt

        try:
            dt.datetime.fromtimestamp(self.start, dt.UTC)
            dt.datetime.fromtimestamp(self.start + self.duration, dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise FieldProblem("duration", "expected a window that ends by the year 9999, "
                                           f"found {self.duration:g}s") from None


@dataclass(frozen=True, slots=True)
class QueueRateLimitConfig:
    """Per-client token buckets on the writes a whole-fleet window queues (on by default:
    every one of them takes disk until it is replayed). Per worker process."""

    enabled: bool = True
    #: Sustained queued writes per second per client...
    rate: float = field(default=10.0, metadata=positive)
    #: ...and the burst a client may queue at once.
    burst: int = field(default=50, metadata=at_least_one)

    @property
    def buckets(self) -> RateLimitConfig:
        """As the admission's token buckets take it."""
        return RateLimitConfig(enabled=self.enabled, rate=self.rate, burst=self.burst)


@dataclass(frozen=True, slots=True)
class MaintenanceConfig:
    #: Writes accepted into the durable queue during a whole-fleet window (202 + ticket).
    queue_routes: tuple[RouteMatch, ...] = ()
    #: Routes answered like reads (503 with Retry-After) whatever their method.
    read_routes: tuple[RouteMatch, ...] = ()
    max_queued_body: Size = 1024 * 1024
    #: Queued entries (not yet replayed) beyond which new writes get 503. Nothing is dropped.
    queue_capacity: int = field(default=1_000_000, metadata=at_least_one)
    #: Bytes (bodies, headers, targets) all waiting entries may hold on disk: beyond, 503...
    max_queued_bytes: Size = 1024 ** 3
    #: ...and one client's (by address, see trusted_proxies): beyond, 429. 0: no limit.
    max_client_queued_bytes: Size = 10 * 1024 ** 2
    #: A write that would leave less free space than this on state_dir's disk gets 503.
    min_free_disk: Size = 256 * 1024 ** 2
    #: Per-client token buckets on queued writes, whatever the top-level rate_limit says.
    queue_rate_limit: QueueRateLimitConfig = QueueRateLimitConfig()
    #: Only these request headers are stored with a queued write (case-insensitive); empty:
    #: every end-to-end header (see README "Maintenance windows" for what is never stored).
    store_headers: tuple[str, ...] = ()
    #: Entries replayed at once; 1 keeps the order strict.
    replay_concurrency: int = field(default=1, metadata=at_least_one)
    #: With replay_concurrency 1: entries sent to a node down one connection, pipelined,
    #: in arrival order. 1: one round trip each, strict order even when a write fails.
    replay_pipeline: int = field(default=1, metadata=check(lambda v: 1 <= v <= 256,
                                                           "expected 1 to 256"))
    max_attempts: int = field(default=5, metadata=at_least_one)
    retry_base: Duration = 0.5
    retry_max: Duration = 30.0
    #: How long replay results stay collectable at their ticket URL.
    result_ttl: Duration = field(default=86400.0, metadata=positive)
    #: Ticket status URLs on the traffic listener live under this prefix.
    ticket_path: str = "/_hagw/queue"
    #: After a window, how long to wait for nodes to pass verification before replaying.
    verify_timeout: Duration = field(default=300.0, metadata=positive)
    #: During replay, a new queued write waits this long for its own result before a 202.
    live_wait: Duration = 10.0
    #: Announcements go out this long before a window (plus at its start and its end).
    announce: tuple[Duration, ...] = (86400.0, 3600.0)
    windows: tuple[WindowConfig, ...] = ()

    def validate(self) -> None:
        for i, name in enumerate(self.store_headers):
            if not HEADER_NAME.fullmatch(name):
                raise FieldProblem(f"store_headers.{i}", "expected a header name like "
                                                         f"Authorization, found {name!r}")
        if not self.ticket_path.startswith("/") or self.ticket_path.endswith("/"):
            raise FieldProblem("ticket_path", "expected a path like /_hagw/queue, found "
                                              f"{self.ticket_path!r}")


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """Where announcements (maintenance, incidents) go."""

    type: Literal["webhook", "slack", "alertmanager", "email"]
    #: webhook, slack (incoming webhook URL), alertmanager (its base URL).
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    #: email: SMTP server, sender and recipients.
    smtp_host: str = ""
    smtp_port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = ""
    sender: str = ""
    to: tuple[str, ...] = ()
    #: Which events: maintenance, incident (both by default).
    events: tuple[Literal["maintenance", "incident"], ...] = ("maintenance", "incident")
    attempts: int = field(default=5, metadata=at_least_one)
    timeout: Duration = field(default=10.0, metadata=positive)

    def validate(self) -> None:
        if self.type == "email":
            if not self.smtp_host or not self.sender or not self.to:
                raise FieldProblem("smtp_host", "expected smtp_host, sender and to for an "
                                                "email notifier")
        elif not self.url.startswith(("http://", "https://")):
            raise FieldProblem("url", f"expected an http(s) URL for a {self.type} notifier, "
                                      f"found {self.url!r}")


@dataclass(frozen=True, slots=True)
class IncidentConfig:
    """When outages open an incident on their own, and when it closes."""

    #: An incident closes once every condition has been clear this long.
    resolve_after: Duration = 300.0
    #: Fast burn: the 1h and 5m burn rates both above this (the SRE workbook's page rule)...
    fast_burn: float = 14.4
    #: ...with at least this many requests in the last hour.
    min_requests: int = 100
    #: Events from this long before the incident opened are kept as its lead-up.
    lookback: Duration = 600.0


@dataclass(frozen=True, slots=True)
class ComponentConfig:
    """A component of the status page (Statuspage's word): a group of nodes shown with a
    state of its own. Its nodes are those of ``zones`` plus those named in ``nodes``."""

    #: What people see, on the public page too: "API (Europe)", not a host name.
    name: str
    zones: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()

    def validate(self) -> None:
        if not self.name.strip() or len(self.name) > 100:
            raise FieldProblem("name", "expected a name of 1 to 100 characters, found "
                                       f"{self.name!r}")
        if not self.zones and not self.nodes:
            raise FieldProblem("zones", f"component {self.name!r} has no zones and no nodes; "
                                        "expected at least one of them")


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """The status page: always on the admin listener, optionally on the traffic listener."""

    #: Also serve the public (service-level) page on the traffic listener at ``path``
    #: (HTML), ``path.json`` and the Atom feed ``path.atom``.
    public: bool = False
    path: str = "/_status"
    title: str = "Service status"
    #: How often the page reloads itself.
    refresh: Duration = field(default=30.0, metadata=positive)
    #: The groups of nodes shown with their own state. None given: one per zone (named
    #: after it), when nodes have zones.
    components: tuple[ComponentConfig, ...] = ()

    def validate(self) -> None:
        if not self.path.startswith("/") or self.path.endswith("/"):
            raise FieldProblem("path", f"expected a path like /_status, found {self.path!r}")
        seen: dict[str, int] = {}
        for i, component in enumerate(self.components):
            other = seen.setdefault(component.name, i)
            if other != i:
                raise FieldProblem(f"components.{i}.name", f"duplicate component name "
                                                           f"{component.name!r} (also "
                                                           f"components[{other}])")


#: What ``tracing.otlp_endpoint`` needs installed (the ``otlp`` extra of pyproject.toml).
OTLP_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
#: OTLP/HTTP's path for traces, used when ``otlp_endpoint`` names no path.
OTLP_TRACES_PATH = "/v1/traces"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or blocked
        return False


def _parse_header_value(value: object) -> str:
    """A collector header's value: a string on one line. Never echoed (it is usually a
    credential), not even in the error about it."""
    if isinstance(value, str) and not any(c in value for c in "\r\n\0"):
        return value
    raise ValueError("expected a header value as a string on one line (quote one that "
                     "looks like a number); the value is not shown")


HeaderValue = Annotated[str, _parse_header_value]


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Each request the traffic listener answers, exported as an OTLP span (README "Logs,
    access log and tracing"). ``repr()`` shows the names of ``headers``, never their
    values; the changed-keys list of a reload names ``tracing.headers`` only."""

    #: The collector's OTLP/HTTP (protobuf) traces URL, ``http://otel-collector:4318/v1/traces``
    #: (one without a path gets /v1/traces). None: nothing is exported (trace context is
    #: propagated all the same). Needs ``pip install 'hagw[otlp]'``.
    otlp_endpoint: str | None = None
    #: The spans' ``service.name``.
    service_name: str = "hagw"
    #: Share of the traces the gateway starts that are sampled, and so exported here and
    #: told to the nodes (their traceparent's flag). A caller's sampled flag is followed.
    sample_ratio: Ratio = 1.0
    #: One export to the collector gives up after this, its retries included.
    export_timeout: Duration = field(default=10.0, metadata=positive)
    #: Spans go to the collector in batches at least this often (512 at once sooner).
    flush_interval: Duration = field(default=1.0, metadata=positive)
    #: Sent with every export (a collector's credentials): never logged nor shown.
    headers: dict[str, HeaderValue] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.service_name.strip():
            raise FieldProblem("service_name", "expected a service name like hagw, found an "
                                               "empty string")
        for name in self.headers:
            if not HEADER_NAME.fullmatch(name):
                raise FieldProblem(f"headers.{name}", "expected a header name like "
                                                      f"Authorization, found {name!r}")
        if self.otlp_endpoint is None:
            return
        endpoint = self.otlp_endpoint
        try:
            parts = urlsplit(endpoint)
            _ = parts.port  # raises on a port that is no number or out of range
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or parts.query or parts.fragment):
            raise FieldProblem("otlp_endpoint", "expected an OTLP/HTTP URL like "
                                                '"http://otel-collector:4318/v1/traces", '
                                                f"found {redact_urls(endpoint)!r}")
        if parts.username is not None or parts.password is not None:
            raise FieldProblem("otlp_endpoint", "expected no user or password in the URL; "
                                                "give the collector's credentials in "
                                                "tracing.headers (never logged)")
        missing = [m for m in OTLP_MODULES if not _installed(m)]
        if missing:
            raise FieldProblem("otlp_endpoint", "exporting spans needs the OpenTelemetry SDK "
                                                "and its OTLP/HTTP exporter, which are not "
                                                f"installed ({missing[0]}): pip install "
                                                "'hagw[otlp]'")

    @property
    def traces_url(self) -> str | None:
        """Where spans are posted: ``otlp_endpoint``, with /v1/traces if it names no path."""
        endpoint = self.otlp_endpoint
        if endpoint is None or urlsplit(endpoint).path not in ("", "/"):
            return endpoint
        return endpoint.rstrip("/") + OTLP_TRACES_PATH

    def __repr__(self) -> str:
        endpoint = None if self.otlp_endpoint is None else redact_urls(self.otlp_endpoint)
        headers = f" headers=[{', '.join(sorted(self.headers))}]" if self.headers else ""
        return (f"TracingConfig(otlp_endpoint={endpoint!r} service_name={self.service_name!r} "
                f"sample_ratio={self.sample_ratio:g}{headers})")


@dataclass(frozen=True, slots=True)
class PeersConfig:
    """Several gateways acting as one: shared state in Redis (README "Several gateways").

    ``repr()`` and every message show the Redis URL without its password."""

    #: redis://[user:password@]host[:port][/db], or rediss:// for TLS. With ``sentinels``
    #: it gives only the credentials, the database and TLS; the master's address comes
    #: from the sentinels.
    redis: str
    #: Sentinel addresses ("10.0.0.7:26379"); when given, the master of
    #: ``sentinel_service`` is asked of them, again after every failover.
    sentinels: tuple[Address, ...] = ()
    sentinel_service: str = "mymaster"
    #: This instance's name among its peers (the leader lease and change notices carry it).
    name: str = field(default_factory=socket.gethostname)
    #: How long a leader's lease lasts without renewal: a dead leader is replaced within it.
    lease_ttl: Duration = field(default=5.0, metadata=positive)
    #: How often the leader renews the lease (default: a third of ``lease_ttl``).
    renew_every: Duration | None = None
    #: Every Redis key hagw uses starts with this and a colon.
    prefix: str = "hagw"
    #: Replicas that must acknowledge a queued write before its 202 (Redis ``WAIT``; 0: the
    #: master's own AOF is enough).
    write_replicas: int = field(default=0, metadata=check(lambda v: v >= 0,
                                                          "expected 0 or more"))
    #: How long ``WAIT`` waits for those replicas.
    wait_timeout: Duration = field(default=1.0, metadata=positive)
    #: Connecting to Redis, and each command, gives up after this.
    timeout: Duration = field(default=1.0, metadata=positive)

    def validate(self) -> None:
        try:
            RedisURL.parse(self.redis)
        except ValueError as exc:
            raise FieldProblem("redis", str(exc)) from None
        if not PEER_NAME.fullmatch(self.name):
            raise FieldProblem("name", "expected a name of letters, digits, '.', '_' or '-' "
                                       f"(the default is the host name), found {self.name!r}")
        if not NAME.fullmatch(self.sentinel_service):
            raise FieldProblem("sentinel_service", "expected a name of letters, digits, '.', "
                                                   f"'_' or '-', found {self.sentinel_service!r}")
        if not KEY_PREFIX.fullmatch(self.prefix):
            raise FieldProblem("prefix", "expected letters, digits, '.', '_', ':' or '-', "
                                         f"found {self.prefix!r}")
        if self.renew_interval >= self.lease_ttl:
            raise FieldProblem("renew_every", "expected less than lease_ttl "
                                              f"({self.lease_ttl:g}s), found "
                                              f"{self.renew_interval:g}s")
        if self.timeout >= self.lease_ttl:
            raise FieldProblem("timeout", "expected less than lease_ttl (a renewal must be "
                                          f"able to finish within it), found {self.timeout:g}s")

    @property
    def renew_interval(self) -> float:
        return self.lease_ttl / 3 if self.renew_every is None else self.renew_every

    @property
    def target(self) -> RedisURL:
        """The parsed URL (``validate`` has checked it)."""
        return RedisURL.parse(self.redis)

    def __repr__(self) -> str:
        sentinels = f" sentinels={','.join(map(str, self.sentinels))}" if self.sentinels else ""
        return (f"PeersConfig(redis={redact_url(self.redis)!r}{sentinels} name={self.name!r} "
                f"prefix={self.prefix!r} lease_ttl={self.lease_ttl:g}s)")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    url: URL
    weight: int = field(default=1, metadata=check(lambda v: 1 <= v <= 1000,
                                                    "expected a weight from 1 to 1000"))
    zone: str | None = None
    #: Backup nodes serve only while healthy primary capacity is below min_healthy.
    backup: bool = False
    #: Overrides of the top-level ``health`` keys for this node.
    health: HealthCheckConfig | None = None

    def validate(self) -> None:
        if not NAME.fullmatch(self.name):
            raise FieldProblem("name", "expected a name of letters, digits, '.', '_' or '-', "
                                       f"found {self.name!r}")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    nodes: tuple[NodeConfig, ...]
    admin: AdminConfig
    #: The traffic listener.
    listen: Address = HostPort("127.0.0.1", 8080)
    #: HTTPS on the traffic listener.
    tls: TlsConfig | None = None
    #: How the gateway connects to https:// nodes.
    upstream_tls: UpstreamTlsConfig = UpstreamTlsConfig()
    balancer: Literal["round_robin", "least_request", "random"] = "round_robin"
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retries: RetriesConfig = RetriesConfig()
    limits: LimitsConfig = LimitsConfig()
    outlier_detection: OutlierDetectionConfig = OutlierDetectionConfig()
    health: HealthCheckConfig = HealthCheckConfig()
    warning: WarningConfig = WarningConfig()
    slow_start: SlowStartConfig = SlowStartConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    overload: OverloadConfig = OverloadConfig()
    slo: SloConfig = SloConfig()
    deploy: DeployConfig = DeployConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    notifiers: tuple[NotifierConfig, ...] = ()
    incidents: IncidentConfig = IncidentConfig()
    status: StatusConfig = StatusConfig()
    #: Several gateways sharing state through Redis; None: this gateway stands alone.
    peers: PeersConfig | None = None
    #: Below this share of serving nodes the gateway routes to every node it may (panic mode).
    panic_threshold: Ratio = 0.5
    #: Automatic drains never take serving capacity below this (a count or a percentage).
    min_healthy: NodeQuota = Quota(percent=50.0)
    #: The gateway's own zone, for ``locality: prefer_zone``.
    zone: str | None = None
    locality: Literal["none", "prefer_zone"] = "none"
    #: Data-plane worker processes under a supervisor: a count, or "auto" (one per CPU).
    #: 0 runs everything in one process (no supervisor), as the tests embed it.
    workers: Workers = "auto"
    #: A worker whose supervisor is gone serves on its last snapshot this long, waiting to
    #: be adopted by a new supervisor, then stops.
    orphan_grace: Duration = 5.0
    #: Peers (CIDRs) whose X-Forwarded-For, -Proto, -Host, X-Real-IP and Forwarded are
    #: believed: a load balancer in front. From anyone else they are replaced or dropped.
    trusted_proxies: tuple[str, ...] = ()
    #: Where durable state lives (SLO history, deploys, maintenance queue, incidents).
    state_dir: str = "var/hagw"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: text (one line: time, level, logger, message) or json (one object a line).
    log_format: Literal["text", "json"] = "text"
    #: One line per request on the hagw.access logger (README "Logs").
    access_log: bool = False
    #: combined (Apache/nginx combined, plus request id, trace id and upstream) or json.
    access_log_format: Literal["combined", "json"] = "combined"
    #: Spans over OTLP (off without ``tracing.otlp_endpoint``) and the sampling of new traces.
    tracing: TracingConfig = TracingConfig()

    def validate(self) -> None:
        if not self.nodes:
            raise FieldProblem("nodes", "expected at least one node")
        _check_cidrs("trusted_proxies", self.trusted_proxies)
        seen: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                raise FieldProblem(f"nodes.{i}.name", f"duplicate node name {node.name!r} "
                                                      f"(also nodes[{seen[node.name]}])")
            seen[node.name] = i
        for i, window in enumerate(self.maintenance.windows):
            for j, name in enumerate(window.nodes):
                if name not in seen:
                    raise FieldProblem(f"maintenance.windows.{i}.nodes.{j}",
                                       f"no node named {name!r}")
        zones = {node.zone for node in self.nodes if node.zone is not None}
        for i, component in enumerate(self.status.components):
            for j, zone in enumerate(component.zones):
                if zone not in zones:
                    raise FieldProblem(f"status.components.{i}.zones.{j}",
                                       f"no node has zone {zone!r}")
            for j, name in enumerate(component.nodes):
                if name not in seen:
                    raise FieldProblem(f"status.components.{i}.nodes.{j}",
                                       f"no node named {name!r}")
        if self.tls is not None and self.tls.http_redirect == self.listen:
            raise FieldProblem("tls.http_redirect", f"{self.listen} is the traffic listener "
                                                    "itself; expected another address")
        if self.rate_limit.scope == "fleet" and self.peers is None:
            raise FieldProblem("rate_limit.scope", "expected local without peers: fleet-wide "
                                                   "rate limits are shared through peers.redis")
        if self.locality == "prefer_zone" and self.zone is None:
            raise FieldProblem("zone",
                               "expected the gateway's own zone when locality is prefer_zone")

    def health_for(self, node: NodeConfig) -> HealthCheckConfig:
        return node.health or self.health

    def node(self, name: str) -> NodeConfig | None:
        return next((n for n in self.nodes if n.name == name), None)
