"""The deploy action the chaos gateways run: save the drained node's write log, then
``hagw demo-redeploy``.

The gateway drains a node (nothing in flight) before it runs the action, so the
log saved here is that incarnation's complete log; the demo node keeps it in
memory only and demo-redeploy is about to stop it. Then this process becomes
demo-redeploy (exec), so the deploy record shows demo-redeploy's own output.

    python -m chaos.deploy_hook --ledger DIR --run-dir RUN {node} {url} {version}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path


def snapshot(ledger: Path, node: str, url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/_stats", timeout=5) as resp:
            pid = int(json.load(resp)["pid"])
        with urllib.request.urlopen(f"{url}/_writes", timeout=10) as resp:
            writes = json.load(resp)
    except (OSError, ValueError, KeyError) as exc:
        # The node may already be gone (the suite killed it); nothing to save then.
        return f"chaos hook: no write log from {node} ({exc})"
    ledger.mkdir(parents=True, exist_ok=True)
    target = ledger / f"{node}-{pid}.json"
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps({"node": node, "pid": pid, "writes": writes}))
    partial.replace(target)
    return f"chaos hook: saved {len(writes)} writes of {node} (pid {pid})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chaos.deploy_hook")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("node")
    parser.add_argument("url")
    parser.add_argument("version")
    args = parser.parse_args(argv)
    print(snapshot(args.ledger, args.node, args.url), flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "gateway", "demo-redeploy", "--run-dir",
                              args.run_dir, args.node, args.url, args.version])


if __name__ == "__main__":
    main()
