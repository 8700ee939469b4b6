"""The commands that run things (the gateway, the demo, a demo node, a config check) and
that read or change a running gateway's nodes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from gateway.app.cli import progress
from gateway.app.cli.client import AdminClient, AdminError
from gateway.app.cli.common import admin_client, config_path, output, print_json
from gateway.app.cli.render import NODE_HEADERS, NODE_WIDE_HEADERS, Style, node_rows, table
from gateway.app.demo.fleet import run_demo
from gateway.app.logs import setup_logging
from gateway.app.loop import use_uvloop
from gateway.app.runtime import Gateway
from gateway.app.supervisor import run_supervisor
from gateway.clock import strftime_utc
from gateway.config import ConfigError, GatewayConfig, check_config, load_config
from gateway.config.types import parse_workers, worker_count
from gateway.tls import TlsError, check_files, client_context


def cmd_run(args: argparse.Namespace) -> int:
    path = config_path(args)
    config = load_config(path)
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    setup_logging(config.log_level, config.log_format)
    use_uvloop()
    if worker_count(config.workers) > 0:
        run_supervisor(config, path)
        return 0

    async def main() -> None:
        gateway = Gateway(config, config_path=path)
        await gateway.start()
        logging.getLogger("hagw").info("serving traffic on %s, admin on %s",
                                       gateway.traffic_url, gateway.admin_url)
        gateway.install_signal_handlers()
        await gateway.wait()

    asyncio.run(main())
    return 0


def workers_arg(text: str) -> int | str:
    try:
        return parse_workers("auto" if text == "auto" else int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("info")
    use_uvloop()
    asyncio.run(run_demo(getattr(args, "config", None)))
    return 0



def cmd_check(args: argparse.Namespace) -> int:
    path = config_path(args)
    result = check_config(path)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.errors:
        for error in result.errors:
            print(f"hagw: invalid config: {error}", file=sys.stderr)
        print(f"{path}: {len(result.errors)} error(s)", file=sys.stderr)
        return 2
    config = result.config
    assert config is not None
    print(f"{path}: ok ({len(config.nodes)} nodes, balancer {config.balancer}, "
          f"listen {config.listen}, admin {config.admin.listen})"
          + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))
    if args.files:
        for line in check_tls_files(config, path):
            print(line)
    return 0


def check_tls_files(config: GatewayConfig, path: str) -> list[str]:
    """Read every certificate, key and CA file the config names, as the gateway would at
    start-up; a line per certificate. A bad file is a ConfigError."""
    lines = []
    for key, tls in (("tls", config.tls), ("admin.tls", config.admin.tls)):
        if tls is None:
            continue
        try:
            certificates = check_files(tls)
        except TlsError as exc:
            raise ConfigError(str(exc), file=path, path=key) from None
        for cert in certificates:
            lines.append(f"{key}: {cert.path}: {', '.join(cert.names) or 'no DNS name'}, "
                         f"valid until {strftime_utc('%Y-%m-%d %H:%M UTC', cert.not_after)}")
    upstream = config.upstream_tls
    if any(node.url.tls for node in config.nodes) or upstream.ca or upstream.cert:
        try:
            client_context(upstream)
        except TlsError as exc:
            raise ConfigError(str(exc), file=path, path="upstream_tls") from None
        lines.append(f"upstream_tls: ok (CA {upstream.ca or 'the system CAs'}"
                     + (f", client certificate {upstream.cert})" if upstream.cert else ")"))
    return lines


def cmd_nodes(args: argparse.Namespace) -> int:
    client = admin_client(args)
    style = Style()
    mode = output(args)

    def render() -> str:
        data = client.get("/nodes")
        if mode == "json":
            return json.dumps(data, indent=2, sort_keys=True, default=str)
        cluster = data["cluster"]
        head = (f"{cluster['serving']}/{cluster['nodes']} nodes serving, "
                f"min_healthy={cluster['min_healthy']}"
                + (style.paint("  PANIC MODE", "31;1") if cluster["panic"] else ""))
        wide = mode == "wide" or args.watch
        headers = NODE_WIDE_HEADERS if wide else NODE_HEADERS
        return head + "\n" + table(node_rows(data["nodes"], wide=wide), headers, style,
                                   colour_col=1)

    if not args.watch:
        print(render())
        return 0
    return _watch(render, args.interval, client)


def _watch(render: Callable[[], str], interval: float, client: AdminClient) -> int:
    """Redraw in place until Ctrl-C. A gateway that goes away (a restart) is waited for
    and the view carries on when it is back."""
    try:
        while True:
            try:
                text = render()
            except AdminError as exc:
                if exc.status is not None:
                    raise
                text = f"waiting for the gateway at {client.base} (restarting?)"
            if sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")
            sys.stdout.write(time.strftime("%H:%M:%S  ") + "(Ctrl-C to stop)\n" + text + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_drain(args: argparse.Namespace) -> int:
    client = admin_client(args)
    body = {"reason": args.reason} if args.reason else {}
    node = client.post(f"/nodes/{args.node}/drain", body)
    print(f"{node['name']}: {node['state']} ({node['reason']}), {node['in_flight']} in flight",
          flush=True)
    if args.wait:
        try:
            node = progress.wait_drain(client, args.node, Console(highlight=False),
                                       args.timeout)
        except TimeoutError:
            node = client.get(f"/nodes/{args.node}")
        if node["in_flight"] > 0:
            print(f"{node['name']}: still {node['in_flight']} in flight after {args.timeout:g}s",
                  file=sys.stderr)
            return 1
        print(f"{node['name']}: drained, nothing in flight")
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    client = admin_client(args)
    body: dict[str, Any] = {"force": True} if args.force else {}
    node = client.post(f"/nodes/{args.node}/undrain", body)
    print(f"{node['name']}: {node['state']} ({node['reason']})")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    client = admin_client(args)
    result = client.post("/reload")
    changed = result.get("changed") or []
    print(f"reloaded: {', '.join(changed) if changed else 'nothing'} changed; "
          f"nodes {', '.join(result['nodes'])}")
    if result.get("restart_needed"):
        print(f"restart needed for: {', '.join(result['restart_needed'])}", file=sys.stderr)
    return 0


def cmd_processes(args: argparse.Namespace) -> int:
    data = admin_client(args).get("/processes")
    if output(args) == "json":
        print_json(data)
        return 0
    sup = data["supervisor"]
    print(f"{data['model']} pid {sup['pid']}, up {_age(time.time() - sup['started'])}"
          + (f", snapshot {data['snapshot']}" if data.get("snapshot") is not None else ""))
    rows = [[w["id"], str(w["pid"]), "serving" if w["serving"] else
             ("stopping" if w["stopping"] else "starting"), str(w["snapshot"]),
             str(w["in_flight"]), _age(time.time() - w["started"])] for w in data["workers"]]
    if rows:
        print(table(rows, ["WORKER", "PID", "STATE", "SNAPSHOT", "IN-FLIGHT", "UP"], Style()))
    return 0


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Ask the supervisor to start the installed hagw, then wait until that one answers on
    the admin socket (it has taken the sockets over and its workers serve)."""
    client = admin_client(args)
    result = client.post("/upgrade")
    pid = int(result["pid"])
    print(f"started pid {pid}; waiting for it to take over")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            now = client.get("/processes")["supervisor"]["pid"]
        except AdminError:
            continue  # the moment of the handover
        if now == pid:
            print(f"upgraded: pid {pid} serves; the old supervisor drains and exits")
            return 0
    print(f"hagw: pid {pid} did not take over within {args.timeout:g}s (see `hagw events`)",
          file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    client = admin_client(args)
    style = Style()
    data = client.get("/status.json")
    if output(args) == "json":
        print_json(data)
        return 0
    wide = output(args) == "wide"
    colour = {"operational": "32", "degraded": "33", "partial_outage": "31",
              "major_outage": "31;1", "maintenance": "34",
              "monitoring": "36"}.get(data["state"], "0")
    slo = data["slo"]
    print(style.paint(data["state_text"], colour + ";1"))
    target = slo["target"]
    avail = "  ".join(f"{w} {'no data' if v is None else f'{v * 100:.3f}%'}"
                      for w, v in slo["availability"].items())
    print(f"availability  {avail}  (target {target * 100:.2f}%)")
    budget = slo["error_budget_remaining"]
    print(f"error budget  {budget * 100:.1f}% left   burn rate 1h "
          f"{slo['burn_rate']['1h']:.2f}x")
    peers = data.get("peers")
    if peers:
        link = ("connected" if peers["connected"]
                else style.paint(f"NOT CONNECTED ({peers['reason']})", "31"))
        leader = (f"leader {peers['leader']} (epoch {peers['epoch']})" if peers["leader"]
                  else "no leader")
        role = "this instance leads" if peers["leading"] else "follower"
        print(f"peers         {peers['name']}: {role}; {leader}; Redis {peers['redis']} "
              f"{link}")
    cap = data["capacity"]
    print(f"nodes         {cap['serving']}/{cap['nodes']} serving (min_healthy "
          f"{cap['min_healthy']})")
    for component in data.get("components") or []:
        shade = {"operational": "32", "degraded": "33", "maintenance": "34"}.get(
            component["state"], "31")
        print(f"component     {component['name']}: "
              f"{style.paint(component['state_text'], shade)} "
              f"({component['serving']}/{component['nodes']} serving)")
    print(table(node_rows(data["nodes"], wide=wide),
                NODE_WIDE_HEADERS if wide else NODE_HEADERS, style, colour_col=1))
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
    client = admin_client(args)
    mode = output(args)
    query = f"limit={args.limit}" + (f"&node={args.node}" if args.node else "") + \
        (f"&kind={args.kind}" if args.kind else "")
    events = client.get(f"/events?{query}")["events"]
    if mode == "json" and not args.follow:
        print_json(events)
        return 0
    last = _print_events(events, mode)
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(args.interval)
            try:
                since = f"&since={last}" if last is not None else ""
                events = client.get(f"/events?{query}{since}")["events"]
            except AdminError as exc:
                if exc.status is not None:
                    raise
                continue  # the gateway is restarting: carry on when it is back
            last = _print_events(events, mode, last) if events else last
    except KeyboardInterrupt:
        return 0


def _print_events(events: list[dict[str, Any]], mode: str,
                  after: int | None = None) -> int | None:
    """Print events (newer than ``after``), oldest first; the last id printed."""
    last = after
    for event in events:
        if after is not None and event.get("id", 0) <= after:
            continue
        if mode == "json":  # --follow -o json: one JSON object a line (JSON Lines)
            print(json.dumps(event, sort_keys=True, default=str), flush=True)
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
            node = f" {event['node']}" if event.get("node") else ""
            level = f" {event['level']}" if mode == "wide" and event.get("level") else ""
            print(f"{stamp}{level}  {event['kind']}{node}: {event['message']}", flush=True)
        last = event.get("id", last)
    return last
