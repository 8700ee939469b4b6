"""configs/gateway.yaml documents every key of the schema (gateway/config/schema.py), set
or commented out, and what it sets is a valid config (``hagw check``)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from gateway.config import GatewayConfig, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "gateway.yaml"
_KEY = re.compile(r"^(?P<indent> *)(?P<item>- +)?(?P<key>[a-z_][a-z0-9_]*):(?: +|$)(?P<value>.*)$")
#: A list item that is a flow mapping: ``- {name: node-1, url: ...}``.
_FLOW_ITEM = re.compile(r"^(?P<indent> *)- +(?P<value>\{.*\})$")


def _dataclass_of(hint: Any) -> type[Any] | None:
    """The config dataclass a field holds (itself, optional, or as list items), if any."""
    origin = get_origin(hint)
    if origin is typing.Annotated:
        return None
    if origin in (typing.Union, types.UnionType, tuple):
        for arg in get_args(hint):
            found = _dataclass_of(arg)
            if found is not None:
                return found
        return None
    return hint if dataclasses.is_dataclass(hint) and isinstance(hint, type) else None


def schema_keys(cls: type[Any] = GatewayConfig, *, every_place: bool = False) -> set[str]:
    """Every key path (``retries.budget.percent``; list items under their list's key:
    ``nodes.zone``). A section type is walked at its shallowest place only: ``health`` and
    ``tls`` are, ``nodes[].health`` and ``admin.tls`` (the same types) count as keys;
    ``every_place`` walks them everywhere (every key a config may have)."""
    keys: set[str] = set()
    seen = {cls}
    level: list[tuple[type[Any], str]] = [(cls, "")]
    while level:
        deeper = []
        for section, prefix in level:
            for name, hint in get_type_hints(section, include_extras=True).items():
                keys.add(f"{prefix}{name}")
                inner = _dataclass_of(hint)
                if inner is not None and (every_place or inner not in seen):
                    seen.add(inner)
                    deeper.append((inner, f"{prefix}{name}."))
        level = deeper
    return keys


def _flow_keys(text: str) -> set[str]:
    """Keys of a flow mapping or a list of them: ``{a: 1, b: {c: 2}}`` -> a, b, b.c."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return set()
    out: set[str] = set()

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                out.add(f"{prefix}{key}")
                walk(sub, f"{prefix}{key}.")
        elif isinstance(value, list):
            for item in value:
                walk(item, prefix)

    walk(data, "")
    return out


def documented_keys(text: str) -> set[str]:
    """Every key path the file shows, set or in a comment."""
    return set(documented_lines(text))


def documented_lines(text: str) -> dict[str, list[str]]:
    """Every key path the file shows, set or in a comment, with the lines that show it and
    the line above each. A commented-out line is read as if its ``# `` were not there, at
    the same indentation; prose comments never start with ``key:``. A flow mapping after a
    key (``{percent: 20%, ...}``) documents its keys."""
    found: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []  # (indentation, key path)
    previous = ""
    for raw in text.splitlines():
        above, previous = previous, raw
        line = raw
        # Commented out, maybe twice (a commented key inside a commented section).
        while (comment := re.match(r"^( *)# ?(.*)$", line)) is not None:
            line = comment.group(1) + comment.group(2)
        line = re.sub(r"\s+#(?:\s.*)?$", "", line)  # a trailing comment
        item = _FLOW_ITEM.match(line)
        if item is not None:
            indent = len(item["indent"])
            while stack and stack[-1][0] >= indent + 1:
                stack.pop()
            parent = stack[-1][1] + "." if stack else ""
            for key in _flow_keys(item["value"]):
                found.setdefault(f"{parent}{key}", []).append(above + "\n" + raw)
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        indent = len(match["indent"]) + len(match["item"] or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (stack[-1][1] + "." if stack else "") + match["key"]
        for key in ("", *(f".{k}" for k in _flow_keys(match["value"]))):
            found.setdefault(f"{path}{key}", []).append(above + "\n" + raw)
        # "- key: v" starts a list item: its other keys sit at the same indentation as this
        # key, so they pop it and land under the list's key too.
        stack.append((indent, path))
    return found


def test_the_walk_sees_nested_and_commented_keys() -> None:
    text = """a:
  b: 1   # a comment
  # c: {d: 1, e: [x]}
# f:
#   - {g: 1}
#   - h: 2
#     i: 3
# Prose: never a key.
"""
    assert documented_keys(text) == {"a", "a.b", "a.c", "a.c.d", "a.c.e", "f", "f.g", "f.h",
                                     "f.i"}
    assert "retries.budget.percent" in schema_keys()
    assert "nodes.zone" in schema_keys() and "nodes.health" in schema_keys()
    assert "nodes.health.interval" not in schema_keys() and "health.interval" in schema_keys()
    assert "admin.tls" in schema_keys() and "admin.tls.cert" not in schema_keys()


def test_every_schema_key_is_in_the_example_config() -> None:
    missing = sorted(schema_keys() - documented_keys(EXAMPLE.read_text()))
    assert not missing, f"configs/gateway.yaml does not document {missing}"


def test_the_example_config_only_names_real_keys() -> None:
    """No key the schema does not have (a typo, a key renamed since)."""
    known = schema_keys(every_place=True)
    # Values that are mappings of the operator's own: headers of a probe or a webhook.
    free = ("health.headers.", "notifiers.headers.", "deploy.webhook.headers.",
            "tracing.headers.")
    extra = sorted(k for k in documented_keys(EXAMPLE.read_text()) - known
                   if not k.startswith(free))
    assert not extra, f"configs/gateway.yaml documents keys the schema has not: {extra}"


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        return [d for f in dataclasses.fields(a)
                for d in _differences(getattr(a, f.name), getattr(b, f.name),
                                      f"{prefix}{f.name}.")]
    return [] if a == b else [prefix.rstrip(".")]


def test_what_the_example_config_sets_is_the_default_or_says_so() -> None:
    """The header promises: the values shown are the defaults unless the comment says
    otherwise. Every key set to something else says "default" (or "required") on its line
    or the line above."""
    example = load_config(EXAMPLE, env={"HAGW_ADMIN_TOKEN": "x"})
    bare = parse_config('admin: {token: "x"}\nnodes: [{name: n, url: "http://10.0.0.1"}]\n',
                        "bare.yaml")
    lines = documented_lines(EXAMPLE.read_text())
    differing = {d if d in lines else d.rsplit(".", 1)[0]
                 for d in _differences(example, bare) if d != "admin.token"}
    assert differing >= {"listen", "nodes"}
    for key in sorted(differing):
        shown = [line for line in lines[key] if not line.split("\n")[1].lstrip().startswith("#")]
        assert any("default" in line or "required" in line.lower() for line in shown), \
            f"configs/gateway.yaml sets {key} to something else than the default and " \
            f"does not say so: {shown}"


def test_what_the_example_config_sets_is_valid() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAGW_")}
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(EXAMPLE)],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok (" in result.stdout
    # The only warning: the admin token, a secret, comes from the environment.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "HAGW_ADMIN_TOKEN is not set" in warnings[0], result.stderr
    config = load_config(EXAMPLE, env={"HAGW_ADMIN_TOKEN": "x"})
    assert config.admin.token == "x"
