"""Value types that config fields are annotated with; each parser says what it expects."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar, cast
from urllib.parse import urlsplit

from gateway.units import Quota, parse_duration, parse_size

F = TypeVar("F", bound=Callable[..., object])


def _described(description: str) -> Callable[[F], F]:
    """Attach the human description the builder uses in "required key" messages."""

    def mark(fn: F) -> F:
        fn.describe = description  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @staticmethod
    @_described('an address like "127.0.0.1:8080"')
    def parse(value: object) -> HostPort:
        if isinstance(value, str):
            host, sep, port = value.strip().rpartition(":")
            host = host.strip("[]")
            if sep and host and port.isdigit() and 0 <= int(port) <= 65535:
                return HostPort(host, int(port))
        raise ValueError(f'expected an address like "127.0.0.1:8080", found {value!r}')

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """127.0.0.0/8, ::1 (also as ::ffff:127.x.x.x) or "localhost": reachable only from
        this machine. A wildcard (0.0.0.0, ::) or any other name is not."""
        if self.host.lower() == "localhost":
            return True
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback


#: The port a node URL means when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class NodeURL:
    """Where a node listens: HTTP/1.1, in clear (http) or over TLS (https)."""

    scheme: str
    host: str
    port: int

    @staticmethod
    @_described('a URL like "http://10.0.0.5:8000" or "https://api-1.internal"')
    def parse(value: object) -> NodeURL:
        if isinstance(value, str):
            try:
                parts = urlsplit(value.strip())
                port = parts.port
            except ValueError:  # a port that is no number or out of range, a broken [IPv6]
                pass
            else:
                default = DEFAULT_PORTS.get(parts.scheme)
                # "http://host:" names an empty port: refused rather than read as the default.
                empty_port = port is None and ":" in parts.netloc.rpartition("@")[2] \
                    .rpartition("]")[2]
                if (default is not None and parts.hostname and not empty_port
                        and parts.path in ("", "/") and not parts.query):
                    return NodeURL(parts.scheme, parts.hostname,
                                   default if port is None else port)
        raise ValueError('expected a URL like "http://10.0.0.5:8000" or "https://api-1.internal" '
                         "(http or https, a host, an optional port, no path), "
                         f"found {value!r}")

    @property
    def tls(self) -> bool:
        """Connections to this node use TLS (``upstream_tls``)."""
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """``host[:port]`` as in a Host header: the port only when it is not the scheme's."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


@_described("a percentage like 5% or a ratio like 0.05")
def parse_ratio(value: object) -> float:
    """``"5%"`` or ``0.05`` -> 0.05."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1]) / 100
        except ValueError:
            number = -1.0
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        number = -1.0
    if 0.0 <= number <= 1.0:
        return number
    raise ValueError(f"expected a percentage like 5% or a ratio like 0.05, found {value!r}")


_STATUS_RANGE = re.compile(r"[1-5](?:xx|\d\d)")


@_described('an HTTP status like 200, a class like "2xx", or a list of them')
def parse_status_set(value: object) -> frozenset[int]:
    """``"2xx"``, ``200``, ``[200, 204]`` or ``["2xx", 301]`` -> the set of codes."""
    items = value if isinstance(value, list) else [value]
    codes: set[int] = set()
    for item in items:
        text = str(item).strip().lower() if isinstance(item, int | str) else ""
        if isinstance(item, bool) or not _STATUS_RANGE.fullmatch(text):
            raise ValueError('expected an HTTP status like 200, a class like "2xx", '
                             f"or a list of them, found {value!r}")
        if text.endswith("xx"):
            base = int(text[0]) * 100
            codes.update(range(base, base + 100))
        else:
            codes.add(int(text))
    return frozenset(codes)


TlsVersion = Literal["1.2", "1.3"]


@_described('a TLS version, "1.2" or "1.3"')
def parse_tls_version(value: object) -> TlsVersion:
    """``"1.2"``, ``1.3`` (YAML reads an unquoted 1.3 as a number) -> ``"1.3"``."""
    text = str(value).strip() if isinstance(value, str | float) else ""
    text = text.removeprefix("TLSv").removeprefix("tlsv")
    if text in ("1.2", "1.3"):
        return cast(TlsVersion, text)
    if text in ("1", "1.0", "1.1"):
        raise ValueError(f"TLS {text} is refused (deprecated by RFC 8996); expected 1.2 or 1.3, "
                         f"found {value!r}")
    raise ValueError(f'expected a TLS version, "1.2" or "1.3", found {value!r}')


Duration = Annotated[float, _described("a duration like 500ms, 2s or 45m")(parse_duration)]
Size = Annotated[int, _described("a size like 16KB or 10MB")(parse_size)]
Ratio = Annotated[float, parse_ratio]


@_described('a node count like 2 or a percentage like "50%"')
def parse_quota(value: object) -> Quota:
    return Quota.parse(value)


NodeQuota = Annotated[Quota, parse_quota]
Address = Annotated[HostPort, HostPort.parse]
URL = Annotated[NodeURL, NodeURL.parse]
StatusSet = Annotated[frozenset[int], parse_status_set]
MinTlsVersion = Annotated[TlsVersion, parse_tls_version]


@_described('a number of workers like 2, or "auto"')
def parse_workers(value: object) -> int | str:
    """``"auto"`` (one worker per CPU) or a whole number from 0 (everything in one process)."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1024:
        return value
    raise ValueError(f'expected a number of workers from 0 to 1024, or "auto", found {value!r}')


Workers = Annotated[int | str, parse_workers]


def worker_count(value: int | str) -> int:
    """How many worker processes ``workers`` asks for on this machine."""
    return (os.cpu_count() or 1) if value == "auto" else int(value)
