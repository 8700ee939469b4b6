"""What one run of the suite does: rate, phase lengths, which scenarios, where results go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: Scenario directories (logs, state, pidfiles); var/ is ignored by git.
WORK = Path(__file__).resolve().parent.parent / "var" / "chaos"


@dataclass(frozen=True)
class Settings:
    #: Requests per second through the gateway, GETs and POSTs together.
    rate: float = 400.0
    #: Seconds of load with the fault in place (and the base for the other phases).
    duration: float = 8.0
    quick: bool = False
    only: tuple[str, ...] = ()
    json_path: Path | None = None
    soak_minutes: float = 10.0
    #: Logs, state directories and pidfiles of each scenario, kept for inspection.
    work_dir: Path = WORK

    @property
    def compare_requests(self) -> int:
        """Requests the comparisons on defaults send: 10,000 as in the issue's table (at
        400 req/s, 25 s), or what the quick phases allow."""
        if self.quick:
            return int(self.rate * (self.warmup + self.duration + self.recovery))
        return 10_000

    @property
    def ci(self) -> bool:
        import os

        return os.environ.get("CI") == "true"

    @property
    def warmup(self) -> float:
        return 1.5 if self.quick else max(2.0, self.duration / 2)

    @property
    def recovery(self) -> float:
        return 2.0 if self.quick else self.duration

    @property
    def wait_timeout(self) -> float:
        """Longest wait for the gateway to react (readmission, a deploy): generous, bounded."""
        return 30.0 if self.quick else 60.0

    @property
    def slack(self) -> float:
        """How long after a node left rotation a client may still see it fail: the per-try
        timeout (1s) and a poll interval of the rotation watch, doubled for a loaded box."""
        return 2.5
