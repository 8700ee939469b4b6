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

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # PyYAML's constructors raise these for values they cannot read: a date like
            # 2026-02-30, or an explicit tag on the wrong text (!!int --, !!bool maybe).
            what = repr(node.value) if isinstance(node, yaml.ScalarNode) else "a value"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what} as !!{node.tag.rpartition(':')[2]} ({exc})",
                node.start_mark) from None


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))

#: Every value the index visits, aliases counted each time they are used ("billion laughs").
MAX_VALUES = 100_000


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """No config number needs more than 64 bits; far larger ones only break things later
    (float() overflows, and Python refuses to print integers over 4300 digits)."""
    digits = len(node.value.lstrip("+-0").replace("_", ""))
    value: int = yaml.SafeLoader.construct_yaml_int(loader, node) if digits <= 40 else 1 << 64
    if value.bit_length() > 64:
        raise yaml.constructor.ConstructorError(None, None, "integer too large (over 64 bits)",
                                                node.start_mark)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_yaml(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML, refusing duplicate keys, and map each key path to its line."""
    lines: dict[Path, int] = {}
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
        if node is not None:
            _index(node, (), lines, Builder(file, lines), set(), [0])
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", file=file, line=line) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=file) from None
    return data, lines


def _index(node: yaml.Node, path: Path, lines: dict[Path, int], builder: Builder,
           parents: set[int], count: list[int]) -> None:
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise builder.error(path, f"too many values (over {MAX_VALUES}, aliases counted "
                                  "each time they are used)")
    lines[path] = node.start_mark.line + 1
    if id(node) in parents:
        raise builder.error(path, "a YAML alias refers to a value that contains it")
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        parents.add(id(node))
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                lines[(*path, key)] = key_node.start_mark.line + 1
                raise builder.error((*path, key), f"duplicate key {key!r}")
            seen.add(key)
            _index(value_node, (*path, key), lines, builder, parents, count)
            lines[(*path, key)] = key_node.start_mark.line + 1
        parents.discard(id(node))
    elif isinstance(node, yaml.SequenceNode):
        parents.add(id(node))
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, builder, parents, count)
        parents.discard(id(node))


def expand_env(data: Any, builder: Builder, env: Mapping[str, str] | None = None,
               path: Path = (), unset: list[tuple[Path, str]] | None = None) -> Any:
    """Replace ``${VAR}`` in every string; an unset variable without a default is an error,
    or, given ``unset`` (``hagw check``), recorded there and left as written. What came from
    the environment is noted in ``builder.secrets``, so that no error message ever shows it."""
    environ = os.environ if env is None else env
    if isinstance(data, str):
        if "$" not in data:
            return data
        used: list[str] = []

        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            value = environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None and unset is not None:
                    unset.append((path, name))
                    return match.group(0)
                if default is None:
                    raise builder.error(path, f"environment variable {name} is not set "
                                              f"(use ${{{name}:-default}} for a fallback)")
                return default
            used.append(name)
            return value

        expanded = _ENV.sub(sub, data)
        if used:
            builder.secrets.record(path, expanded, tuple(used))
        return expanded
    if isinstance(data, dict):
        return {k: expand_env(v, builder, environ, (*path, k), unset) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, builder, environ, (*path, i), unset) for i, v in enumerate(data)]
    return data
