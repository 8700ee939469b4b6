"""Active health checks and the verify check: the I/O half of health checking.

A probe only observes; what its result means for the node is decided by the
node's state machine and the warning detector. The version a node reports is its own
word: one that is not a valid version (``monitor.versions``) is treated as unknown,
and the result says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.config.schema import HealthCheckConfig, VerifyConfig
from gateway.config.types import NodeURL
from monitor.versions import is_valid_version, shown


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    #: Why it failed, or a short note when it passed.
    detail: str
    latency: float
    status: int | None = None
    #: The node says it is degrading (``{"status": "warn"}`` or ``X-Health-Status: warn``).
    warn: str | None = None
    #: The version the node reports, if it reports a valid one.
    version: str | None = None
    #: A safe rendering of an invalid version the node reported (then ``version`` is None).
    invalid_version: str | None = None

    @property
    def result(self) -> str:
        """The label for hagw_health_checks_total."""
        if not self.ok:
            return "timeout" if self.detail.startswith("probe timeout") else "failure"
        return "warn" if self.warn else "success"


def version_in(data: dict[str, Any] | None, version_field: str
               ) -> tuple[str | None, str | None]:
    """The valid version in a health answer (or None), and a safe rendering of an invalid
    one (or None)."""
    raw = data.get(version_field) if data else None
    if raw is None:
        return None, None
    text = str(raw)
    if is_valid_version(text):
        return text, None
    return None, shown(text)


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class ProbeTls:
    """How probes reach https:// nodes: as the gateway's upstream connections do."""

    #: The gateway's client context (``upstream_tls``); None: aiohttp's default checks.
    context: ssl.SSLContext | None = None
    #: The name sent in SNI and checked against the certificate (default: the URL's host).
    server_name: str | None = None

    def options(self, url: NodeURL) -> dict[str, Any]:
        """Keyword arguments for an aiohttp request to ``url``."""
        if not url.tls:
            return {}
        return {"ssl": self.context or True, "server_hostname": self.server_name}


PLAIN = ProbeTls()


async def http_probe(session: aiohttp.ClientSession, url: NodeURL,
                     check: HealthCheckConfig, tls: ProbeTls = PLAIN) -> ProbeResult:
    started = time.monotonic()
    target = f"{url}{check.path}"
    try:
        async with asyncio.timeout(check.timeout):
            async with session.request(check.method, target, headers=check.headers,
                                       allow_redirects=False, **tls.options(url)) as response:
                body = await response.read()
                status = response.status
                header_state = response.headers.get("X-Health-Status", "").strip().lower()
    except TimeoutError:
        return ProbeResult(False, f"probe timeout after {check.timeout * 1000:.0f}ms",
                           time.monotonic() - started)
    except (aiohttp.ClientError, OSError) as exc:
        return ProbeResult(False, f"probe failed: {exc.__class__.__name__}: {exc}",
                           time.monotonic() - started)
    latency = time.monotonic() - started
    data = _json(body)
    body_state = str(data.get("status", "")).lower() if data else ""
    version, invalid = version_in(data, check.version_field)
    note = f"; reported an invalid version {invalid}, treated as unknown" if invalid else ""

    def result(ok: bool, detail: str, warn: str | None = None) -> ProbeResult:
        return ProbeResult(ok, detail + note, latency, status, warn=warn, version=version,
                           invalid_version=invalid)

    if status not in check.expect_status:
        return result(False, f"probe got HTTP {status}")
    if body_state in ("fail", "failing", "down") or header_state == "fail":
        return result(False, "health endpoint reports fail")
    if check.body_match is not None and not re.search(check.body_match,
                                                      body.decode("utf-8", "replace")):
        return result(False, f"probe body does not match {check.body_match!r}")
    warn = None
    if body_state in ("warn", "warning") or header_state in ("warn", "warning"):
        reason = data.get("reason") if data else None
        warn = "health endpoint reports warn" + (f": {reason}" if reason else "")
    return result(True, "probe ok", warn)


async def tcp_probe(url: NodeURL, check: HealthCheckConfig) -> ProbeResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(check.timeout):
            _, writer = await asyncio.open_connection(url.host, url.port)
    except TimeoutError:
        return ProbeResult(False, f"probe timeout after {check.timeout * 1000:.0f}ms (tcp)",
                           time.monotonic() - started)
    except OSError as exc:
        return ProbeResult(False, f"probe failed: tcp connect: {exc.strerror or exc}",
                           time.monotonic() - started)
    latency = time.monotonic() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, "tcp connect ok", latency)


async def probe(session: aiohttp.ClientSession, url: NodeURL,
                check: HealthCheckConfig, tls: ProbeTls = PLAIN) -> ProbeResult:
    if check.mode == "tcp":
        # A TCP connect, also for an https:// node: no handshake.
        return await tcp_probe(url, check)
    return await http_probe(session, url, check, tls)


async def verify(session: aiohttp.ClientSession, url: NodeURL, check: HealthCheckConfig,
                 expected_version: str | None, reported_version: str | None,
                 tls: ProbeTls = PLAIN) -> str | None:
    """Run the readmission check; None if the node passes, else why it does not."""
    verify_cfg: VerifyConfig | None = check.verify
    version = reported_version
    if verify_cfg is not None:
        try:
            async with asyncio.timeout(check.timeout):
                async with session.get(f"{url}{verify_cfg.path}", allow_redirects=False,
                                       **tls.options(url)) as resp:
                    body = await resp.read()
                    status = resp.status
        except TimeoutError:
            return f"verify {verify_cfg.path} timed out"
        except (aiohttp.ClientError, OSError) as exc:
            return f"verify {verify_cfg.path} failed: {exc}"
        if status not in verify_cfg.expect_status:
            return f"verify {verify_cfg.path} got HTTP {status}"
        answer, invalid = version_in(_json(body), check.version_field)
        if invalid is not None:
            if expected_version is not None:
                return (f"verify {verify_cfg.path} reports an invalid version {invalid}, "
                        f"expected {expected_version}")
            version = None
        elif answer is not None:
            version = answer
    if expected_version is not None and version != expected_version:
        return f"reports version {version or 'unknown'}, expected {expected_version}"
    return None
