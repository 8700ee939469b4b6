"""The ``hagw`` command line: run the gateway, check configs, and operate a running one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__
from gateway.app.cli import commands, incidents, operations
from gateway.app.cli.client import AdminError
from gateway.app.cli.common import DEFAULT_CONFIG, OUTPUTS
from gateway.app.demo import backend, redeploy
from gateway.config import ConfigError


class Parser(argparse.ArgumentParser):
    """Options anywhere: ``hagw maintenance cancel -c FILE ID`` is ``cancel ID -c FILE``.

    argparse matches an optional positional (``nargs="?"``) as soon as the positionals
    before an option are consumed, so a word after ``-c FILE`` was left over; parsing
    intermixed takes the options out first, then the positionals.
    """

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def shared_options() -> Parser:
    """``-c`` on the top level and on every command, before or after the command words."""
    shared = Parser(add_help=False)
    shared.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help=f"config file (default: $HAGW_CONFIG or {DEFAULT_CONFIG})")
    return shared


def build_parser() -> argparse.ArgumentParser:
    shared = shared_options()
    parser = Parser(prog="hagw", description="hagw: a high-availability HTTP gateway",
                    parents=[shared])
    parser.add_argument("--version", action="version", version=f"hagw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str,
                admin: bool = False, output: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[shared])
        if admin:
            p.add_argument("--admin", help="admin API URL (default: from the config)")
            p.add_argument("--token", help="admin token (default: from the config)")
        if output:
            p.add_argument("-o", "--output", choices=OUTPUTS, default="text",
                           help="text (default), wide (more columns) or json (the admin "
                                "API's answer, for scripts)")
        p.set_defaults(fn=fn)
        return p

    p = command("run", commands.cmd_run, "run the gateway")
    p.add_argument("--workers", type=commands.workers_arg, default=None,
                   help='data-plane worker processes: a number, "auto" (one per CPU), or 0 '
                        "for one process (default: the config's workers)")
    command("demo", commands.cmd_demo, "run demo nodes and the gateway in front of them")
    p = command("check", commands.cmd_check, "validate a config file")
    p.add_argument("--files", action="store_true", help="also read and check the TLS "
                   "certificates, keys and CAs it names (on the machine that will run it)")
    p = command("nodes", commands.cmd_nodes, "show the nodes of a running gateway",
                admin=True, output=True)
    p.add_argument("--watch", action="store_true", help="refresh in place (survives a "
                   "gateway restart)")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--json", action="store_const", dest="output", const="json",
                   help="same as -o json")
    p = command("drain", commands.cmd_drain,
                "take a node out of rotation; in-flight requests finish", admin=True)
    p.add_argument("node")
    p.add_argument("--reason")
    p.add_argument("--wait", action="store_true", help="wait until nothing is in flight, "
                   "with the in-flight count")
    p.add_argument("--timeout", type=float, default=60.0)
    p = command("undrain", commands.cmd_undrain, "put a drained node back in rotation", admin=True)
    p.add_argument("node")
    p.add_argument("--force", action="store_true", help="also release a deploy's hold")
    command("reload", commands.cmd_reload, "reload the config of a running gateway", admin=True)
    command("processes", commands.cmd_processes, "the supervisor and its worker processes",
            admin=True, output=True)
    p = command("upgrade", commands.cmd_upgrade, "hand the listening sockets to a new "
                "supervisor running the installed hagw (no connection refused)", admin=True)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="how long to wait for the new supervisor to serve (default 60)")
    p = command("deploy", operations.cmd_deploy, "rolling deploy: 'hagw deploy VERSION', or "
                "status, abort, resume, history", admin=True, output=True)
    p.add_argument("target", metavar="VERSION|status|abort|resume|history")
    p.add_argument("id", nargs="?", help="deploy id (default: the current one)")
    p.add_argument("--force", action="store_true",
                   help="start even with the error budget below deploy.min_error_budget")
    p.add_argument("--reason", help="why (recorded with --force or abort)")
    p.add_argument("--no-follow", action="store_true", help="do not wait and show progress")
    p.add_argument("--watch", action="store_true",
                   help="status: follow the deploy live until it ends (Ctrl-C detaches)")
    p = command("maintenance", operations.cmd_maintenance, "maintenance windows: schedule, "
                "list, cancel, start (now), end", admin=True, output=True)
    p.add_argument("action", choices=["schedule", "list", "cancel", "start", "end"])
    p.add_argument("id", nargs="?", help="window id (cancel, end)")
    p.add_argument("--start", help='when: "2026-12-01T02:00Z" (a zone is required) or '
                   'relative, "+2h" (schedule)')
    p.add_argument("--duration", default="1h", help="e.g. 45m (default 1h)")
    p.add_argument("--reason")
    p.add_argument("--nodes", help="comma-separated node names; default: the whole fleet")
    p.add_argument("--yes", "-y", action="store_true",
                   help="start: do not ask before taking the whole fleet into maintenance")
    p.add_argument("--wait", action="store_true",
                   help="end: wait for the replay of queued writes, with a progress bar")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="end --wait: give up waiting after this many seconds")
    p = command("incident", incidents.cmd_incident,
                "incidents: list, show ID, update ID --status S TEXT, ack ID, resolve ID, "
                "note ID TEXT, report ID", admin=True, output=True)
    p.add_argument("action", choices=["list", "show", "update", "ack", "resolve", "note",
                                      "report"])
    p.add_argument("id", nargs="?")
    p.add_argument("text", nargs="*")
    p.add_argument("--status", choices=incidents.STATUSES,
                   help="update: the incident's public status")
    command("status", commands.cmd_status,
            "overall state, availability, nodes, deploy and maintenance", admin=True,
            output=True)
    p = command("events", commands.cmd_events, "show recent events", admin=True, output=True)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--node")
    p.add_argument("--kind", help="only events of this kind (e.g. deploy.step)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new events as they happen (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p = sub.add_parser("node", help="run one demo backend node")
    backend.node_arguments(p)
    p.set_defaults(fn=backend.run_node)
    # Listed for --help; main() hands its arguments to gateway.app.demo.redeploy untouched.
    sub.add_parser("demo-redeploy", help="the demo fleet's deploy action (stop a demo node, "
                   "start a new version on its port)")
    return parser


def _quiet_broken_pipe() -> int:
    """The reader went away (``hagw events | head``): stop quietly. Python would print
    an error when it flushes stdout at exit; point stdout at /dev/null first."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo-redeploy"]:
        sys.exit(redeploy.main(argv[1:]))
    args = build_parser().parse_args(argv)
    code: Any
    try:
        code = args.fn(args)
        sys.stdout.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    except ConfigError as exc:
        print(f"hagw: invalid config: {exc}", file=sys.stderr)
        code = 2
    except AdminError as exc:
        print(f"hagw: {exc}", file=sys.stderr)
        # The gateway said the request itself was bad (a 400): bad usage, as documented.
        code = 2 if exc.status == 400 else 1
    except OSError as exc:  # e.g. a listen address already in use
        print(f"hagw: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
