"""Which keys a new config changes: dotted key paths, never values (a value may be a
secret). A reload reports them (``hagw reload``, the ``config.reloaded`` event)."""

from __future__ import annotations

import dataclasses
from typing import Any


def changed_keys(old: Any, new: Any, prefix: str = "", depth: int = 2) -> list[str]:
    """The key paths whose values differ, down to ``depth`` levels (``retries.attempts``);
    ``nodes`` is reported per node name (``nodes.node-2``)."""
    if old == new:
        return []
    if prefix == "nodes" and isinstance(old, tuple) and isinstance(new, tuple):
        before = {getattr(n, "name", str(i)): n for i, n in enumerate(old)}
        after = {getattr(n, "name", str(i)): n for i, n in enumerate(new)}
        return [f"nodes.{name}" for name in sorted(before.keys() | after.keys())
                if before.get(name) != after.get(name)]
    if (depth > 0 and dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new)
            and type(old) is type(new)):
        out: list[str] = []
        for f in dataclasses.fields(old):
            key = f"{prefix}.{f.name}" if prefix else f.name
            out += changed_keys(getattr(old, f.name), getattr(new, f.name), key,
                                depth - 1 if prefix else depth)
        return out
    return [prefix or "(config)"]
