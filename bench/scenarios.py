"""The four scenarios. Each returns rows and never raises for a target that cannot
run: a missing tool or a failed start becomes a skipped or failed row."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench.clients import ClientError, download, open_idle
from bench.fleet import Fleet, Target, Unavailable
from bench.load import LoadError, LoadResult, hey, wrk
from bench.procfs import RssSampler, rss_kb
from bench.report import Row, failed, latency_scenario, progress, relate, skipped
from bench.settings import TARGETS, Settings, format_size

MB = 1024 * 1024
KB_PER_MB = 1024


def _unavailable(name: str, scenario: str, exc: Unavailable) -> Row:
    return Row(name, scenario, "-", None, "", status=exc.status)


# -- max throughput ----------------------------------------------------------------------------

def throughput(fleet: Fleet, settings: Settings) -> list[Row]:
    """``wrk -t1 -c50`` against every target, rounds interleaved; medians reported."""
    scenario = "throughput"
    names = [t for t in TARGETS if t in settings.targets]
    wrk_path = fleet.tools.path("wrk")
    if wrk_path is None:
        reason = fleet.tools.missing("wrk") or "wrk not installed"
        return [skipped(n, scenario, reason) for n in names]
    rows: list[Row] = []
    targets: dict[str, Target] = {}
    for name in names:
        try:
            targets[name] = fleet.target(name)
        except Unavailable as exc:
            rows.append(_unavailable(name, scenario, exc))
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    for round_no in range(settings.rounds):
        # Interleaved rounds: a noisy neighbour slows every target, not just one.
        for name, target in list(targets.items()):
            progress(f"throughput: {name} (round {round_no + 1}/{settings.rounds}, "
                     f"wrk -c{settings.connections} {settings.duration:g}s)")
            try:
                if settings.warmup > 0:
                    wrk(wrk_path, target.url(), connections=settings.connections,
                        duration=settings.warmup)
                results[name].append(wrk(wrk_path, target.url(),
                                         connections=settings.connections,
                                         duration=settings.duration))
            except LoadError as exc:
                rows.append(failed(name, scenario, str(exc).splitlines()[0]))
                del targets[name], results[name]
    for name, runs in results.items():
        errors = sum(r.errors for r in runs)
        note = f"{errors} errors" if errors else ""
        if len(runs) > 1:
            note = (note + "; " if note else "") + f"median of {len(runs)} rounds"
        rps = statistics.median(r.rps for r in runs)
        rows += [Row(name, scenario, "req/s", rps, "req/s", note=note),
                 Row(name, scenario, "p50", statistics.median(r.p50_ms for r in runs), "ms"),
                 Row(name, scenario, "p99", statistics.median(r.p99_ms for r in runs), "ms")]
    relate(rows, "direct")
    return _ordered(rows, names)


# -- latency at fixed rates --------------------------------------------------------------------

def latency(fleet: Fleet, settings: Settings) -> list[Row]:
    """hagw and direct at each fixed rate; the p99 the gateway adds over direct."""
    names = [t for t in ("direct", "hagw") if t in settings.targets]
    hey_path = fleet.tools.path("hey")
    rows: list[Row] = []
    for rate in settings.rates:
        scenario = latency_scenario(rate)
        if hey_path is None:
            reason = fleet.tools.missing("hey") or "hey not installed"
            rows += [skipped(n, scenario, reason) for n in names]
            continue
        measured: list[Row] = []
        for name in names:
            try:
                target = fleet.target(name)
            except Unavailable as exc:
                measured.append(_unavailable(name, scenario, exc))
                continue
            progress(f"latency: {name} at {rate} req/s for {settings.duration:g}s (hey)")
            try:
                result = hey(hey_path, target.url(), rate=rate, duration=settings.duration)
            except LoadError as exc:
                measured.append(failed(name, scenario, str(exc).splitlines()[0]))
                continue
            notes = []
            if result.rps < 0.95 * rate:
                notes.append(f"could not hold {rate} req/s")
            if result.errors:
                notes.append(f"{result.errors} errors")
            measured += [Row(name, scenario, "achieved", result.rps, "req/s",
                             note="; ".join(notes)),
                         Row(name, scenario, "p50", result.p50_ms, "ms"),
                         Row(name, scenario, "p99", result.p99_ms, "ms")]
        relate(measured, "direct", metrics=("p50", "p99"))
        p99 = {r.target: r.value for r in measured
               if r.metric == "p99" and r.ok and r.value is not None}
        if "hagw" in p99 and "direct" in p99:
            measured.append(Row("hagw", scenario, "p99 added", p99["hagw"] - p99["direct"],
                                "ms", reference="direct",
                                note="hagw p99 minus direct p99 (hey: 0.1 ms resolution)"))
        rows += measured
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
            rows.append(_unavailable(name, scenario, exc))
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
    before = rss_kb(pid)
    idle = open_idle(target.port, wanted, time_limit=30 + wanted / 100)
    try:
        time.sleep(settings.settle)
        after = rss_kb(pid)
        alive = idle.still_open()
    finally:
        idle.close()
    opened = idle.opened
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
        return [_unavailable("direct", scenario, exc), _unavailable("hagw", scenario, exc)]
    path = f"/download?size={size}"
    # Generous: a Python proxy on a loaded box still moves far more than 5 MB/s.
    limit = 60 + size / (5 * MB)
    speeds: dict[str, list[float]] = {"direct": [], "hagw": []}
    before_kb = rss_kb(gateway.child.pid)
    peak_kb = before_kb
    try:
        for _ in range(settings.rounds):
            for target in (direct, gateway):
                progress(f"streaming: {format_size(size)} from {target.name}")
                if target is gateway:
                    with RssSampler(gateway.child.pid) as sampler:
                        got = download(target.port, path, expect=size, time_limit=limit)
                    peak_kb = max(peak_kb, sampler.peak_kb)
                else:
                    got = download(target.port, path, expect=size, time_limit=limit)
                speeds[target.name].append(got.mb_per_s)
    except (OSError, ClientError) as exc:
        return [failed("direct", scenario, str(exc)), failed("hagw", scenario, str(exc))]
    label = f"{format_size(size)} body"
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


def _ordered(rows: list[Row], names: list[str]) -> list[Row]:
    """Rows grouped by target in the canonical target order."""
    return sorted(rows, key=lambda r: names.index(r.target) if r.target in names else len(names))


SCENARIO_FUNCTIONS: dict[str, Callable[[Fleet, Settings], list[Row]]] = {
    "throughput": throughput,
    "latency": latency,
    "memory": memory,
    "streaming": streaming,
}
