"""The four scenarios. Each returns rows and never raises for a target that cannot
run: a missing tool or a failed start becomes a skipped or failed row."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

from bench.clients import ClientError, download, open_idle
from bench.fairness import fairness
from bench.fleet import Fleet, Target, Unavailable
from bench.listen_models import listen_models
from bench.load import LoadError, LoadResult, hey, hey_workers, wrk
from bench.maintenance import maintenance
from bench.procfs import RssSampler, cpu_seconds, tree_rss_kb
from bench.report import (
    Row,
    failed,
    latency_scenario,
    progress,
    relate,
    skipped,
    unavailable,
)
from bench.settings import TARGETS, Settings, format_size

MB = 1024 * 1024
KB_PER_MB = 1024


# -- load runs, interleaved -------------------------------------------------------------------

Run = Callable[[Target, float], LoadResult]


def _interleaved(targets: dict[str, Target], settings: Settings, scenario: str, what: str,
                 run: Run) -> tuple[dict[str, list[LoadResult]], list[Row]]:
    """Every target once per round, rounds in sequence: a noisy neighbour then slows
    every target a little rather than one target a lot. The first round warms up first
    (connection pools, caches); a load generator that fails ends that target's runs."""
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    failures: list[Row] = []
    live = dict(targets)
    for round_no in range(settings.rounds):
        for name, target in list(live.items()):
            progress(f"{scenario}: {name}, {what}, round {round_no + 1}/{settings.rounds}")
            try:
                if round_no == 0 and settings.warmup > 0:
                    run(target, settings.warmup)
                results[name].append(run(target, settings.duration))
            except LoadError as exc:
                failures.append(failed(name, scenario, str(exc).splitlines()[0]))
                del live[name], results[name]
    return results, failures


def _median_note(runs: list[LoadResult], note: str = "") -> str:
    """Errors, and the spread of the rounds' request rates: a wide range means noise."""
    parts = [note] if note else []
    errors = sum(r.errors for r in runs)
    if errors:
        parts.append(f"{errors} errors")
    if len(runs) > 1:
        rates = [r.rps for r in runs]
        parts.append(f"median of {len(runs)}, {min(rates):,.0f}-{max(rates):,.0f} req/s")
    return "; ".join(parts)


def _available(fleet: Fleet, names: list[str], scenario: str) -> tuple[dict[str, Target],
                                                                      list[Row]]:
    targets: dict[str, Target] = {}
    rows: list[Row] = []
    for name in names:
        try:
            targets[name] = fleet.target(name)
        except Unavailable as exc:
            rows.append(unavailable(name, scenario, exc.status))
    return targets, rows


# -- max throughput ----------------------------------------------------------------------------

def _wrk_with_cpu(wrk_path: str, target: Target, connections: int,
                  seconds: float) -> LoadResult:
    """One ``wrk`` run against ``target`` with the CPU its processes spent per request:
    steadier than req/s on a shared machine (neighbours steal time, but they do not make
    each request cost more cycles, much)."""
    before = cpu_seconds(target.child.pid)
    result = wrk(wrk_path, target.url(), connections=connections, duration=seconds)
    used = cpu_seconds(target.child.pid) - before
    return dataclasses.replace(
        result, cpu_us=used / result.requests * 1e6 if result.requests else None)


def _wrk_rounds(wrk_path: str, targets: dict[str, Target], settings: Settings, scenario: str,
                over: str = "") -> tuple[dict[str, list[LoadResult]], list[Row]]:
    """``_wrk_with_cpu`` against every target, in interleaved rounds."""
    def run(target: Target, seconds: float) -> LoadResult:
        return _wrk_with_cpu(wrk_path, target, settings.connections, seconds)

    return _interleaved(targets, settings, scenario,
                        f"wrk -c{settings.connections} {settings.duration:g}s{over}", run)


def _wrk_rows(name: str, scenario: str, runs: list[LoadResult], *, note: str = "",
              latency: bool = True, cpu_note: str | None = "user+system CPU of the proxy's "
              "processes per request") -> list[Row]:
    """A target's medians: req/s (with the rounds' spread), p50 and p99 if ``latency``,
    and the CPU per request unless ``cpu_note`` is None."""
    rows = [Row(name, scenario, "req/s", statistics.median(r.rps for r in runs), "req/s",
                note=_median_note(runs, note))]
    if latency:
        rows += [Row(name, scenario, "p50", statistics.median(r.p50_ms for r in runs), "ms"),
                 Row(name, scenario, "p99", statistics.median(r.p99_ms for r in runs), "ms")]
    cpu = [r.cpu_us for r in runs if r.cpu_us is not None]
    if cpu and cpu_note is not None:
        rows.append(Row(name, scenario, "CPU/request", statistics.median(cpu), "us",
                        note=cpu_note))
    return rows


def throughput(fleet: Fleet, settings: Settings) -> list[Row]:
    """``wrk -t1 -c50`` against every target; medians of the rounds."""
    scenario = "throughput"
    names = [t for t in TARGETS if t in settings.targets]
    wrk_path = fleet.tools.path("wrk")
    if wrk_path is None:
        reason = fleet.tools.missing("wrk") or "wrk not installed"
        return [skipped(n, scenario, reason) for n in names]
    targets, rows = _available(fleet, names, scenario)
    results, failures = _wrk_rounds(wrk_path, targets, settings, scenario)
    rows += failures
    for name, runs in results.items():
        # direct's process is one node, not a proxy: no CPU per request of its own.
        rows += (_wrk_rows(name, scenario, runs, cpu_note=None) if name == "direct"
                 else _wrk_rows(name, scenario, runs))
    relate(rows, "direct")
    return _ordered(rows, names)


# -- latency at fixed rates --------------------------------------------------------------------

def latency(fleet: Fleet, settings: Settings) -> list[Row]:
    """hagw and direct at each fixed rate; the p99 the gateway adds over direct."""
    names: list[str] = [t for t in ("direct", "hagw") if t in settings.targets]
    hey_path = fleet.tools.path("hey")
    rows: list[Row] = []
    for rate in settings.rates:
        scenario = latency_scenario(rate)
        if hey_path is None:
            reason = fleet.tools.missing("hey") or "hey not installed"
            rows += [skipped(n, scenario, reason) for n in names]
            continue
        targets, measured = _available(fleet, names, scenario)
        workers = hey_workers(rate)
        shape = f"hey -c {workers} -q {rate / workers:g}"

        def run(target: Target, seconds: float, rate: int = rate) -> LoadResult:
            return hey(hey_path, target.url(), rate=rate, duration=seconds)

        results, failures = _interleaved(targets, settings, scenario,
                                         f"{shape} {settings.duration:g}s", run)
        measured += failures
        for name, runs in results.items():
            achieved = statistics.median(r.rps for r in runs)
            note = shape + (f"; could not hold {rate} req/s" if achieved < 0.95 * rate else "")
            measured += [Row(name, scenario, "achieved", achieved, "req/s",
                             note=_median_note(runs, note)),
                         Row(name, scenario, "p50", statistics.median(r.p50_ms for r in runs),
                             "ms"),
                         Row(name, scenario, "p99", statistics.median(r.p99_ms for r in runs),
                             "ms")]
        relate(measured, "direct", metrics=("p50", "p99"))
        p99 = {r.target: r.value for r in measured
               if r.metric == "p99" and r.ok and r.value is not None}
        if "hagw" in p99 and "direct" in p99:
            measured.append(Row("hagw", scenario, "p99 added", p99["hagw"] - p99["direct"],
                                "ms", reference="direct",
                                note="hagw p99 minus direct p99 (hey: 0.1 ms resolution)"))
        rows += _ordered(measured, names)
    return rows


# -- memory with idle connections --------------------------------------------------------------

def memory(fleet: Fleet, settings: Settings) -> list[Row]:
    """RSS growth for N idle keep-alive client connections; the naive proxy is the
    reference for what aiohttp itself costs per connection."""
    scenario = "idle-memory"
    rows: list[Row] = []
    for name in ("hagw", "naive"):
        if name not in settings.targets:
            continue
        try:
            target = fleet.target(name)
        except Unavailable as exc:
            rows.append(unavailable(name, scenario, exc.status))
            continue
        try:
            rows += _idle_rows(target, settings, scenario)
        except (OSError, LookupError) as exc:  # the server died under the connections
            rows.append(failed(name, scenario, f"{exc.__class__.__name__}: {exc}"))
    relate(rows, "naive", metrics=("added", "per conn", "per 10k conns"))
    return rows


def _idle_rows(target: Target, settings: Settings, scenario: str) -> list[Row]:
    wanted = settings.idle_connections
    progress(f"memory: {wanted} idle keep-alive connections to {target.name}")
    pid = target.child.pid
    before = tree_rss_kb(pid)
    idle = open_idle(target.port, wanted, time_limit=30 + wanted / 100)
    opened = idle.opened
    try:
        time.sleep(settings.settle)
        after = tree_rss_kb(pid)
        alive = idle.still_open()
    finally:
        idle.close()
    note = f"opened in {idle.seconds:.1f}s"
    if opened < wanted:
        note = f"only {opened} of {wanted} opened: {idle.stopped_by}"
    if alive < opened:
        note += f"; the server closed {opened - alive} while idle"
    rows = [Row(target.name, scenario, "connections", opened, "conns", note=note),
            Row(target.name, scenario, "RSS before", before / KB_PER_MB, "MB"),
            Row(target.name, scenario, "RSS after", after / KB_PER_MB, "MB")]
    if opened == 0:
        return [*rows, failed(target.name, scenario, f"no connection opened: {idle.stopped_by}")]
    added_kb = after - before
    return [*rows,
            Row(target.name, scenario, "added", added_kb / KB_PER_MB, "MB"),
            Row(target.name, scenario, "per conn", added_kb / opened, "KB"),
            Row(target.name, scenario, "per 10k conns", added_kb / opened * 10_000 / KB_PER_MB,
                "MB")]


# -- streaming ---------------------------------------------------------------------------------

def streaming(fleet: Fleet, settings: Settings) -> list[Row]:
    """One large body from a demo node's /download, through hagw and directly."""
    scenario = "streaming"
    size = settings.stream_size
    try:
        direct, gateway = fleet.streaming_pair()
    except Unavailable as exc:
        return [unavailable(name, scenario, exc.status) for name in ("direct", "hagw")]
    path = f"/download?size={size}"
    # Generous: a Python proxy on a loaded box still moves far more than 5 MB/s.
    limit = 60 + size / (5 * MB)
    speeds: dict[str, list[float]] = {"direct": [], "hagw": []}
    before_kb = tree_rss_kb(gateway.child.pid)
    peak_kb = before_kb
    try:
        for round_no in range(settings.rounds):
            for target in (direct, gateway):
                progress(f"streaming: {target.name}, {format_size(size)}, "
                         f"round {round_no + 1}/{settings.rounds}")
                if target is gateway:
                    with RssSampler(gateway.child.pid) as sampler:
                        got = download(target.port, path, expect=size, time_limit=limit)
                    peak_kb = max(peak_kb, sampler.peak_kb)
                else:
                    got = download(target.port, path, expect=size, time_limit=limit)
                speeds[target.name].append(got.mb_per_s)
    except (OSError, ClientError) as exc:
        return [failed("direct", scenario, str(exc)), failed("hagw", scenario, str(exc))]
    label = f"{format_size(size)} from a demo aiohttp node" + (
        f"; median of {settings.rounds}" if settings.rounds > 1 else "")
    rows = [Row("direct", scenario, "MB/s", statistics.median(speeds["direct"]), "MB/s",
                note=label),
            Row("hagw", scenario, "MB/s", statistics.median(speeds["hagw"]), "MB/s",
                note=label),
            Row("hagw", scenario, "RSS before", before_kb / KB_PER_MB, "MB"),
            Row("hagw", scenario, "peak RSS", peak_kb / KB_PER_MB, "MB",
                ratio=peak_kb / before_kb, reference="RSS before",
                note=f"+{(peak_kb - before_kb) / KB_PER_MB:.1f} MB while streaming "
                     f"(sampled every 50 ms)")]
    relate(rows, "direct", metrics=("MB/s",))
    return rows


# -- worker processes --------------------------------------------------------------------------

def workers(fleet: Fleet, settings: Settings) -> list[Row]:
    """hagw with one worker against two, in one run: throughput and CPU per request under
    ``wrk`` (which shares the machine), and the memory of idle connections summed over the
    supervisor and every worker."""
    scenario = "workers"
    names = ["hagw", "hagw-2w"]
    if "hagw" not in settings.targets:
        return [skipped(n, scenario, "not selected (--targets)") for n in names]
    wrk_path = fleet.tools.path("wrk")
    targets, rows = _available(fleet, names, scenario)
    if wrk_path is None:
        rows += [skipped(n, scenario, fleet.tools.missing("wrk") or "wrk not installed")
                 for n in targets]
    else:
        results, failures = _wrk_rounds(wrk_path, targets, settings, scenario)
        rows += failures
        for name, runs in results.items():
            rows += _wrk_rows(name, scenario, runs, latency=False,
                              cpu_note="user+system CPU of the supervisor and its workers")
    for name, target in targets.items():
        try:
            idle = _idle_rows(target, settings, scenario)
        except (OSError, LookupError) as exc:
            rows.append(failed(name, scenario, f"{exc.__class__.__name__}: {exc}"))
            continue
        rows += [r for r in idle if r.metric in ("added", "per 10k conns")]
    relate(rows, "hagw", metrics=("req/s", "CPU/request", "per 10k conns"))
    return _ordered(rows, names)


# -- HTTPS -----------------------------------------------------------------------------------

def https(fleet: Fleet, settings: Settings) -> list[Row]:
    """hagw terminating TLS against nginx terminating TLS, with the same certificate and
    nodes, in one run: ``wrk -c`` over kept-alive HTTPS connections; hagw's req/s as a
    ratio of nginx's."""
    scenario = "https"
    names = [n for n in ("hagw-tls", "nginx-tls")
             if {"hagw-tls": "hagw", "nginx-tls": "nginx"}[n] in settings.targets]
    wrk_path = fleet.tools.path("wrk")
    if wrk_path is None:
        reason = fleet.tools.missing("wrk") or "wrk not installed"
        return [skipped(n, scenario, reason) for n in names]
    targets, rows = _available(fleet, names, scenario)
    results, failures = _wrk_rounds(wrk_path, targets, settings, scenario, " over TLS")
    rows += failures
    for name, runs in results.items():
        rows += _wrk_rows(name, scenario, runs, note="the same certificate and nodes")
    relate(rows, "nginx-tls")
    return _ordered(rows, names)


def _ordered(rows: list[Row], names: list[str]) -> list[Row]:
    """Rows grouped by target in the canonical target order."""
    return sorted(rows, key=lambda r: names.index(r.target) if r.target in names else len(names))


SCENARIO_FUNCTIONS: dict[str, Callable[[Fleet, Settings], list[Row]]] = {
    "throughput": throughput,
    "latency": latency,
    "memory": memory,
    "streaming": streaming,
    "fairness": fairness,
    "maintenance": maintenance,
    "workers": workers,
    "https": https,
    "listen": lambda fleet, settings: listen_models(
        seconds=1.5 if settings.quick else 3.0),
}
