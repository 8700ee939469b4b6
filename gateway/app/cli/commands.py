"""The commands that run things (the gateway, the demo, a demo node, a config check) and
that read or change a running gateway's nodes."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.app.cli.client import AdminError
from gateway.app.cli.common import admin_client, config_path
from gateway.app.cli.render import Style, node_rows, table
from gateway.app.demo.backend import serve_backend
from gateway.app.demo.fleet import run_demo
from gateway.app.runtime import Gateway
from gateway.app.supervisor import run_supervisor
from gateway.app.worker import run_worker
from gateway.clock import strftime_utc
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.types import parse_workers, worker_count
from gateway.tls import TlsError, check_files, client_context


def cmd_run(args: argparse.Namespace) -> int:
    path = config_path(args)
    config = load_config(path)
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    setup_logging(config.log_level)
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


def cmd_worker(args: argparse.Namespace) -> int:
    """A data-plane worker (the supervisor starts these; not for operators)."""
    config = load_config(config_path(args))
    setup_logging(config.log_level)
    use_uvloop()
    run_worker(config, args.id, args.listen_fd, args.channel_fd)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("info")
    use_uvloop()
    asyncio.run(run_demo(args.config))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    if args.pidfile:
        with open(args.pidfile, "w") as out:
            out.write(str(os.getpid()))
    asyncio.run(serve_backend(args.name, args.host, args.port, args.version, args.health))
    return 0



def cmd_check(args: argparse.Namespace) -> int:
    path = config_path(args)
    config = load_config(path)
    print(f"{path}: ok ({len(config.nodes)} nodes, balancer {config.balancer}, "
          f"listen {config.listen}, admin {config.admin.listen})")
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

    def render() -> str:
        data = client.get("/nodes")
        if args.json:
            return json.dumps(data, indent=2)
        cluster = data["cluster"]
        head = (f"{cluster['serving']}/{cluster['nodes']} nodes serving, "
                f"min_healthy={cluster['min_healthy']}"
                + (style.paint("  PANIC MODE", "31;1") if cluster["panic"] else ""))
        return head + "\n" + table(node_rows(data["nodes"]),
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
    client = admin_client(args)
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
    client = admin_client(args)
    body: dict[str, Any] = {"force": True} if args.force else {}
    node = client.post(f"/nodes/{args.node}/undrain", body)
    print(f"{node['name']}: {node['state']} ({node['reason']})")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    client = admin_client(args)
    result = client.post("/reload")
    print(f"reloaded: nodes {', '.join(result['nodes'])}")
    return 0


def cmd_processes(args: argparse.Namespace) -> int:
    data = admin_client(args).get("/processes")
    if args.json:
        print(json.dumps(data, indent=2))
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
    print(table(node_rows(data["nodes"]), ["NODE", "STATE", "WEIGHT", "IN-FLIGHT", "VERSION",
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
    client = admin_client(args)
    query = f"/events?limit={args.limit}" + (f"&node={args.node}" if args.node else "")
    for event in client.get(query)["events"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
        node = f" {event['node']}" if event.get("node") else ""
        print(f"{stamp}  {event['kind']}{node}: {event['message']}")
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def use_uvloop() -> None:
    """uvloop when installed (the ``speed`` extra); the gateway is correct without it."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
