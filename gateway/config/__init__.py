"""Loading and validating the gateway config."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.build import Builder, dotted
from gateway.config.errors import ConfigError
from gateway.config.schema import GatewayConfig, HealthCheckConfig, NodeConfig
from gateway.config.source import expand_env, read_yaml

__all__ = ["CheckResult", "ConfigError", "GatewayConfig", "HealthCheckConfig", "NodeConfig",
           "check_config", "load_config", "parse_config"]

#: `hagw check` stops after this many errors.
MAX_ERRORS = 50


def parse_config(text: str, file: str = "<config>",
                 env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a YAML document; every problem becomes one ConfigError naming file, key and line."""
    data, lines = read_yaml(text, file)
    builder = Builder(file, lines)
    if not isinstance(data, dict):
        raise builder.error((), f"expected a mapping of config keys, found {data!r}")
    return _build(builder, expand_env(data, builder, env))


def _build(builder: Builder, data: dict[str, Any]) -> GatewayConfig:
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


@dataclass
class CheckResult:
    """What `hagw check` found: every error (not only the first), and warnings."""

    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: GatewayConfig | None = None


def check_config(path: str | Path, env: Mapping[str, str] | None = None) -> CheckResult:
    """Lint a config without its secrets: an unset ``${VAR}`` is a warning (the key keeps
    its ``${VAR}`` text), and after an error the bad key is set aside and the rest checked,
    so one run lists every problem."""
    result = CheckResult()
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        data, lines = read_yaml(text, file)
    except OSError as exc:
        result.errors.append(ConfigError(f"cannot read the config file: "
                                         f"{exc.strerror or exc}", file=file))
        return result
    except (UnicodeDecodeError, ConfigError) as exc:
        result.errors.append(exc if isinstance(exc, ConfigError) else ConfigError(
            "cannot read the config file: it is not UTF-8 text", file=file))
        return result
    builder = Builder(file, lines)
    if not isinstance(data, dict):
        result.errors.append(builder.error((), f"expected a mapping of config keys, "
                                               f"found {data!r}"))
        return result
    unset: list[tuple[tuple[str | int, ...], str]] = []
    data = expand_env(data, builder, env, unset=unset)
    for key, name in unset:
        where = builder.error(key, "")
        result.warnings.append(f"{where.file}{f':{where.line}' if where.line else ''}: "
                               f"{dotted(key)}: environment variable {name} is not set "
                               "(it must be when the gateway starts)")
    seen: set[tuple[str | int, ...]] = set()
    while len(result.errors) < MAX_ERRORS:
        try:
            result.config = _build(builder, copy.deepcopy(data))
            return result
        except ConfigError as exc:
            key = exc.key
            if key in seen:
                # A required key we set aside: that error is reported; set its parent
                # aside too, and go on.
                key = key[:-1]
            else:
                result.errors.append(exc)
            if not key or key in seen or not _remove(data, key):
                return result
            seen.add(exc.key)
            seen.add(key)
    return result


def _remove(data: Any, key: tuple[str | int, ...]) -> bool:
    """Set the key at ``key`` aside (so the builder goes on past it); False if it is not
    there (a missing required key: nothing more can be learnt)."""
    for part in key[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False
    last = key[-1]
    if isinstance(data, dict) and last in data:
        del data[last]
        return True
    if isinstance(data, list) and isinstance(last, int) and 0 <= last < len(data):
        del data[last]
        return True
    return False
