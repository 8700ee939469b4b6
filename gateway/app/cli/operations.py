"""Rolling deploys, maintenance windows and incidents, from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gateway.app.cli.client import AdminClient
from gateway.app.cli.common import admin_client
from gateway.app.cli.render import deploy_summary, print_step, table, when
from monitor.versions import validate_version

DEPLOY_ACTIONS = ("status", "abort", "resume", "history")


def _follow(client: AdminClient, deploy_id: str, interval: float = 0.5) -> dict[str, Any]:
    """Print each step as it starts and ends, until the deploy stops being active."""
    shown: dict[tuple[str, int], str] = {}
    while True:
        record: dict[str, Any] = client.get(f"/deploys/{deploy_id}")
        for name, run in record["nodes"].items():
            for i, step in enumerate(run["steps"]):
                state = "ended" if step.get("ended") else "started"
                if shown.get((name, i)) != state:
                    print_step(name, step)
                    shown[(name, i)] = state
        if record["status"] not in ("running", "rolling_back"):
            return record
        time.sleep(interval)


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.target not in DEPLOY_ACTIONS:
        try:
            validate_version(args.target)
        except ValueError as exc:
            print(f"hagw: deploy: {exc}", file=sys.stderr)
            return 2
    client = admin_client(args)
    if args.target == "history":
        rows = [[d["id"], d["version"], d["status"], f"{d['nodes_done']}/{d['nodes']}",
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(d["created"])),
                 d.get("reason") or ""] for d in client.get("/deploys")["deploys"]]
        print(table(rows, ["ID", "VERSION", "STATUS", "NODES", "STARTED", "REASON"]))
        return 0
    if args.target in DEPLOY_ACTIONS:
        deploy_id = args.id or "current"
        if args.target == "status":
            record = client.get(f"/deploys/{deploy_id}")
            print(deploy_summary(record))
            for name, run in record["nodes"].items():
                for step in run["steps"]:
                    print_step(name, step)
            return 0
        if deploy_id == "current":
            deploy_id = client.get("/deploys/current")["id"]
        result = client.post(f"/deploys/{deploy_id}/{args.target}",
                             {"reason": args.reason} if args.reason else {})
        print(f"deploy {result['id']}: {result['status']}")
        if args.no_follow:
            return 0
        record = _follow(client, deploy_id)
        print(deploy_summary(record))
        return 0 if record["status"] in ("succeeded", "rolled_back", "aborted") else 1
    body: dict[str, Any] = {"version": args.target, "force": args.force}
    if args.reason:
        body["reason"] = args.reason
    started = client.post("/deploys", body)
    print(f"deploy {started['id']} to {args.target} started "
          f"({started['nodes']} nodes){' (forced)' if args.force else ''}", flush=True)
    if args.no_follow:
        return 0
    record = _follow(client, started["id"])
    print(deploy_summary(record))
    return 0 if record["status"] == "succeeded" else 1


def cmd_maintenance(args: argparse.Namespace) -> int:
    client = admin_client(args)
    action = args.action
    if action in ("schedule", "start"):
        body: dict[str, Any] = {"reason": args.reason or "planned maintenance",
                                "duration": args.duration,
                                "nodes": [n for n in (args.nodes or "").split(",") if n]}
        if action == "schedule":
            if not args.start:
                print("hagw: maintenance schedule needs --start (e.g. 2026-12-01T02:00Z)",
                      file=sys.stderr)
                return 2
            body["start"] = args.start
        window = client.post("/maintenance", body)
        print(f"{window['id']}: {window['status']} {window['start_iso']} to {window['end_iso']} "
              f"({window['scope']}): {window['reason']}")
        return 0
    if action == "cancel":
        window = client.delete(f"/maintenance/{args.id}")
        print(f"{window['id']}: cancelled")
        return 0
    if action == "end":
        window = client.post(f"/maintenance/{args.id or 'current'}/end")
        print(f"{window['id']}: {window['status']} (replay of queued writes follows "
              "verification)" if not window["nodes"] else f"{window['id']}: {window['status']}")
        return 0
    data = client.get("/maintenance")
    rows = [[w["id"], w["status"], when(w["start"]), when(w["end"]), w["scope"], w["reason"]]
            for w in data["active"] + data["upcoming"] + data["recent"][-5:]]
    print(f"mode: {data['mode']}, queue: {data['queue']['depth']} waiting, "
          f"{data['queue']['done']} replayed, {data['queue']['failed']} failed")
    print(table(rows, ["ID", "STATUS", "START", "END", "SCOPE", "REASON"]))
    return 0


def cmd_incident(args: argparse.Namespace) -> int:
    client = admin_client(args)
    if args.action == "list":
        rows = [[i["id"], i["status"], i["severity"], when(i["opened_at"]),
                 when(i["resolved_at"]) if i["resolved_at"] else "-",
                 str(i["impact"]["requests_failed"]), i["title"]]
                for i in client.get("/incidents")["incidents"]]
        print(table(rows, ["ID", "STATUS", "SEVERITY", "OPENED", "RESOLVED", "FAILED", "TITLE"]))
        return 0
    if not args.id:
        print("hagw: this needs an incident id (see hagw incident list)", file=sys.stderr)
        return 2
    if args.action == "note":
        if not args.text:
            print('hagw: usage: hagw incident note ID "text"', file=sys.stderr)
            return 2
        client.post(f"/incidents/{args.id}/notes", {"text": " ".join(args.text)})
        print(f"{args.id}: note added")
        return 0
    if args.action == "report":
        print(client.get(f"/incidents/{args.id}/report"), end="")
        return 0
    incident = client.get(f"/incidents/{args.id}")
    print(f"{incident['id']} {incident['status'].upper()} ({incident['severity']}): "
          f"{incident['title']}")
    for entry in incident["timeline"]:
        node = f" {entry['node']}:" if entry.get("node") else ""
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(entry['at']))}{node} "
              f"{entry['message']}")
    return 0
