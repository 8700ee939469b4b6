"""The load generators: wrk for maximum throughput, hey for fixed request rates.

Both are driven as bounded subprocesses and their text reports parsed here. wrk's
``--latency`` percentiles have microsecond resolution; hey prints seconds with four
decimals, so its percentiles are to 0.1 ms.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bench.processes import run_bounded

#: Extra seconds a load generator may take beyond its own duration before it is killed.
GRACE = 30.0

_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class LoadError(RuntimeError):
    """The load generator failed or printed something this module cannot read."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    tool: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    #: Socket errors, timeouts and non-2xx/3xx answers.
    errors: int
    #: CPU time the target process tree used per request, when measured.
    cpu_us: float | None = None


def wrk(path: str, url: str, *, connections: int, duration: float, threads: int = 1,
        headers: tuple[str, ...] = ()) -> LoadResult:
    seconds = max(1, math.ceil(duration))
    argv = [path, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "--timeout", "5s", *(arg for h in headers for arg in ("-H", h)), url]
    done = run_bounded(argv, timeout=seconds + GRACE)
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}: {done.stderr.strip()[:300]}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> LoadResult:
    rps = _search(r"Requests/sec:\s+([\d.]+)", text, "Requests/sec")
    requests = _search(r"(\d+) requests in", text, "request count")
    percentiles = {float(p): _wrk_ms(v, u) for p, v, u in
                   re.findall(r"^\s+([\d.]+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise LoadError(f"wrk printed no latency distribution (run with --latency):\n{text}")
    errors = 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return LoadResult("wrk", int(requests), rps, percentiles[50.0], percentiles[99.0], errors)


def _wrk_ms(value: str, unit: str) -> float:
    return float(value) * _WRK_UNITS[unit]


#: Requests per second each hey worker sends. hey starts every worker at once and each
#: paces itself with its own ticker, so requests arrive in bursts of ``-c`` every 1/q s:
#: a burst of 50 queues inside a single-threaded proxy and measures the burst, not the
#: rate. Few fast workers keep bursts small; 250/s still lets a worker wait 4 ms.
PER_WORKER_QPS = 250


def hey_workers(rate: int) -> int:
    return max(1, math.ceil(rate / PER_WORKER_QPS))


MIN_HEY_SAMPLES = 200


def hey(path: str, url: str, *, rate: int, duration: float,
        headers: tuple[str, ...] = ()) -> LoadResult:
    """``rate`` requests per second in total: ``-c`` workers of ``-q`` requests/s each."""
    workers = hey_workers(rate)
    # hey sets its 99th percentile only from 100 answers on (below that it prints 0), so a
    # short run at a low rate is stretched to enough samples.
    seconds = max(1, math.ceil(duration), math.ceil(MIN_HEY_SAMPLES / rate))
    argv = [path, "-z", f"{seconds}s", "-c", str(workers), "-q", f"{rate / workers:g}",
            "-t", "10", *(arg for h in headers for arg in ("-H", h)), url]
    done = run_bounded(argv, timeout=seconds + GRACE)
    if done.returncode != 0:
        raise LoadError(f"hey exited with {done.returncode}: {done.stderr.strip()[:300]}")
    return parse_hey(done.stdout)


def hey_count(path: str, url: str, *, requests: int, connections: int, method: str,
              body: str, timeout: float) -> tuple[float, dict[int, int], int]:
    """Send exactly ``requests`` requests as fast as ``connections`` allow: (seconds,
    answers by status, requests with no answer)."""
    argv = [path, "-n", str(requests), "-c", str(connections), "-m", method, "-d", body,
            "-T", "application/json", "-t", "20", url]
    done = run_bounded(argv, timeout=timeout)
    if done.returncode != 0:
        raise LoadError(f"hey exited with {done.returncode}: {done.stderr.strip()[:300]}")
    total = _search(r"Total:\s+([\d.]+) secs", done.stdout, "Total")
    return (total, *_hey_answers(done.stdout))


def _hey_answers(text: str) -> tuple[dict[int, int], int]:
    """hey's answers by status, and the requests that got no answer at all (refused, reset,
    timed out), which it lists only under "Error distribution"."""
    head, _, error_part = text.partition("Error distribution:")
    statuses = {int(code): int(n) for code, n in
                re.findall(r"^\s+\[(\d{3})\]\s+(\d+) responses", head, re.M)}
    failed = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", error_part, re.M))
    return statuses, failed


def parse_hey(text: str) -> LoadResult:
    rps = _search(r"Requests/sec:\s+([\d.]+)", text, "Requests/sec")
    percentiles = {float(p): float(s) * 1000.0 for p, s in
                   re.findall(r"^\s+([\d.]+)% in ([\d.]+) secs", text, re.M)}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise LoadError(f"hey printed no latency distribution (did every request fail?):\n"
                        f"{text[-1500:]}")
    statuses, failed = _hey_answers(text)
    errors = sum(n for code, n in statuses.items() if code >= 400) + failed
    return LoadResult("hey", sum(statuses.values()) + failed, rps, percentiles[50.0],
                      percentiles[99.0], errors)


def _search(pattern: str, text: str, what: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise LoadError(f"no {what} in the load generator's report:\n{text[-1500:]}")
    return float(match.group(1))
