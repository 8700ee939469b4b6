"""Read a YAML config file into plain data, with the line of every key and ``${VAR}`` expanded."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from gateway.config.build import Builder, Path
from gateway.config.errors import ConfigError

# ${VAR} or ${VAR:-default}; "$${" escapes a literal "${".
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read the key ``on`` (retries.on)
    and the values yes/no/off as booleans."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


def read_yaml(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML, refusing duplicate keys, and map each key path to its line."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from None
    lines: dict[Path, int] = {}
    if node is not None:
        _index(node, (), lines, Builder(file, lines))
    return data, lines


def _index(node: yaml.Node, path: Path, lines: dict[Path, int], builder: Builder) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                lines[(*path, key)] = key_node.start_mark.line + 1
                raise builder.error((*path, key), f"duplicate key {key!r}")
            seen.add(key)
            _index(value_node, (*path, key), lines, builder)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, builder)


def expand_env(data: Any, builder: Builder, env: Mapping[str, str] | None = None,
               path: Path = ()) -> Any:
    """Replace ``${VAR}`` in every string; an unset variable without a default is an error."""
    environ = os.environ if env is None else env
    if isinstance(data, str):
        if "$" not in data:
            return data

        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            value = environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise builder.error(path, f"environment variable {name} is not set "
                                              f"(use ${{{name}:-default}} for a fallback)")
                return default
            return value

        return _ENV.sub(sub, data)
    if isinstance(data, dict):
        return {k: expand_env(v, builder, environ, (*path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, builder, environ, (*path, i)) for i, v in enumerate(data)]
    return data
