"""Loading and validating the gateway config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.config.build import Builder
from gateway.config.errors import ConfigError
from gateway.config.schema import GatewayConfig, HealthCheckConfig, NodeConfig
from gateway.config.source import expand_env, read_yaml

__all__ = ["ConfigError", "GatewayConfig", "HealthCheckConfig", "NodeConfig", "load_config",
           "parse_config"]


def parse_config(text: str, file: str = "<config>",
                 env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a YAML document; every problem becomes one ConfigError naming file, key and line."""
    data, lines = read_yaml(text, file)
    builder = Builder(file, lines)
    if not isinstance(data, dict):
        raise builder.error((), f"expected a mapping of config keys, found {data!r}")
    data = expand_env(data, builder, env)
    # A node's health block overrides single keys of the top-level one.
    base_health = data.get("health") or {}
    nodes = data.get("nodes")
    for node in nodes if isinstance(nodes, list) else []:
        if isinstance(node, dict) and isinstance(node.get("health"), dict) \
                and isinstance(base_health, dict):
            node["health"] = {**base_health, **node["health"]}
    config: GatewayConfig = builder.build(GatewayConfig, data)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}",
                          file=file) from None
    except UnicodeDecodeError:
        raise ConfigError("cannot read the config file: it is not UTF-8 text", file=file) from None
    return parse_config(text, file, env)
