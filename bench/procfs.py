"""Process memory from /proc/<pid>/status, read once or sampled while a scenario runs."""

from __future__ import annotations

import os
import threading
from types import TracebackType


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and every live descendant (nginx's and
    haproxy's workers are children of the process we started)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(entry)
        children.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += children.get(current, [])
    return total


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (the kernel's resident set, shared pages included)."""
    return _status_field(pid, "VmRSS")


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"/proc/{pid}/status has no {field}")


class RssSampler:
    """Samples VmRSS in a thread until closed; ``peak_kb`` is the largest sample.

    Sampling (instead of VmHWM) keeps the peak to the measured window only.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = rss_kb(pid)
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                value = rss_kb(self.pid)
            except (OSError, LookupError):
                return  # the process is gone; the caller notices on its own
            self.samples += 1
            self.peak_kb = max(self.peak_kb, value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
