"""What every CLI command shares: which config file, and the admin client it points at."""

from __future__ import annotations

import argparse
import os

from gateway.app.cli.client import AdminClient
from gateway.config import GatewayConfig, load_config

DEFAULT_CONFIG = "configs/gateway.yaml"


def config_path(args: argparse.Namespace) -> str:
    return str(args.config or os.environ.get("HAGW_CONFIG") or DEFAULT_CONFIG)


def load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(config_path(args))


def admin_client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.from_config(load(args), url=args.admin, token=args.token)
