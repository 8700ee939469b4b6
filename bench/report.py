"""Results: rows of (target, scenario, metric, value, ratio vs reference), the headline
ratios derived from them, the table printed to stdout and the JSON written to disk."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"
SCHEMA = 1


@dataclass(slots=True)
class Row:
    target: str
    scenario: str
    metric: str
    value: float | None
    unit: str
    #: ``value`` divided by the same metric of ``reference`` measured in this run.
    ratio: float | None = None
    reference: str | None = None
    #: "ok", "skipped: <reason>" or "failed: <reason>".
    status: str = "ok"
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def unavailable(target: str, scenario: str, status: str) -> Row:
    """A row with no figure: ``status`` says why ("skipped: ..." or "failed: ...")."""
    return Row(target, scenario, "-", None, "", status=status)


def skipped(target: str, scenario: str, reason: str) -> Row:
    return unavailable(target, scenario, f"skipped: {reason}")


def failed(target: str, scenario: str, reason: str) -> Row:
    return unavailable(target, scenario, f"failed: {reason}")


def relate(rows: list[Row], reference: str, metrics: tuple[str, ...] | None = None) -> None:
    """Fill in each row's ratio against the same scenario and metric of ``reference``."""
    base = {(r.scenario, r.metric): r.value for r in rows if r.target == reference and r.ok}
    for row in rows:
        ref = base.get((row.scenario, row.metric))
        if metrics is not None and row.metric not in metrics:
            continue
        if row.target != reference and row.ok and row.value is not None and ref:
            row.ratio = row.value / ref
            row.reference = reference


@dataclass(frozen=True, slots=True)
class Headline:
    """A named figure the README quotes: a ratio of two rows, or one row's value."""

    name: str
    value: float | None
    unit: str
    why_missing: str = ""


def _find(rows: list[Row], target: str, scenario: str, metric: str) -> Row | None:
    for row in rows:
        if (row.target, row.scenario, row.metric) == (target, scenario, metric) and row.ok:
            return row
    return None


def _why_missing(rows: list[Row], target: str, scenario: str, metric: str) -> str:
    if not any(r.scenario == scenario for r in rows):
        return f"{scenario} not run"
    for row in rows:
        if (row.target, row.scenario) == (target, scenario) and not row.ok:
            return f"{target}: {row.status}"
    if not any((r.target, r.scenario) == (target, scenario) for r in rows):
        return f"{target} not measured in this run"
    return f"no {scenario} {metric} for {target}"


def headlines(rows: list[Row], rates: tuple[int, ...]) -> list[Headline]:
    out: list[Headline] = []

    def ratio(name: str, scenario: str, metric: str, top: str, bottom: str) -> None:
        a, b = _find(rows, top, scenario, metric), _find(rows, bottom, scenario, metric)
        if a is None or b is None or a.value is None or not b.value:
            missing = top if a is None or a.value is None else bottom
            out.append(Headline(name, None, "x", _why_missing(rows, missing, scenario, metric)))
        else:
            out.append(Headline(name, a.value / b.value, "x"))

    def value(name: str, target: str, scenario: str, metric: str, unit: str) -> None:
        row = _find(rows, target, scenario, metric)
        out.append(Headline(name, row.value if row else None, unit,
                            "" if row else _why_missing(rows, target, scenario, metric)))

    for top, bottom in (("hagw", "direct"), ("hagw", "naive"), ("hagw", "nginx"),
                        ("hagw", "haproxy"), ("naive", "nginx")):
        ratio(f"throughput {top}/{bottom}", "throughput", "req/s", top, bottom)
    value("hagw CPU per request", "hagw", "throughput", "CPU/request", "us")
    ratio("https throughput hagw/nginx", "https", "req/s", "hagw-tls", "nginx-tls")
    ratio("CPU per request naive/hagw", "throughput", "CPU/request", "naive", "hagw")
    for rate in rates:
        scenario = latency_scenario(rate)
        value(f"p99 added by hagw at {rate} req/s", "hagw", scenario, "p99 added", "ms")
        ratio(f"p99 hagw/direct at {rate} req/s", scenario, "p99", "hagw", "direct")
    value("hagw MB per 10k idle connections", "hagw", "idle-memory", "per 10k conns", "MB")
    ratio("idle memory per connection hagw/naive", "idle-memory", "per 10k conns", "hagw",
          "naive")
    ratio("streaming throughput hagw/direct", "streaming", "MB/s", "hagw", "direct")
    value("polite client p99 while one client floods", "hagw", "fairness",
          "polite p99 in flood", "ms")
    value("polite client p99 alone", "hagw", "fairness", "polite p99 alone", "ms")
    value("maintenance: replay time of the queued writes", "hagw", "maintenance",
          "replay time", "s")
    value("maintenance: replay time vs the 120s reference", "hagw", "maintenance",
          "vs 120s reference", "x")
    value("maintenance: pipelined replay time", "hagw", "maintenance-pipelined",
          "replay time", "s")
    value("hagw peak RSS while streaming", "hagw", "streaming", "peak RSS", "MB")
    return out


def latency_scenario(rate: int) -> str:
    return f"latency@{rate}/s"


# -- output ------------------------------------------------------------------------------------

def _number(value: float, unit: str) -> str:
    if unit in ("req/s", "conns"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.3f}x"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} {unit}" if abs(value) >= 1 else f"{value:.3f} {unit}"


def _cells(row: Row) -> list[str]:
    if not row.ok:
        return [row.target, row.scenario, row.metric, "-", "-", row.status]
    value = _number(row.value, row.unit) if row.value is not None else "-"
    ratio = f"{row.ratio:.3f} vs {row.reference}" if row.ratio is not None else ""
    return [row.target, row.scenario, row.metric, value, ratio, row.note]


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def render(rows: list[Row], heads: list[Headline]) -> str:
    body = _table([_cells(r) for r in rows],
                  ["TARGET", "SCENARIO", "METRIC", "VALUE", "RATIO", "NOTE"])
    summary = _table([[h.name, _number(h.value, h.unit) if h.value is not None else "-",
                       h.why_missing] for h in heads], ["HEADLINE", "VALUE", "NOTE"])
    return f"{body}\n\n{summary}"


@dataclass
class Report:
    settings: dict[str, object]
    tools: dict[str, str | None]
    rows: list[Row]
    heads: list[Headline]
    started: float
    finished: float = field(default_factory=time.time)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.status.startswith("failed")]

    def to_json(self) -> dict[str, object]:
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        return {
            "schema": SCHEMA,
            "started_at": _iso(self.started),
            "finished_at": _iso(self.finished),
            "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                     "python": sys.version.split()[0],
                     "loadavg_at_end": list(load) if load else None},
            "settings": self.settings,
            "tools": self.tools,
            "rows": [asdict(r) for r in self.rows],
            "headlines": {h.name: {"value": h.value, "unit": h.unit,
                                   **({"missing": h.why_missing} if h.why_missing else {})}
                          for h in self.heads},
        }

    def write(self, path: Path | None) -> list[Path]:
        """``path`` if given, else a timestamped file plus ``latest.json`` in results/."""
        text = json.dumps(self.to_json(), indent=2) + "\n"
        if path is not None:
            targets = [path]
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
            targets = [RESULTS_DIR / f"bench-{stamp}.json", RESULTS_DIR / "latest.json"]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return targets


def progress(message: str) -> None:
    """A line of progress on stderr: stdout carries only the results."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(stamp))
