"""Turn plain YAML data into the frozen, typed config dataclasses.

The dataclass type hints are the schema: one generic walker converts and checks
every field, so a new config key needs a field and nothing else. Unknown keys
are errors because a typo must never be ignored silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from gateway.config.errors import ConfigError, FieldProblem
from gateway.config.redact import EnvSecrets

Path = tuple[str | int, ...]


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Builder:
    """Builds one config document, remembering where each key sits in the file."""

    def __init__(self, file: str, lines: Mapping[Path, int] | None = None) -> None:
        self.file = file
        self.lines = lines or {}
        #: Values ``${VAR}`` put in (gateway.config.source.expand_env): never echoed.
        self.secrets = EnvSecrets()

    def error(self, path: Path, message: str) -> ConfigError:
        if self.secrets:
            message = self.secrets.scrub(path, message)
        line = None
        probe = path
        while probe and line is None:
            line = self.lines.get(probe)
            probe = probe[:-1]
        error = ConfigError(message, file=self.file, path=dotted(path), line=line)
        error.key = path
        return error

    def build(self, cls: type[Any], data: object, path: Path = ()) -> Any:
        return self._convert(cls, data, path)

    def _convert(self, hint: Any, value: object, path: Path) -> Any:
        origin = get_origin(hint)
        if origin is typing.Annotated:
            _base, *meta = get_args(hint)
            parser = next(m for m in meta if callable(m))
            try:
                return parser(value)
            except ValueError as exc:
                raise self.error(path, str(exc)) from None
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(hint) if a is not type(None)]
            if value is None:
                return None
            if len(options) == 1:
                return self._convert(options[0], value, path)
            for option in options:  # pragma: no branch - first that fits wins
                try:
                    return self._convert(option, value, path)
                except ConfigError:
                    continue
            raise self.error(path, f"expected {_describe(hint)}, found {value!r}")
        if origin is Literal:
            allowed = get_args(hint)
            if value not in allowed:
                choices = ", ".join(repr(a) for a in allowed)
                raise self.error(path, f"expected one of {choices}, found {value!r}")
            return value
        if origin is tuple:
            item_type = get_args(hint)[0]
            if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
                raise self.error(path, f"expected a list, found {value!r}")
            return tuple(self._convert(item_type, item, (*path, i)) for i, item in enumerate(value))
        if origin is dict:
            key_type, item_type = get_args(hint)
            if not isinstance(value, dict):
                raise self.error(path, f"expected a mapping, found {value!r}")
            return {self._convert(key_type, k, (*path, str(k))):
                    self._convert(item_type, v, (*path, str(k))) for k, v in value.items()}
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self._dataclass(hint, value, path)
        return self._scalar(hint, value, path)

    def _scalar(self, hint: Any, value: object, path: Path) -> Any:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise self.error(path, f"expected true or false, found {value!r}")
        if hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise self.error(path, f"expected a whole number, found {value!r}")
        if hint is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            raise self.error(path, f"expected a number, found {value!r}")
        if hint is str:
            if isinstance(value, str):
                return value
            # YAML turns 503 or 1.0 into numbers; only strings are strings here.
            raise self.error(path, f"expected a string, found {value!r}")
        if hint is Any or hint is object:
            return value
        raise TypeError(f"config schema uses an unsupported type {hint!r}")  # pragma: no cover

    def _dataclass(self, cls: type[Any], value: object, path: Path) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of {_describe(cls)} keys, found {value!r}")
        hints = get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [k for k in value if k not in fields]
        if unknown:
            key = unknown[0]
            known = ", ".join(sorted(fields))
            raise self.error((*path, str(key)), f"unknown key {key!r} (known keys: {known})")
        kwargs: dict[str, Any] = {}
        for name, fld in fields.items():
            if name in value:
                converted = self._convert(hints[name], value[name], (*path, name))
                check: Callable[[Any], None] | None = fld.metadata.get("check")
                if check is not None:
                    try:
                        check(converted)
                    except ValueError as exc:
                        raise self.error((*path, name), str(exc)) from None
                kwargs[name] = converted
            elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise self.error((*path, name),
                                 f"required key is missing ({_describe(hints[name])})")
        try:
            obj = cls(**kwargs)
            validate = getattr(obj, "validate", None)
            if validate is not None:
                validate()
        except FieldProblem as exc:
            sub = tuple(int(p) if p.isdigit() else p for p in exc.key.split("."))
            raise self.error((*path, *sub), str(exc)) from None
        return obj


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is typing.Annotated:
        return str(getattr(get_args(hint)[1], "describe", get_args(hint)[0].__name__))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint) if a is not type(None))
    if origin is tuple:
        return f"a list of {_describe(get_args(hint)[0])}"
    if isinstance(hint, type):
        return {"str": "a string", "int": "a whole number", "float": "a number",
                "bool": "true or false"}.get(hint.__name__, hint.__name__)
    return str(hint)


def check(fn: Callable[[Any], bool], message: str) -> dict[str, Callable[[Any], None]]:
    """Field metadata for a per-value check: ``field(default=1, metadata=check(...))``."""

    def run(value: Any) -> None:
        if not fn(value):
            raise ValueError(f"{message}, found {value!r}")

    return {"check": run}
