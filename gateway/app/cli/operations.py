"""Rolling deploys and maintenance windows, from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.console import Console

from gateway.app.cli import deploy_view, progress
from gateway.app.cli.client import AdminClient
from gateway.app.cli.common import admin_client, output, print_json, usage_error
from gateway.app.cli.render import table, when
from gateway.config.schema import parse_start
from gateway.units import parse_duration
from monitor.versions import validate_version

DEPLOY_ACTIONS = ("status", "abort", "resume", "history")


def console() -> Console:
    """stdout as rich sees it: a terminal gets colour and live views (NO_COLOR and
    FORCE_COLOR are honoured), a pipe gets plain lines."""
    return Console(highlight=False)


def _follow(client: AdminClient, deploy_id: str, out: Console) -> dict[str, Any] | None:
    """The live view until the deploy ends; None when the operator detached (Ctrl-C)."""
    try:
        record = deploy_view.follow(client, deploy_id, out)
    except KeyboardInterrupt:
        out.print()
        out.print(deploy_view.DETACHED, style="yellow", highlight=False)
        return None
    out.print(deploy_view.summary(record, time.time()), highlight=False, markup=False)
    return record


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.target not in DEPLOY_ACTIONS:
        try:
            validate_version(args.target)
        except ValueError as exc:
            return usage_error(f"deploy: {exc}")
    client = admin_client(args)
    out = console()
    mode = output(args)
    if args.target == "history":
        deploys = client.get("/deploys")["deploys"]
        if mode == "json":
            print_json(deploys)
            return 0
        headers = ["ID", "VERSION", "STATUS", "NODES", "STARTED", "REASON"]
        rows = [[d["id"], d["version"], d["status"], f"{d['nodes_done']}/{d['nodes']}",
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"])),
                 d.get("reason") or ""] for d in deploys]
        if mode == "wide":
            headers.insert(5, "TOOK")
            headers.insert(6, "FORCED")
            for row, d in zip(rows, deploys, strict=True):
                took = (d["finished"] - d["created"]) if d.get("finished") else None
                row.insert(5, deploy_view.clock(took))
                row.insert(6, "yes" if d.get("forced") else "")
        print(table(rows, headers))
        return 0
    if args.target in DEPLOY_ACTIONS:
        deploy_id = args.id or "current"
        if args.target == "status":
            record = client.get(f"/deploys/{deploy_id}")
            if mode == "json":
                print_json(record)
                return 0
            if args.watch and record["status"] in deploy_view.ACTIVE:
                final = _follow(client, record["id"], out)
                if final is None:
                    return 130
                return 0 if final["status"] == "succeeded" else 1
            out.print(deploy_view.view(record, time.time()))
            if mode == "wide":
                for name, run in record["nodes"].items():
                    for step in run["steps"]:
                        if step["ok"] is not None:
                            out.print(deploy_view.step_line(name, step, 0, 0)[6:],
                                      markup=False, highlight=False, soft_wrap=True)
            return 0
        if deploy_id == "current":
            deploy_id = client.get("/deploys/current")["id"]
        result = client.post(f"/deploys/{deploy_id}/{args.target}",
                             {"reason": args.reason} if args.reason else {})
        print(f"deploy {result['id']}: {result['status']}", flush=True)
        if args.no_follow:
            return 0
        final = _follow(client, deploy_id, out)
        if final is None:
            return 130
        return 0 if final["status"] in ("succeeded", "rolled_back", "aborted") else 1
    body: dict[str, Any] = {"version": args.target, "force": args.force}
    if args.reason:
        body["reason"] = args.reason
    started = client.post("/deploys", body)
    if started.get("status") == "unchanged":
        print(f"deploy {args.target}: {started['message']}")
        return 0
    print(f"deploy {started['id']} to {args.target} started "
          f"({started['nodes']} nodes){' (forced)' if args.force else ''}", flush=True)
    if args.no_follow:
        return 0
    final = _follow(client, started["id"], out)
    if final is None:
        return 130
    return 0 if final["status"] == "succeeded" else 1


def _window_body(args: argparse.Namespace) -> dict[str, Any] | str:
    """The POST /maintenance body, checked here so that bad usage exits 2 before the
    gateway is asked; or the reason it is bad."""
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        return f"--duration: {exc}"
    if not duration > 0:
        return "--duration: expected a duration above zero"
    body: dict[str, Any] = {"reason": args.reason or "planned maintenance",
                            "duration": args.duration,
                            "nodes": [n for n in (args.nodes or "").split(",") if n]}
    if args.action == "schedule":
        if not args.start:
            return 'maintenance schedule needs --start (e.g. "2026-12-01T02:00Z" or "+2h")'
        try:
            start = parse_start(args.start, time.time())
        except ValueError as exc:
            return f"--start: {exc}"
        # Sent as an instant, so "+2h" means two hours from when the operator typed it.
        body["start"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    return body


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_maintenance(args: argparse.Namespace) -> int:
    action = args.action
    mode = output(args)
    if action == "cancel" and not args.id:
        return usage_error("maintenance cancel needs a window id (see hagw maintenance list)")
    body = _window_body(args) if action in ("schedule", "start") else {}
    if isinstance(body, str):
        return usage_error(body)
    client = admin_client(args)
    if action in ("schedule", "start"):
        if action == "start" and not body["nodes"] and not args.yes:
            question = ("Take the WHOLE FLEET into maintenance now? Reads get 503 and only "
                        "queue routes are accepted until it ends.")
            if not _confirm(question):
                print("hagw: not started (whole fleet: confirm, or pass --yes)",
                      file=sys.stderr)
                return 1
        window = client.post("/maintenance", body)
        if mode == "json":
            print_json(window)
            return 0
        print(f"{window['id']}: {window['status']} {window['start_iso']} to {window['end_iso']} "
              f"({window['scope']}): {window['reason']}")
        return 0
    if action == "cancel":
        window = client.delete(f"/maintenance/{args.id}")
        print(f"{window['id']}: cancelled")
        return 0
    if action == "end":
        window = client.post(f"/maintenance/{args.id or 'current'}/end")
        whole = not window["nodes"]
        print(f"{window['id']}: {window['status']}"
              + (" (replay of queued writes follows verification)" if whole else ""),
              flush=True)
        if args.wait and whole:
            try:
                queue = progress.wait_replay(client, console(), args.timeout)
            except TimeoutError as exc:
                print(f"hagw: replay not finished after {args.timeout:g}s ({exc})",
                      file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("detached; the replay goes on (hagw maintenance list shows it)")
                return 130
            print(f"replay done: {queue['done']} replayed, {queue['failed']} failed")
            return 1 if queue["failed"] else 0
        return 0
    data = client.get("/maintenance")
    if mode == "json":
        print_json(data)
        return 0
    windows = data["active"] + data["upcoming"] + data["recent"][-5:]
    headers = ["ID", "STATUS", "START", "END", "SCOPE", "REASON"]
    rows = [[w["id"], w["status"], when(w["start"]), when(w["end"]), w["scope"], w["reason"]]
            for w in windows]
    if mode == "wide":
        headers += ["SOURCE", "ANNOUNCED"]
        for row, w in zip(rows, windows, strict=True):
            row += [w.get("source", ""), ",".join(w.get("announced") or []) or "-"]
    queue = data["queue"]
    print(f"mode: {data['mode']}, queue: {queue['depth']} waiting, "
          f"{queue['done']} replayed, {queue['failed']} failed"
          + (f", oldest {queue['oldest_age_seconds']:.0f}s, {queue['replay_rate']:.1f}/s"
             if mode == "wide" and queue.get("oldest_age_seconds") is not None else ""))
    print(table(rows, headers))
    return 0
