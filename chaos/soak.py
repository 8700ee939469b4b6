"""``python -m chaos --soak``: a long run under constant load with a single-node fault
every 30 seconds (cycling through kill, hang, latency, 503 bursts, resets, drips and
warn, on each node in turn), sampling the gateway's RSS every 5 seconds.

After the warm-up (the first fifth of the run, two minutes of ten) the RSS must
stay within 10% of its post-warm-up baseline, and no accepted write may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from chaos.analysis import Check, no_duplicated_writes, no_lost_writes
from chaos.fleet import Node
from chaos.report import ScenarioResult, environment, render, render_details, write_json
from chaos.settings import RESULTS, Settings
from chaos.stage import Stage

PERIOD = 30.0
FAULT_FOR = 10.0
SAMPLE_EVERY = 5.0
FLAT_WITHIN = 0.10

Undo = Callable[[], Awaitable[None]]


async def _kill(stage: Stage, node: Node) -> Undo:
    at = await stage.fleet.kill(node)

    async def undo() -> None:
        await stage.fleet.start(node)
        stage.node_window(f"{node.name} SIGKILL", node.name, at, time.monotonic(), note=False)

    return undo


async def _hang(stage: Stage, node: Node) -> Undo:
    at = stage.fleet.freeze(node)

    async def undo() -> None:
        stage.node_window(f"{node.name} SIGSTOP", node.name, at, stage.fleet.thaw(node),
                          note=False)

    return undo


def _setting(on: dict[str, Any], off: dict[str, Any]) -> Callable[[Stage, Node],
                                                                  Awaitable[Undo]]:
    async def inject(stage: Stage, node: Node) -> Undo:
        await stage.fleet.fault(node, **on)
        at = time.monotonic()

        async def undo() -> None:
            await stage.fleet.fault(node, **off)
            stage.node_window(f"{node.name} {on}", node.name, at, time.monotonic(),
                              note=False)

        return undo

    return inject


FAULTS: tuple[tuple[str, Callable[[Stage, Node], Awaitable[Undo]]], ...] = (
    ("node-kill", _kill),
    ("node-hang", _hang),
    ("latency", _setting({"latency_ms": 300}, {"latency_ms": 0})),
    ("error-burst", _setting({"error_rate": 1.0, "error_status": 503}, {"error_rate": 0.0})),
    ("reset", _setting({"reset_rate": 0.2}, {"reset_rate": 0.0})),
    ("drip", _setting({"drip_bps": 2000}, {"drip_bps": 0})),
    ("warn", _setting({"health": "warn"}, {"health": "ok"})),
)


class RssSeries:
    """VmRSS of the gateway every few seconds: (seconds since start, KiB)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rss sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        began = time.monotonic()
        while True:
            # The gateway may be gone for a moment; a missing sample is not a failure.
            with contextlib.suppress(OSError, LookupError):
                self.samples.append((round(time.monotonic() - began, 1),
                                     self.stage.gateway.rss_kb()))
            await asyncio.sleep(SAMPLE_EVERY)


def rss_verdict(samples: list[tuple[float, int]], warmup: float) -> tuple[Check, dict[str, Any]]:
    after = [kb for t, kb in samples if t >= warmup]
    if len(after) < 3:
        return Check("gateway RSS flat after warm-up", False, "too few samples"), {}
    # Baseline: the median of the first half-minute after warm-up, robust to one spike.
    baseline = statistics.median(after[:6])
    low, high = min(after), max(after)
    drift = max(high - baseline, baseline - low) / baseline
    times = [t for t, _ in samples if t >= warmup]
    slope = _slope(times, after) * 60  # KiB per minute
    summary = {"samples": len(samples), "warmup_s": warmup, "baseline_kb": baseline,
               "min_kb": low, "max_kb": high, "end_kb": after[-1],
               "drift": round(drift, 4), "slope_kb_per_min": round(slope, 1),
               "start_kb": samples[0][1]}
    detail = (f"baseline {baseline / 1024:.1f} MiB, min {low / 1024:.1f}, max "
              f"{high / 1024:.1f}, end {after[-1] / 1024:.1f} MiB: within "
              f"{drift:.1%} (limit {FLAT_WITHIN:.0%}); trend {slope:+.0f} KiB/min")
    return Check("gateway RSS flat after warm-up", drift <= FLAT_WITHIN, detail), summary


def _slope(xs: list[float], ys: list[int]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def series_lines(samples: list[tuple[float, int]], every: float = 60.0) -> list[str]:
    """One line per minute: the RSS then (the full series is in the JSON)."""
    lines, next_at = [], 0.0
    for t, kb in samples:
        if t >= next_at:
            lines.append(f"   t={t / 60:5.1f} min  RSS {kb / 1024:7.1f} MiB")
            next_at = t - t % every + every
    return lines


async def run_soak(settings: Settings) -> int:
    total = settings.soak_minutes * 60
    warmup = total / 5
    root = settings.work_dir / time.strftime("soak-%Y%m%d-%H%M%S")
    print(f"hagw chaos soak: {settings.soak_minutes:g} min at {settings.rate:g} req/s, a "
          f"single-node fault every {PERIOD:g}s for {FAULT_FOR:g}s; RSS every "
          f"{SAMPLE_EVERY:g}s, flat within {FLAT_WITHIN:.0%} after {warmup / 60:g} min; "
          f"work dir {root}", flush=True)
    result = ScenarioResult("soak", f"{settings.soak_minutes:g} min of load with periodic "
                            "single-node faults", "error")
    began, load_before = time.monotonic(), os.getloadavg()[0]
    summary: dict[str, Any] = {}
    series = None
    async with aiohttp.ClientSession() as http:
        stage = Stage(settings, "soak", http, root)
        stage.load.config.max_requests = int(settings.rate * (total + 60) * 1.2)
        try:
            await stage.open()
            series = RssSeries(stage)
            series.start()
            await stage.start_load()
            injected = await _cycle(stage, began, total)
            stage.notes.append(f"{sum(injected.values())} faults: " + ", ".join(
                f"{name} x{count}" for name, count in injected.items()))
            await series.stop()
            t = await stage.finish()
            check, summary = rss_verdict(series.samples, warmup)
            stage.checks += [check, no_lost_writes(t), no_duplicated_writes(t)]
            result.tally = t
            result.status = "passed" if all(c.passed for c in stage.checks) else "failed"
        except Exception as exc:
            result.reason = f"{type(exc).__name__}: {exc}"
        finally:
            if series is not None:
                await series.stop()
            await stage.close()
            result.checks, result.notes, result.timeline = (stage.checks, stage.notes,
                                                            stage.timeline)
            result.seconds = time.monotonic() - began
            result.loadavg = (load_before, os.getloadavg()[0])
    samples = series.samples if series is not None else []
    print(render_details(result))
    print("RSS series (one line per minute):")
    print("\n".join(series_lines(samples)))
    print(render([result]))
    print("\nsoak: " + ("PASS" if result.status == "passed" else "FAIL"))
    payload = {"suite": "hagw chaos soak", "environment": environment(),
               "settings": {"rate": settings.rate, "minutes": settings.soak_minutes,
                            "period_s": PERIOD, "fault_s": FAULT_FOR,
                            "sample_every_s": SAMPLE_EVERY, "flat_within": FLAT_WITHIN},
               "passed": result.status == "passed", "rss": summary,
               "rss_series": [{"t": t, "kb": kb} for t, kb in samples],
               "scenarios": [result.to_json()]}
    for path in write_json(payload, RESULTS, settings.json_path, "soak"):
        print(f"wrote {path}")
    return 0 if result.status == "passed" else 1


async def _cycle(stage: Stage, began: float, total: float) -> Counter[str]:
    """A fault every PERIOD seconds, each kind on each node in turn, until ``total``."""
    injected: Counter[str] = Counter()
    n = 0
    nodes = stage.fleet.nodes
    while True:
        slot_start = began + (n + 1) * PERIOD
        if slot_start + PERIOD > began + total:
            break
        await asyncio.sleep(max(0.0, slot_start - time.monotonic()))
        name, inject = FAULTS[n % len(FAULTS)]
        node = nodes[n % len(nodes)]
        undo = await inject(stage, node)
        stage.mark(f"{name} on {node.name}")
        await asyncio.sleep(FAULT_FOR)
        await undo()
        stage.mark(f"{name} on {node.name} removed")
        injected[name] += 1
        n += 1
    await asyncio.sleep(max(0.0, began + total - time.monotonic()))
    return injected
