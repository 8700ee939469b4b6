"""What every CLI command shares: which config file, the admin client it points at, and
how a read command prints (``-o text|wide|json``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gateway.app.cli.client import AdminClient
from gateway.config import GatewayConfig, load_config

DEFAULT_CONFIG = "configs/gateway.yaml"
#: ``-o``: text is for people, wide adds columns, json is the admin API's answer as is.
OUTPUTS = ("text", "wide", "json")


def config_path(args: argparse.Namespace) -> str:
    return str(getattr(args, "config", None) or os.environ.get("HAGW_CONFIG")
               or DEFAULT_CONFIG)


def load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(config_path(args))


def admin_client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.from_config(load(args), url=args.admin, token=args.token)


def output(args: argparse.Namespace) -> str:
    return str(getattr(args, "output", None) or "text")


def print_json(data: Any) -> None:
    """``-o json``: one JSON document, stable key order, for jq and scripts."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def usage_error(message: str) -> int:
    """Bad usage: say what is wrong and exit 2 (README "Command line")."""
    print(f"hagw: {message}", file=sys.stderr)
    return 2
