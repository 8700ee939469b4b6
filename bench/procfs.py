"""Process memory from /proc/<pid>/status, read once or sampled while a scenario runs."""

from __future__ import annotations

import os
import threading
from types import TracebackType


def _tree() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Every process's children, and its user plus system CPU seconds."""
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
    return children, times


def family(pid: int) -> list[int]:
    """``pid`` and every live descendant (nginx's and haproxy's workers, hagw's)."""
    children, _ = _tree()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and every live descendant (nginx's and
    haproxy's workers are children of the process we started, hagw's workers of its
    supervisor)."""
    children, times = _tree()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += children.get(current, [])
    return total


def tree_rss_kb(pid: int) -> int:
    """VmRSS summed over ``pid`` and its descendants: what a supervisor and its workers
    hold together. hagw's workers are exec'd, not forked, so they share no pages."""
    total = 0
    for member in family(pid):
        try:
            total += rss_kb(member)
        except (OSError, LookupError):
            continue  # it exited meanwhile
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
    """Samples VmRSS (of the process and its descendants) in a thread until closed;
    ``peak_kb`` is the largest sample.

    Sampling (instead of VmHWM) keeps the peak to the measured window only.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = tree_rss_kb(pid)
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not os.path.exists(f"/proc/{self.pid}"):
                return  # the process is gone; the caller notices on its own
            value = tree_rss_kb(self.pid)
            self.samples += 1
            self.peak_kb = max(self.peak_kb, value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
