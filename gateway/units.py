"""Human units used in the config: durations, byte sizes and count-or-percentage.

Parsing is strict on purpose: a bare ``30`` could mean seconds or milliseconds,
so a duration must carry its unit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.IGNORECASE)
# KB means 1024 bytes, as in nginx ("16k") and HAProxy; KiB is accepted too.
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "kib": 1024,
               "mib": 1024**2, "gib": 1024**3}


def parse_duration(value: object) -> float:
    """``"1h30m"`` -> 5400.0 seconds. Raises ValueError with what was expected."""
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
            return 0.0
        raise ValueError(f"expected a duration like 500ms, 2s or 45m, found {value!r}")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text) or not math.isfinite(total):
        raise ValueError(f"expected a duration like 500ms, 2s or 45m, found {value!r}")
    return total


def parse_size(value: object) -> int:
    """``"16KB"`` -> 16384 bytes; a bare integer is a byte count."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            unit = (match.group(2) or "B").lower()
            size = float(match.group(1)) * _SIZE_UNITS[unit]
            if math.isfinite(size):
                return int(size)
    raise ValueError(f"expected a size like 16KB or 10MB, found {value!r}")


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for messages and the CLI."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts[:2])


@dataclass(frozen=True, slots=True)
class Quota:
    """A node count given either absolutely (``2``) or as a share of the fleet (``"50%"``)."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: object) -> Quota:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(count=value)
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("%"):
                try:
                    pct = float(text[:-1])
                except ValueError:
                    pass
                else:
                    if 0 <= pct <= 100:
                        return cls(percent=pct)
            elif text.isdigit():
                return cls(count=int(text))
        raise ValueError('expected a node count like 2 or a percentage like "50%", '
                         f"found {value!r}")

    def of(self, total: int, *, round_up: bool = True) -> int:
        """How many nodes this quota means in a fleet of ``total``.

        Floors (``min_healthy``) round up and budgets (``max_unavailable``) round
        down, as Kubernetes does for minAvailable and maxUnavailable.
        """
        if self.count is not None:
            return self.count
        assert self.percent is not None
        exact = total * self.percent / 100
        return math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)
