"""``python -m bench``: run the benchmark suite, print the table, write the JSON.

Examples:
  python -m bench                              # everything, ~10 s per run (make bench)
  python -m bench --quick                      # seconds, tiny sizes: does it all work?
  python -m bench --only throughput --skip-peers --duration 5
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench.fleet import Fleet
from bench.processes import ProcessGroup
from bench.report import Report, Row, failed, headlines, progress, render
from bench.scenarios import SCENARIO_FUNCTIONS
from bench.settings import NODE_KINDS, PEERS, SCENARIOS, TARGETS, Settings
from bench.tools import Tools
from gateway.units import parse_size

#: File descriptors kept free for the driver's own use beside the idle connections.
FD_MARGIN = 4096


def _csv(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(s.strip() for s in text.split(",") if s.strip())
        unknown = [s for s in items if s not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}, found {text!r}")
        return items

    return parse


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="hagw benchmark suite: hagw against direct "
        "access, a naive aiohttp proxy, nginx and haproxy, as ratios measured in one run.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per load run (default 10, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny durations and sizes: checks that everything works")
    parser.add_argument("--only", type=_csv(SCENARIOS), default=SCENARIOS,
                        metavar="SCENARIO[,..]", help=f"run only these: {', '.join(SCENARIOS)}")
    parser.add_argument("--targets", type=_csv(TARGETS), default=TARGETS,
                        metavar="TARGET[,..]", help=f"measure only these: {', '.join(TARGETS)}")
    parser.add_argument("--skip-peers", action="store_true",
                        help="leave out nginx and haproxy as proxies")
    parser.add_argument("--nodes", choices=NODE_KINDS, default="nginx",
                        help="static nginx nodes (default) or the demo aiohttp nodes")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs per target in the throughput, latency and streaming "
                             "scenarios, interleaved; medians are reported (default 3, "
                             "1 with --quick)")
    parser.add_argument("--connections", type=int, default=50,
                        help="wrk connections in the throughput scenario (default 50)")
    parser.add_argument("--rates", type=_rates, default=None,
                        help="fixed rates of the latency scenario (default 1000,5000)")
    parser.add_argument("--idle-connections", type=int, default=None,
                        help="idle connections in the memory scenario (default 10000)")
    parser.add_argument("--stream-size", type=_size, default=None,
                        help="body size of the streaming scenario (default 1GB, 16MB quick)")
    parser.add_argument("--queued-writes", type=int, default=None,
                        help="writes queued in the maintenance scenario (default 50000, "
                             "2000 with --quick)")
    parser.add_argument("--replay-concurrency", type=int, default=1,
                        help="maintenance.replay_concurrency (default 1: strict order)")
    parser.add_argument("--replay-pipeline", type=int, default=32,
                        help="maintenance.replay_pipeline of the second maintenance run "
                             "(default 32; 1: only the strict run)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="write the JSON here (default bench/results/<time>.json "
                             "and latest.json)")
    return parser


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 1000,5000, found {text!r}"
                                         ) from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive rates, found {text!r}")
    return rates


def settings_from(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    duration = args.duration if args.duration is not None else (1.0 if quick else 10.0)
    targets = tuple(t for t in args.targets if not (args.skip_peers and t in PEERS))
    return Settings(
        duration=max(1.0, duration),
        warmup=0.0 if quick else 2.0,
        rounds=max(1, args.rounds or (1 if quick else 3)),
        quick=quick,
        scenarios=tuple(s for s in SCENARIOS if s in args.only),
        targets=targets,
        nodes=args.nodes,
        connections=args.connections,
        rates=args.rates or (1000, 5000),
        idle_connections=args.idle_connections or (500 if quick else 10_000),
        stream_size=args.stream_size or (16 * 1024**2 if quick else 1024**3),
        json_path=args.json,
        queued_writes=args.queued_writes or (2000 if quick else 50_000),
        replay_concurrency=max(1, args.replay_concurrency),
        replay_pipeline=min(256, max(1, args.replay_pipeline)),
    )


def raise_fd_limit(wanted: int) -> str:
    """Raise RLIMIT_NOFILE for the driver and (inherited) every server it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return f"RLIMIT_NOFILE {soft}"
    try:
        # Only a privileged process may raise the hard limit; try, then settle for it.
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = "" if soft >= wanted else f" (wanted {wanted}; the hard limit is {hard})"
    return f"RLIMIT_NOFILE {soft}{note}"


def _load_note() -> str:
    """Other work on the machine moves every figure; say how busy it was at the start."""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    busy = " - busy: expect noisy figures, compare ratios" if load > cpus / 2 else ""
    return f"load average {load:.2f} on {cpus} CPUs at the start{busy}"


def _revision() -> str:
    """The code under test: the commit, and whether the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway", "monitor"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "revision unknown (no git)"
    if not commit:
        return "revision unknown (not a git checkout)"
    return f"gateway code at {commit}" + (" plus uncommitted changes" if dirty.strip() else "")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through every ``with``: children stopped, temp dir removed.
    raise SystemExit(128 + signum)


def run(settings: Settings, tools: Tools) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hagw-bench-") as tmp, \
            ProcessGroup(Path(tmp)) as group:
        fleet = Fleet(settings, tools, group)
        for scenario in settings.scenarios:
            try:
                rows += SCENARIO_FUNCTIONS[scenario](fleet, settings)
            except (OSError, LookupError, RuntimeError, ValueError) as exc:
                # One broken scenario must not lose the others' results.
                progress(f"{scenario} failed: {exc.__class__.__name__}: {exc}")
                rows.append(failed("-", scenario, f"{exc.__class__.__name__}: {exc}"))
        progress("stopping servers")
    return rows, fleet.notes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Ctrl-C must stop the run even when started from a shell that ignores SIGINT for
    # background jobs (Python would then never raise KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tools = Tools()
    started = time.time()
    notes = [raise_fd_limit(settings.idle_connections + FD_MARGIN), _load_note(),
             _revision()]
    try:
        rows, fleet_notes = run(settings, tools)
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    notes += fleet_notes
    report = Report({**settings.to_json(), "notes": notes}, dict(tools.paths), rows,
                    headlines(rows, settings.rates), started)
    print(render(report.rows, report.heads))
    for note in notes:
        print(f"note: {note}")
    for path in report.write(settings.json_path):
        print(f"results: {path}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
