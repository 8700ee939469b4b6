"""The processes' own metrics. The gateway's registry has prometheus_client's
``process_*`` (RSS, CPU, file descriptors, start time) and ``python_*`` series for the
process that serves ``/metrics``: the single process with ``workers: 0``, else the
supervisor. Workers are labelled, not summed (a sum of start times means nothing):
``hagw_worker_resident_memory_bytes{worker}``, ``hagw_worker_cpu_seconds_total{worker}``,
``hagw_worker_open_fds{worker}``, read from ``/proc`` at scrape time."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def register_process_metrics(registry: CollectorRegistry) -> None:
    """process_* and python_* of this process on ``registry`` (not the global one)."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def read_proc(pid: int) -> tuple[float, float, int] | None:
    """RSS bytes, CPU seconds (user + system) and open fds of ``pid``; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        rss = float(fields[21]) * _PAGE
        cpu = (float(fields[11]) + float(fields[12])) / _TICKS
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    return rss, cpu, fds


class WorkerProcesses(Collector):
    """hagw_worker_* per worker process, for the supervisor's /metrics."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        rss = GaugeMetricFamily("hagw_worker_resident_memory_bytes",
                                "Resident memory of each worker process", labels=["worker"])
        cpu = CounterMetricFamily("hagw_worker_cpu_seconds", "User and system CPU time of "
                                  "each worker process", labels=["worker"])
        fds = GaugeMetricFamily("hagw_worker_open_fds", "Open file descriptors of each "
                                "worker process", labels=["worker"])
        for worker, pid in sorted(self._pids().items()):
            figures = read_proc(pid)
            if figures is None:
                continue
            rss.add_metric([worker], figures[0])
            cpu.add_metric([worker], figures[1])
            fds.add_metric([worker], float(figures[2]))
        yield from (rss, cpu, fds)

    def describe(self) -> Iterator[Metric]:
        return iter(())
