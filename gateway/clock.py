"""Time, injectable: state machines take a Clock so tests can move time without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for measuring intervals."""

    def time(self) -> float:
        """Wall-clock Unix seconds, for records people read."""


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __repr__(self) -> str:
        return "<SystemClock>"


class FakeClock:
    """A clock that only moves when told to. Wall time starts at a fixed, readable instant."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._mono = 1000.0
        self._wall = start

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds

    def __repr__(self) -> str:
        return f"<FakeClock t={self._mono:.3f}>"


SYSTEM_CLOCK = SystemClock()


def strftime_utc(fmt: str, ts: float) -> str:
    """``time.strftime(fmt)`` of ``ts`` in UTC, with ``%Y`` always four digits: glibc's
    ``%Y`` does not pad years before 1000 (``"999-01-01"``), which no reader parses."""
    moment = time.gmtime(ts)
    return time.strftime(fmt.replace("%Y", f"{moment.tm_year:04d}"), moment)
