"""Value types that config fields are annotated with; each parser says what it expects."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar
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


@dataclass(frozen=True, slots=True)
class NodeURL:
    """Where a node listens. Plain HTTP/1.1 to the node; TLS is terminated elsewhere."""

    scheme: str
    host: str
    port: int

    @staticmethod
    @_described('a URL like "http://10.0.0.5:8000"')
    def parse(value: object) -> NodeURL:
        if isinstance(value, str):
            parts = urlsplit(value.strip())
            try:
                port = parts.port
            except ValueError:
                port = None
            if (parts.scheme == "http" and parts.hostname and port is not None
                    and parts.path in ("", "/") and not parts.query):
                return NodeURL("http", parts.hostname, port)
        raise ValueError(f'expected a URL like "http://10.0.0.5:8000" (http, host and port, '
                         f"no path), found {value!r}")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


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
