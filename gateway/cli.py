"""The ``hagw`` command line: run the gateway, check configs, and operate a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway import __version__
from gateway.admin_client import AdminClient, AdminError
from gateway.config import ConfigError, GatewayConfig, load_config

DEFAULT_CONFIG = "configs/gateway.yaml"


class Style:
    """ANSI colour only when stdout is a terminal (and NO_COLOR is unset)."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.enabled = enabled

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def state(self, state: str) -> str:
        colour = {"HEALTHY": "32", "WARNING": "33", "UNHEALTHY": "31", "EJECTED": "31",
                  "DRAINING": "36", "MAINTENANCE": "35", "STARTING": "34"}.get(state, "0")
        return self.paint(state, colour)


def table(rows: list[list[str]], headers: list[str], style: Style | None = None,
          colour_col: int | None = None) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            text = cell.ljust(width)
            if style is not None and i == colour_col:
                text = style.state(cell) + " " * (width - len(cell))
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- config and client ---------------------------------------------------------------------

def _config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("HAGW_CONFIG") or DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(_config_path(args))


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.from_config(_load(args), url=args.admin, token=args.token)


# -- commands ------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from gateway.runtime import Gateway

    path = _config_path(args)
    config = load_config(path)
    _setup_logging(config.log_level)
    _use_uvloop()

    async def main() -> None:
        gateway = Gateway(config, config_path=path)
        await gateway.start()
        logging.getLogger("hagw").info("serving traffic on %s, admin on %s",
                                       gateway.traffic_url, gateway.admin_url)
        gateway.install_signal_handlers()
        await gateway.wait()

    asyncio.run(main())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.fleet import run_demo

    _setup_logging("info")
    _use_uvloop()
    asyncio.run(run_demo(args.config))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from gateway.demo.backend import serve_backend

    if args.pidfile:
        with open(args.pidfile, "w") as out:
            out.write(str(os.getpid()))
    asyncio.run(serve_backend(args.name, args.host, args.port, args.version, args.health))
    return 0



def cmd_check(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = load_config(path)
    print(f"{path}: ok ({len(config.nodes)} nodes, balancer {config.balancer}, "
          f"listen {config.listen}, admin {config.admin.listen})")
    return 0


def _node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for n in nodes:
        weight = f"{n['weight']}"
        if n["serving"] and abs(n["effective_weight"] - n["weight"]) > 1e-3:
            weight += f" ({n['effective_weight']:.2f})"
        rows.append([n["name"], n["state"], weight, str(n["in_flight"]),
                     n.get("version") or "-", n.get("url", ""), n.get("reason", "")])
    return rows


def cmd_nodes(args: argparse.Namespace) -> int:
    client = _client(args)
    style = Style()

    def render() -> str:
        data = client.get("/nodes")
        if args.json:
            return json.dumps(data, indent=2)
        cluster = data["cluster"]
        head = (f"{cluster['serving']}/{cluster['nodes']} nodes serving, "
                f"min_healthy={cluster['min_healthy']}"
                + (style.paint("  PANIC MODE", "31;1") if cluster["panic"] else ""))
        return head + "\n" + table(_node_rows(data["nodes"]),
                                   ["NODE", "STATE", "WEIGHT", "IN-FLIGHT", "VERSION", "URL",
                                    "REASON"], style, colour_col=1)

    if not args.watch:
        print(render())
        return 0
    return _watch(render, args.interval)


def _watch(render: Callable[[], str], interval: float) -> int:
    """Redraw in place until Ctrl-C."""
    try:
        while True:
            text = render()
            if sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            sys.stdout.write(time.strftime("%H:%M:%S  ") + "(Ctrl-C to stop)\n" + text + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_drain(args: argparse.Namespace) -> int:
    client = _client(args)
    body = {"reason": args.reason} if args.reason else {}
    node = client.post(f"/nodes/{args.node}/drain", body)
    print(f"{node['name']}: {node['state']} ({node['reason']}), {node['in_flight']} in flight")
    if args.wait:
        deadline = time.monotonic() + args.timeout
        while node["in_flight"] > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            node = client.get(f"/nodes/{args.node}")
        if node["in_flight"] > 0:
            print(f"{node['name']}: still {node['in_flight']} in flight after {args.timeout:g}s",
                  file=sys.stderr)
            return 1
        print(f"{node['name']}: drained, nothing in flight")
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    client = _client(args)
    body: dict[str, Any] = {"force": True} if args.force else {}
    node = client.post(f"/nodes/{args.node}/undrain", body)
    print(f"{node['name']}: {node['state']} ({node['reason']})")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.post("/reload")
    print(f"reloaded: nodes {', '.join(result['nodes'])}")
    return 0


DEPLOY_ACTIONS = ("status", "abort", "resume", "history")


def _print_step(name: str, step: dict[str, Any]) -> None:
    took = f"{step['ended'] - step['started']:.1f}s" if step.get("ended") else "..."
    mark = {True: "ok", False: "FAILED", None: "running"}[step.get("ok")]
    what = f"{'rollback ' if step.get('rollback') else ''}{step['kind']}"
    target = f" -> {step['version']}" if step.get("version") else ""
    detail = f"  {step['detail']}" if step.get("detail") else ""
    print(f"  {name:<12} {what:<18}{target:<10} {mark:<8} {took:>7}{detail}", flush=True)


def _follow(client: AdminClient, deploy_id: str, interval: float = 0.5) -> dict[str, Any]:
    """Print each step as it starts and ends, until the deploy stops being active."""
    shown: dict[tuple[str, int], str] = {}
    while True:
        record: dict[str, Any] = client.get(f"/deploys/{deploy_id}")
        for name, run in record["nodes"].items():
            for i, step in enumerate(run["steps"]):
                state = "ended" if step.get("ended") else "started"
                if shown.get((name, i)) != state:
                    _print_step(name, step)
                    shown[(name, i)] = state
        if record["status"] not in ("running", "rolling_back"):
            return record
        time.sleep(interval)


def _deploy_summary(record: dict[str, Any]) -> str:
    out = [f"deploy {record['id']} to {record['version']}: {record['status'].upper()}"]
    if record.get("reason"):
        out.append(f"  reason: {record['reason']}")
    if record.get("forced"):
        out.append(f"  forced: {record.get('force_reason') or 'yes'}")
    return "\n".join(out)


def cmd_deploy(args: argparse.Namespace) -> int:
    client = _client(args)
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
            print(_deploy_summary(record))
            for name, run in record["nodes"].items():
                for step in run["steps"]:
                    _print_step(name, step)
            return 0
        if deploy_id == "current":
            deploy_id = client.get("/deploys/current")["id"]
        result = client.post(f"/deploys/{deploy_id}/{args.target}",
                             {"reason": args.reason} if args.reason else {})
        print(f"deploy {result['id']}: {result['status']}")
        if args.no_follow:
            return 0
        record = _follow(client, deploy_id)
        print(_deploy_summary(record))
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
    print(_deploy_summary(record))
    return 0 if record["status"] == "succeeded" else 1


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def cmd_maintenance(args: argparse.Namespace) -> int:
    client = _client(args)
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
    rows = [[w["id"], w["status"], _when(w["start"]), _when(w["end"]), w["scope"], w["reason"]]
            for w in data["active"] + data["upcoming"] + data["recent"][-5:]]
    print(f"mode: {data['mode']}, queue: {data['queue']['depth']} waiting, "
          f"{data['queue']['done']} replayed, {data['queue']['failed']} failed")
    print(table(rows, ["ID", "STATUS", "START", "END", "SCOPE", "REASON"]))
    return 0


def cmd_incident(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "list":
        rows = [[i["id"], i["status"], i["severity"], _when(i["opened_at"]),
                 _when(i["resolved_at"]) if i["resolved_at"] else "-",
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


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    style = Style()
    data = client.get("/status.json")
    colour = {"operational": "32", "degraded": "33", "partial_outage": "31",
              "major_outage": "31;1", "maintenance": "34"}[data["state"]]
    slo = data["slo"]
    print(style.paint(data["state_text"], colour + ";1"))
    target = slo["target"]
    avail = "  ".join(f"{w} {v * 100:.3f}%" for w, v in slo["availability"].items())
    print(f"availability  {avail}  (target {target * 100:.2f}%)")
    budget = slo["error_budget_remaining"]
    print(f"error budget  {budget * 100:.1f}% left   burn rate 1h "
          f"{slo['burn_rate']['1h']:.2f}x")
    cap = data["capacity"]
    print(f"nodes         {cap['serving']}/{cap['nodes']} serving (min_healthy "
          f"{cap['min_healthy']})")
    print(table(_node_rows(data["nodes"]), ["NODE", "STATE", "WEIGHT", "IN-FLIGHT", "VERSION",
                                            "URL", "REASON"], style, colour_col=1))
    deploy = data.get("deploy")
    if deploy and deploy["status"] in ("running", "rolling_back", "interrupted"):
        print(f"deploy        {deploy['id']} to {deploy['version']}: {deploy['status']} "
              f"({deploy['nodes_done']}/{deploy['nodes']} nodes)")
    maintenance = data["maintenance"]
    for window in maintenance["active"]:
        print(f"maintenance   ACTIVE until {window['end_iso']}: {window['reason']} "
              f"({window['scope']})")
    for window in maintenance["upcoming"][:3]:
        print(f"maintenance   {window['start_iso']} to {window['end_iso']}: "
              f"{window['reason']} ({window['scope']})")
    for incident in data["incidents"]["open"]:
        print(style.paint(f"incident      {incident['id']}: {incident['title']}", "31"))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    client = _client(args)
    query = f"/events?limit={args.limit}" + (f"&node={args.node}" if args.node else "")
    for event in client.get(query)["events"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
        node = f" {event['node']}" if event.get("node") else ""
        print(f"{stamp}  {event['kind']}{node}: {event['message']}")
    return 0


# -- plumbing ------------------------------------------------------------------------------

def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _use_uvloop() -> None:
    """uvloop when installed (the ``speed`` extra); the gateway is correct without it."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hagw", description="hagw: a high-availability "
                                     "HTTP gateway")
    parser.add_argument("--version", action="version", version=f"hagw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str,
                admin: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("-c", "--config", help=f"config file (default: $HAGW_CONFIG or "
                                              f"{DEFAULT_CONFIG})")
        if admin:
            p.add_argument("--admin", help="admin API URL (default: from the config)")
            p.add_argument("--token", help="admin token (default: from the config)")
        p.set_defaults(fn=fn)
        return p

    command("run", cmd_run, "run the gateway")
    command("demo", cmd_demo, "run demo nodes and the gateway in front of them")
    command("check", cmd_check, "validate a config file")
    p = command("nodes", cmd_nodes, "show the nodes of a running gateway", admin=True)
    p.add_argument("--watch", action="store_true", help="refresh in place")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p = command("drain", cmd_drain, "take a node out of rotation; in-flight requests finish",
                admin=True)
    p.add_argument("node")
    p.add_argument("--reason")
    p.add_argument("--wait", action="store_true", help="wait until nothing is in flight")
    p.add_argument("--timeout", type=float, default=60.0)
    p = command("undrain", cmd_undrain, "put a drained node back in rotation", admin=True)
    p.add_argument("node")
    p.add_argument("--force", action="store_true", help="also release a deploy's hold")
    command("reload", cmd_reload, "reload the config of a running gateway", admin=True)
    p = command("deploy", cmd_deploy, "rolling deploy: 'hagw deploy VERSION', or status, abort, "
                "resume, history", admin=True)
    p.add_argument("target", metavar="VERSION|status|abort|resume|history")
    p.add_argument("id", nargs="?", help="deploy id (default: the current one)")
    p.add_argument("--force", action="store_true",
                   help="start even with the error budget below deploy.min_error_budget")
    p.add_argument("--reason", help="why (recorded with --force or abort)")
    p.add_argument("--no-follow", action="store_true", help="do not wait and show progress")
    p = command("maintenance", cmd_maintenance, "maintenance windows: schedule, list, cancel, "
                "start (now), end", admin=True)
    p.add_argument("action", choices=["schedule", "list", "cancel", "start", "end"])
    p.add_argument("id", nargs="?", help="window id (cancel, end)")
    p.add_argument("--start", help='when, e.g. "2026-12-01T02:00Z" (schedule)')
    p.add_argument("--duration", default="1h", help="e.g. 45m (default 1h)")
    p.add_argument("--reason")
    p.add_argument("--nodes", help="comma-separated node names; default: the whole fleet")
    p = command("incident", cmd_incident, "incidents: list, show ID, note ID TEXT, report ID",
                admin=True)
    p.add_argument("action", choices=["list", "show", "note", "report"])
    p.add_argument("id", nargs="?")
    p.add_argument("text", nargs="*")
    command("status", cmd_status, "overall state, availability, nodes, deploy and maintenance",
            admin=True)
    p = command("events", cmd_events, "show recent events", admin=True)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--node")
    p = sub.add_parser("node", help="run one demo backend node")
    p.add_argument("--name", default="node-1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9601)
    p.add_argument("--version", default="v1")
    p.add_argument("--health", choices=["ok", "warn", "fail"], default="ok")
    p.add_argument("--pidfile")
    p.set_defaults(fn=cmd_node)
    # Listed for --help; main() hands its arguments to gateway.demo.redeploy untouched.
    sub.add_parser("demo-redeploy", help="the demo fleet's deploy action (stop a demo node, "
                   "start a new version on its port)")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo-redeploy"]:
        from gateway.demo.redeploy import main as redeploy

        sys.exit(redeploy(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args)
    except ConfigError as exc:
        print(f"hagw: invalid config: {exc}", file=sys.stderr)
        code = 2
    except AdminError as exc:
        print(f"hagw: {exc}", file=sys.stderr)
        code = 1
    except OSError as exc:  # e.g. a listen address already in use
        print(f"hagw: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
