"""``python -m chaos``: run the fault-injection scenarios (or the soak), print the table,
write the JSON, exit 1 if any check failed.

Examples:
  python -m chaos                                   # every scenario, ~8 s phases (make chaos)
  python -m chaos --quick --only node-kill          # seconds: does it work? (CI)
  python -m chaos --only node-hang,deploy --rate 800
  python -m chaos --soak --minutes 10               # load, periodic faults, RSS must stay flat
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from chaos.gateway import PER_TRY_TIMEOUT, describe, operator_config
from chaos.report import ScenarioResult, environment, render, render_details, write_json
from chaos.scenarios import NAMES, SCENARIOS, run_scenario
from chaos.settings import RESULTS, WORK, Settings


def _names(text: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in items if s not in NAMES]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; expected some of: "
            f"{', '.join(NAMES)}")
    return items


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a value above zero, found {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chaos", description="hagw fault-injection suite: real node and "
        "gateway processes under constant mixed load, one fault at a time.",
        epilog="Scenarios: " + ", ".join(NAMES),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=_names, default=(), metavar="NAME[,NAME]",
                        help="run only these scenarios")
    parser.add_argument("--rate", type=_positive(float), default=400.0,
                        help="requests per second, GET and POST together (default 400)")
    parser.add_argument("--duration", type=_positive(float), default=None,
                        help="seconds per phase: the fault, and the recovery (default 8, "
                             "or 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="short phases, for CI")
    parser.add_argument("--soak", action="store_true",
                        help="soak: load for --minutes with periodic single-node faults; "
                             "the gateway's RSS must stay flat")
    parser.add_argument("--minutes", type=_positive(float), default=10.0,
                        help="soak length (default 10)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="write the JSON here (default chaos/results/<time>.json and "
                             "latest.json)")
    parser.add_argument("--work-dir", type=Path, default=WORK, metavar="DIR",
                        help="logs, state and pidfiles of each scenario (default var/chaos)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 8.0)
    return Settings(rate=args.rate, duration=duration, quick=args.quick, only=args.only,
                    json_path=args.json, soak_minutes=args.minutes,
                    work_dir=args.work_dir.resolve())


def config_lines() -> list[str]:
    from chaos.fleet import Node

    sample = operator_config([Node("node-1", "127.0.0.1", 0)], traffic_port=0, admin_port=0,
                             state_dir=Path("state"), deploy_command=[])
    return describe(sample)


async def run_suite(settings: Settings) -> int:
    root = settings.work_dir / time.strftime("run-%Y%m%d-%H%M%S")
    chosen = [s for s in SCENARIOS if not settings.only or s.name in settings.only]
    print(f"hagw chaos: {len(chosen)} scenario(s) at {settings.rate:g} req/s (30% POST), "
          f"phases: warm-up {settings.warmup:g}s, fault {settings.duration:g}s, recovery "
          f"{settings.recovery:g}s; work dir {root}", flush=True)
    print("gateway config (each scenario: 3 demo nodes, a fresh state dir):")
    for line in config_lines():
        print(f"  {line}")
    print(flush=True)
    results: list[ScenarioResult] = []
    async with aiohttp.ClientSession() as http:
        for scenario in chosen:
            print(f"-- {scenario.name}: {scenario.title}", flush=True)
            result = await run_scenario(scenario, settings, http, root)
            results.append(result)
            print(render_details(result) + "\n", flush=True)
    print(render(results))
    checks = [(r.name, c) for r in results for c in r.checks]
    failed = [r for r in results if r.status in ("failed", "error")]
    print(f"\n{sum(c.passed for _, c in checks)}/{len(checks)} checks passed; "
          + (f"FAIL: {', '.join(r.name for r in failed)}" if failed else "PASS"))
    payload: dict[str, Any] = {
        "suite": "hagw chaos", "environment": environment(),
        "settings": {"rate": settings.rate, "duration": settings.duration,
                     "warmup": settings.warmup, "recovery": settings.recovery,
                     "quick": settings.quick, "post_share": 0.3,
                     "per_try_timeout": PER_TRY_TIMEOUT},
        "gateway_config": config_lines(),
        "passed": not failed,
        "scenarios": [r.to_json() for r in results],
    }
    for path in write_json(payload, RESULTS, settings.json_path, "chaos"):
        print(f"wrote {path}")
    return 1 if failed else 0


async def _main(settings: Settings, soak: bool) -> int:
    # SIGTERM ends the run like Ctrl-C: the current scenario stops and cleans up.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if soak:
        from chaos.soak import run_soak

        return await run_soak(settings)
    return await run_suite(settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., int] = asyncio.run
    else:
        runner = uvloop.run
    try:
        return int(runner(_main(settings, args.soak)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process this run started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
