"""TLS: the contexts of the gateway's listeners and of its connections to nodes.

A listener's ``ServerTls`` checks every file it is given (readable, PEM, the key matches
the certificate, the certificate is valid now and names what SNI asks for) and refuses a
bad one with a ``TlsError`` that names the file and what is wrong, never the key.

Rotation without dropping connections: the listener is handed one *base* context, once.
Its SNI callback, which OpenSSL calls for every handshake (with ``None`` when the client
sends no server name), hands the connection the *current* context for the name asked
for. ``reload`` builds and checks a complete new set of contexts first and swaps it in
with one assignment: new handshakes get the new certificates, connections already open
keep the ones they started with, and a bad new set leaves the old one serving.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.clock import SYSTEM_CLOCK, Clock, strftime_utc
from gateway.config.schema import TlsConfig, UpstreamTlsConfig

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: The TLS 1.2 cipher list when ``ciphers`` is not set: Python's own default (forward
#: secrecy, AEAD or CBC with SHA-2, no SHA-1, no CCM). TLS 1.3 suites are OpenSSL's.
DEFAULT_CIPHERS = ("@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:"
                   "!aDSS:!SHA1:!AESCCM")
#: The ``reason`` label of ``hagw_tls_handshake_failures_total``.
HANDSHAKE_FAILURE_REASONS = (
    "http_on_tls_port", "protocol_version", "no_shared_cipher", "no_client_certificate",
    "bad_client_certificate", "client_closed", "timeout", "other")
#: OpenSSL's reasons for a client whose TLS versions the server does not accept.
_OLD_PROTOCOL = frozenset({"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "WRONG_SSL_VERSION",
                           "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"})
_ISO = "%Y-%m-%dT%H:%M:%SZ"


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used. The message names the file and
    what is wrong with it; it never carries key material."""


# -- files ----------------------------------------------------------------------------------

def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{what} {path}: is a directory, expected a PEM file") from None
    except PermissionError:
        raise TlsError(f"{what} {path}: cannot read it (permission denied)") from None
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def _load_chain(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsError(f"{what} {path}: not a PEM certificate (no '-----BEGIN CERTIFICATE-----' "
                       "line)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{what} {path}: not a valid PEM certificate chain") from None


def _why(exc: ssl.SSLError) -> str:
    """OpenSSL's reason (``KEY_VALUES_MISMATCH``), else the whole message."""
    return getattr(exc, "reason", None) or str(exc)


def _when(ts: float) -> str:
    return strftime_utc(_ISO, ts)


def _check_dates(chain: list[x509.Certificate], path: str, now: float) -> float:
    """Refuse a chain with a certificate out of its validity; return the earliest notAfter
    (the moment the chain stops working, usually the server certificate's)."""
    for i, cert in enumerate(chain):
        which = f"certificate {path}" if i == 0 else (
            f"certificate {path}: chain certificate {i + 1} ({cert.subject.rfc4514_string()})")
        after = cert.not_valid_after_utc.timestamp()
        before = cert.not_valid_before_utc.timestamp()
        if after <= now:
            raise TlsError(f"{which} expired on {_when(after)}")
        if before > now:
            raise TlsError(f"{which} is not yet valid: valid from {_when(before)}")
    return min(cert.not_valid_after_utc.timestamp() for cert in chain)


def _check_key(key_path: str, cert_path: str, cert: x509.Certificate) -> None:
    data = _read(key_path, "key")
    if b"PRIVATE KEY-----" not in data:
        raise TlsError(f"key {key_path}: not a PEM private key (no '-----BEGIN PRIVATE KEY-----' "
                       "line)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(f"key {key_path}: is encrypted with a passphrase; hagw needs it "
                       "unencrypted (protect the file with its permissions)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"key {key_path}: not a valid PEM private key") from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise TlsError(f"key {key_path} does not match the certificate {cert_path}")


def _no_passphrase() -> str:
    # Given to OpenSSL so that an encrypted key fails instead of prompting on a terminal.
    raise TlsError("the key is encrypted with a passphrase; hagw needs it unencrypted")


def _load_pair(context: ssl.SSLContext, cert_path: str, key_path: str,
               now: float) -> tuple[x509.Certificate, float]:
    """Check a certificate chain and its key, then load them; the server certificate and
    the chain's earliest notAfter."""
    chain = _load_chain(cert_path, "certificate")
    not_after = _check_dates(chain, cert_path, now)
    _check_key(key_path, cert_path, chain[0])
    try:
        context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except ssl.SSLError as exc:
        raise TlsError(f"certificate {cert_path} with key {key_path}: OpenSSL refused them "
                       f"({_why(exc)})") from None
    except OSError as exc:  # the file went away between the checks and the load
        raise TlsError(f"certificate {cert_path} with key {key_path}: cannot read them "
                       f"({exc.strerror or exc})") from None
    return chain[0], not_after


def _load_ca(context: ssl.SSLContext, path: str, what: str) -> None:
    _load_chain(path, what)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TlsError(f"{what} {path}: OpenSSL cannot use it ({_why(exc)})") from None
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _covers(names: tuple[str, ...], wanted: str) -> bool:
    """Would a client asking for ``wanted`` accept a certificate for ``names`` (RFC 6125:
    a wildcard stands for exactly one label)?"""
    wanted = wanted.lower()
    parent = wanted.partition(".")[2]
    return any(name == wanted or (name.startswith("*.") and not wanted.startswith("*.")
                                  and name[2:] == parent) for name in names)


_Stamp = tuple[tuple[str, tuple[int, int, int] | None], ...]


def _stamp(paths: Iterable[str]) -> _Stamp:
    """Inode, size and mtime of each file (None if it cannot be seen): cheap to compare."""
    out: list[tuple[str, tuple[int, int, int] | None]] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, None))
        else:
            out.append((path, (st.st_ino, st.st_size, st.st_mtime_ns)))
    return tuple(out)


# -- server contexts -------------------------------------------------------------------------

def _apply_policy(context: ssl.SSLContext, config: TlsConfig) -> None:
    """Everything but the certificate. Also applied to a listener's base context on reload:
    OpenSSL takes the versions, ciphers and client-certificate demand from the context a
    connection starts with, the certificate, ALPN and client CAs from the one SNI picks."""
    context.minimum_version = VERSIONS[config.min_version]
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(config.ciphers or DEFAULT_CIPHERS)
    context.set_alpn_protocols(list(config.alpn))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_REQUIRED if config.client_ca else ssl.CERT_NONE


def _server_context(config: TlsConfig, cert: str, key: str,
                    now: float) -> tuple[ssl.SSLContext, x509.Certificate, float]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        _apply_policy(context, config)
    except ssl.SSLError as exc:  # the config checked the ciphers; a different OpenSSL may not
        raise TlsError(f"ciphers {config.ciphers!r}: OpenSSL selects no cipher "
                       f"({_why(exc)})") from None
    leaf, not_after = _load_pair(context, cert, key, now)
    if config.client_ca is not None:
        _load_ca(context, config.client_ca, "client CA")
    return context, leaf, not_after


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One certificate a listener serves, for the expiry metric and ``hagw check --files``."""

    #: The metric's ``cert`` label: the default certificate's file name, or an SNI entry's
    #: first name.
    label: str
    path: str
    #: The DNS names the certificate is valid for.
    names: tuple[str, ...]
    #: When the chain stops working (the earliest notAfter in it), Unix seconds.
    not_after: float


@dataclass(frozen=True, slots=True, eq=False)
class _Contexts:
    """One complete, checked set of contexts of a listener; replaced whole on reload."""

    config: TlsConfig
    default: ssl.SSLContext
    exact: Mapping[str, ssl.SSLContext]
    #: ``*.example.com`` entries, keyed by ``example.com``.
    wildcard: Mapping[str, ssl.SSLContext]
    certificates: tuple[CertificateInfo, ...]

    def pick(self, server_name: str | None) -> ssl.SSLContext:
        """Exact name, then a one-label wildcard, then the default certificate."""
        if server_name is None:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name) or self.wildcard.get(name.partition(".")[2])
        return found or self.default


def _build(config: TlsConfig, now: float) -> _Contexts:
    default, leaf, not_after = _server_context(config, config.cert, config.key, now)
    certificates = [CertificateInfo(Path(config.cert).name, config.cert, _dns_names(leaf),
                                    not_after)]
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for entry in config.sni:
        context, leaf, not_after = _server_context(config, entry.cert, entry.key, now)
        names = _dns_names(leaf)
        for name in entry.names:
            if not _covers(names, name):
                raise TlsError(f"certificate {entry.cert} is not valid for {name} (it names "
                               f"{', '.join(names) or 'no DNS name'})")
            if name.startswith("*."):
                wildcard[name[2:].lower()] = context
            else:
                exact[name.lower()] = context
        certificates.append(CertificateInfo(entry.names[0], entry.cert, names, not_after))
    return _Contexts(config, default, exact, wildcard, tuple(certificates))


def check_files(config: TlsConfig, *, clock: Clock = SYSTEM_CLOCK) -> list[CertificateInfo]:
    """Read and check every file of ``config`` as a listener would (``TlsError`` if one is
    unusable); the certificates it would serve."""
    return list(_build(config, clock.time()).certificates)


class ServerTls:
    """The TLS of one listener ("traffic", "admin"): hand ``context`` to
    ``loop.create_server(ssl=...)`` (or ``loop.start_tls``) once; ``reload`` swaps the
    certificates under it."""

    def __init__(self, listener: str, config: TlsConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.listener = listener
        self.clock = clock
        #: Handshake failures by reason (``handshake_failed``), for the metric.
        self.failures: dict[str, int] = dict.fromkeys(HANDSHAKE_FAILURE_REASONS, 0)
        #: The files of the current config as they were when last loaded or tried.
        self._seen = _stamp(config.files)
        self._current = self._build(config)
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _apply_policy(base, config)
        base.sni_callback = self._select
        #: The base context: its SNI callback gives every new connection the current one.
        self.context = base

    def _build(self, config: TlsConfig) -> _Contexts:
        try:
            return _build(config, self.clock.time())
        except TlsError as exc:
            raise TlsError(f"{self.listener} listener: {exc}") from None

    def _select(self, conn: ssl.SSLObject, server_name: str | None,
                _base: ssl.SSLContext) -> None:
        conn.context = self._current.pick(server_name)

    @property
    def config(self) -> TlsConfig:
        return self._current.config

    @property
    def certificates(self) -> tuple[CertificateInfo, ...]:
        return self._current.certificates

    def reload(self, config: TlsConfig) -> None:
        """Build and check every context of ``config``, then swap them in. On any problem
        raise ``TlsError`` and keep serving the old ones."""
        seen = _stamp(config.files)  # before reading: a write meanwhile shows next time
        try:
            contexts = self._build(config)
        except TlsError:
            if config == self._current.config:
                self._seen = seen  # the same broken files are not tried again until they change
            raise
        _apply_policy(self.context, config)
        self._current = contexts
        self._seen = seen

    def changed(self) -> bool:
        """Whether a file of the current config differs (inode, size or mtime) from when it
        was last loaded or tried: a cheap check for the runtime to make every few seconds."""
        return _stamp(path for path, _ in self._seen) != self._seen

    def refresh(self) -> bool:
        """Reload the current config's files if they changed; True if it did. Raises
        ``TlsError`` (once per change) if the new files are unusable."""
        if not self.changed():
            return False
        self.reload(self.config)
        return True

    def expiries(self) -> list[tuple[str, str, float]]:
        """(listener, certificate label, notAfter as Unix time) of every certificate served."""
        return [(self.listener, c.label, c.not_after) for c in self._current.certificates]

    def handshake_failed(self, exc: BaseException) -> str:
        """Count a failed handshake on this listener; its reason."""
        reason = classify_handshake_error(exc)
        self.failures[reason] += 1
        return reason

    def __repr__(self) -> str:
        config = self._current.config
        return (f"<ServerTls {self.listener} cert={Path(config.cert).name} sni={len(config.sni)} "
                f"min={config.min_version} mtls={'on' if config.client_ca else 'off'}>")


def classify_handshake_error(exc: BaseException) -> str:
    """A short reason for a failed server-side handshake (``HANDSHAKE_FAILURE_REASONS``)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""  # None, or unset on a hand-made one
        if reason in ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
            return "http_on_tls_port"
        if reason in _OLD_PROTOCOL:
            return "protocol_version"
        if reason == "NO_SHARED_CIPHER":
            return "no_shared_cipher"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_client_certificate"
        if reason == "CERTIFICATE_VERIFY_FAILED":
            return "bad_client_certificate"
        if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return "client_closed"
        return "other"
    if isinstance(exc, ConnectionError | EOFError):
        return "client_closed"
    return "other"


class TlsCollector(Collector):
    """``hagw_tls_certificate_expiry_timestamp_seconds{listener, cert}`` and
    ``hagw_tls_handshake_failures_total{listener, reason}``, read at scrape time.

    ``expiry``: report the certificates of ``servers``; ``handshakes``: the listeners whose
    handshake failures to report (default: ``servers``), or False for none. A supervisor
    reports the expiry of what its workers serve (the same files) while its workers count
    the failures (summed into one series with theirs), so each family has one source."""

    def __init__(self, servers: Callable[[], Iterable[ServerTls]], *, expiry: bool = True,
                 handshakes: Callable[[], Iterable[ServerTls]] | bool = True) -> None:
        self._servers = servers
        self._expiry = expiry
        self._handshakes = (servers if handshakes is True else
                            None if handshakes is False else handshakes)

    def collect(self) -> Iterator[Metric]:
        if self._expiry:
            expiry = GaugeMetricFamily(
                "hagw_tls_certificate_expiry_timestamp_seconds", "When each certificate a "
                "listener serves expires (the earliest notAfter of its chain), Unix seconds",
                labels=["listener", "cert"])
            for server in self._servers():
                for listener, cert, not_after in server.expiries():
                    expiry.add_metric([listener, cert], not_after)
            yield expiry
        if self._handshakes is None:
            return
        failures = CounterMetricFamily(
            "hagw_tls_handshake_failures", "TLS handshakes a listener refused or lost, by reason",
            labels=["listener", "reason"])
        for server in self._handshakes():
            for reason, count in server.failures.items():
                failures.add_metric([server.listener, reason], count)
        yield failures


# -- the client side -------------------------------------------------------------------------

def client_context(config: UpstreamTlsConfig, *, clock: Clock = SYSTEM_CLOCK) -> ssl.SSLContext:
    """The context for connecting to ``https://`` nodes: their certificates verified against
    ``ca`` (or the system's CAs), the name checked unless ``verify_hostname`` is false, an
    optional client certificate, ALPN http/1.1, TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    if config.ca is not None:
        _load_ca(context, config.ca, "upstream CA")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = config.verify_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if config.cert is not None and config.key is not None:
        _load_pair(context, config.cert, config.key, clock.time())
    return context
