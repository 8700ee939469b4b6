"""What one run measures: scenarios, targets, durations and sizes, from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("throughput", "latency", "memory", "streaming", "fairness", "maintenance",
             "workers", "https", "listen")
TARGETS = ("direct", "hagw", "naive", "nginx", "haproxy")
#: Targets that need a system proxy; ``--skip-peers`` leaves them out.
PEERS = ("nginx", "haproxy")
NODE_KINDS = ("nginx", "demo")

def format_size(size: int) -> str:
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


@dataclass(frozen=True, slots=True)
class Settings:
    #: Seconds each measured load run lasts.
    duration: float
    #: Seconds of unmeasured load before a target's first run (connection pools, caches).
    warmup: float
    #: Load runs per target, interleaved with the other targets'; medians are reported.
    rounds: int
    quick: bool
    scenarios: tuple[str, ...]
    targets: tuple[str, ...]
    nodes: str
    #: Client connections for the max-throughput runs (``wrk -c``).
    connections: int
    #: Fixed request rates of the latency scenario.
    rates: tuple[int, ...]
    idle_connections: int
    stream_size: int
    json_path: Path | None
    #: Writes queued in the maintenance scenario, how many replay at once, and how deep
    #: the second, pipelined run pipelines them (1: no pipelined run).
    queued_writes: int = 50_000
    replay_concurrency: int = 1
    replay_pipeline: int = 32

    @property
    def settle(self) -> float:
        """Pause before reading memory, so the process has finished reacting."""
        return 0.3 if self.quick else 1.5

    def to_json(self) -> dict[str, object]:
        return {"duration_s": self.duration, "warmup_s": self.warmup, "rounds": self.rounds,
                "quick": self.quick, "scenarios": list(self.scenarios),
                "targets": list(self.targets), "nodes": self.nodes,
                "connections": self.connections, "rates": list(self.rates),
                "idle_connections": self.idle_connections,
                "stream_size_bytes": self.stream_size, "queued_writes": self.queued_writes,
                "replay_concurrency": self.replay_concurrency,
                "replay_pipeline": self.replay_pipeline}
