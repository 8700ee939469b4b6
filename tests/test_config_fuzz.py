"""Config fuzzing: whatever the text, ``parse_config`` loads it or raises ConfigError.

A ConfigError names the file (and, where it can, the line and the key); any other exception
(a TypeError from a wrong shape, an OverflowError from a huge number, a RecursionError from a
YAML alias) is a bug: it escapes ``hagw check`` and a reload as a traceback.

Hypothesis runs derandomized with no example database, so CI sees the same examples every
run; the inputs it found are kept below as explicit regression cases.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args, get_origin, get_type_hints

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.config.types import HostPort, NodeURL, parse_quota, parse_ratio, parse_status_set
from gateway.units import format_duration, parse_duration, parse_size

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
#: Examples that build, dump and parse a whole config document cost more.
FUZZ_DOCUMENTS = settings(FUZZ, max_examples=200)
ENV = {"HAGW_ADMIN_TOKEN": "t0ken", "EMPTY": "", "PORT": "8080"}
BASE = 'admin: {token: t}\nnodes: [{name: node-1, url: "http://127.0.0.1:9601"}]\n'


# -- bugs found by these tests --------------------------------------------------------------


@dataclass(frozen=True)
class KnownBug:
    """An input that raised something other than ConfigError before it was fixed."""

    name: str
    text: str


KNOWN_BUGS = [
    KnownBug("nodes that are not a list", "admin: {token: t}\nnodes: 5\n"),
    KnownBug("a size too large for a float", BASE + f'limits: {{max_body: "{"9" * 400}KB"}}\n'),
    KnownBug("an integer too large for a float ratio", BASE + f"panic_threshold: {'9' * 400}\n"),
    KnownBug("an integer too large for a float",
             BASE + f"incidents: {{fast_burn: {'9' * 400}}}\n"),
    KnownBug("an integer over 4300 digits", BASE + f"x: {'1' * 5000}\n"),
    KnownBug("a YAML alias inside itself", BASE + "x: &a [*a]\n"),
    KnownBug("a mapping alias inside itself", "admin: {token: t}\nhealth: &h {headers: *h}\n"
             'nodes: [{name: a, url: "http://127.0.0.1:1"}]\n'),
    KnownBug("deeply nested YAML", BASE + "x: " + "[" * 1000 + "]" * 1000 + "\n"),
    KnownBug("a regular expression nested too deeply",
             BASE + 'health: {body_match: "' + "(" * 5000 + ")" * 5000 + '"}\n'),
    KnownBug("a regular expression repeat too large",
             BASE + 'health: {body_match: "a{99999999999999999999}"}\n'),
    KnownBug("a date that does not exist",
             BASE + "maintenance: {windows: [{start: 2026-02-30 02:00:00, duration: 1h}]}\n"),
    KnownBug("!!int on text that is no number", BASE + "x: !!int --\n"),
    KnownBug("!!float on text that is no number", BASE + "x: !!float abc\n"),
    KnownBug("!!float on nothing", BASE + "x: !!float\n"),
    KnownBug("!!bool on another word", BASE + "x: !!bool maybe\n"),
    KnownBug("!!timestamp on other text", BASE + "x: !!timestamp soon\n"),
]


@pytest.mark.parametrize("bug", [pytest.param(bug, id=bug.name) for bug in KNOWN_BUGS])
def test_known_bad_inputs_are_config_errors(bug: KnownBug) -> None:
    with pytest.raises(ConfigError):
        parse_config(bug.text, "<fuzz>", ENV)


def test_durations_are_finite() -> None:
    with pytest.raises(ValueError):
        parse_duration("9" * 400 + "s")


def test_maintenance_windows_must_end_by_the_year_9999() -> None:
    with pytest.raises(ConfigError, match="9999"):
        parse_config(BASE + 'maintenance: {windows: [{start: "9999-12-31T23:00Z", '
                            'duration: 2h}]}\n', "<fuzz>", ENV)


def check(text: str) -> None:
    """The property: the text loads, or it raises ConfigError naming the file."""
    try:
        parse_config(text, "<fuzz>", ENV)
    except ConfigError as exc:
        assert str(exc).startswith("<fuzz>"), str(exc)
        event("ConfigError")
    else:
        event("loaded")


# -- random text ----------------------------------------------------------------------------

YAML_TOKENS = [
    "\n", "\n  ", "\n    ", "\n- ", " ", ": ", "- ", "{", "}", "[", "]", ", ", "&a ", "*a", "!!str ",
    "!!int ", "!!float ", "!!binary ", "!!set ", "!!python/object ", "? ", "|", ">", "'", '"',
    "#", "---\n", "...\n", "<<: ", "~", "null", "true", "no", "on", ".inf", "-.inf", ".nan",
    "0x1F", "0o17", "1_000", "190:20:30", "1e400", "-0", "2026-12-01T02:00Z", "2026-12-01",
    "${HAGW_ADMIN_TOKEN}", "${NOPE}", "${EMPTY:-x}", "$${x}", "\t", "\x00", "\ufeff", "é", "☃",
    "admin", "token", "nodes", "name", "url", "http://127.0.0.1:9601", "listen", "health",
    "limits", "max_body", "16KB", "timeouts", "connect", "500ms", "5x", "retries", "on", "503",
    "maintenance", "windows", "start", "duration", "deploy", "command", "{node}", "{bad}",
    "slo", "target", "99.99%", "min_healthy", "50%", "weight", "0", "1001", "-1",
]


@FUZZ
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join))
def test_yaml_shaped_text(text: str) -> None:
    check(text)


@FUZZ
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=25).map("".join))
def test_yaml_shaped_text_after_a_valid_config(text: str) -> None:
    check(BASE + text)


# -- random data shaped like the schema -----------------------------------------------------


def schema_shape(hint: Any) -> Any:
    """The nesting of the config schema: a dict per dataclass, a one-item list per tuple,
    ``{"*": ...}`` per mapping, and "leaf" for everything a parser handles."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return schema_shape(next(a for a in get_args(hint) if a is not type(None)))
    if origin is tuple:
        return [schema_shape(get_args(hint)[0])]
    if origin is dict:
        return {"*": schema_shape(get_args(hint)[1])}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = get_type_hints(hint, include_extras=True)
        return {f.name: schema_shape(hints[f.name]) for f in dataclasses.fields(hint) if f.init}
    return "leaf"


SHAPE = schema_shape(GatewayConfig)

DURATIONS = st.one_of(
    st.from_regex(r"\A(\d{1,4}(\.\d{1,3})?(ms|s|m|h|d)){1,3}\Z"),
    st.sampled_from(["5x", "1 second", "s", "", "2s3", "-1s", "1e3s", "٣s", "1h30", "99" * 200 + "d",
                     "0ms", "0", ".5s", "5 s", " 5s ", "5S", "∞s"]),
)
SIZES = st.one_of(
    st.from_regex(r"\A\d{1,6}(\.\d{1,3})?\s?(B|KB|MB|GB|KiB|MiB|GiB|kb|mib|TB)?\Z"),
    st.sampled_from(["-1KB", "1e9KB", "9" * 400 + "GB", "½KB", "16 K B", "0x10", "KB"]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
STRINGS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["50%", "150%", "-5%", "nan%", "inf%", "1e400%", "0.5", "2xx", "6xx", "[]",
                     "http://127.0.0.1:1", "http://[::1", "http://h:99999", "https://x/y",
                     "https://x", "https://x:", "1.3", "1.1", "h2", "http/1.1", "*.example.com",
                     "ECDHE+AESGCM", "0.0.0.0:9901",
                     "127.0.0.1:8080", "[::1]:1", ":1", "host:", "host:²", "2026-12-01T02:00Z",
                     "9999-12-31T23:59-14:00", "now", "/health", "health", "(", "a{99999}",
                     "${HAGW_ADMIN_TOKEN}", "${NOPE}", "${EMPTY:-d}", "GET", "get", "*", "{node}",
                     "{nope}", "round_robin", "rollback", "email", "webhook"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, STRINGS, DURATIONS, SIZES)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                 inner, max_size=3)), max_leaves=6)


def from_shape(shape: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Data that follows the schema's nesting with random leaves; at any level it may be
    junk instead, or carry an unknown key."""
    if shape == "leaf":
        return SCALARS
    if isinstance(shape, list):
        return st.one_of(st.lists(from_shape(shape[0], depth + 1), max_size=3), JUNK)
    if "*" in shape:
        return st.one_of(st.dictionaries(st.text(max_size=8), from_shape(shape["*"], depth + 1),
                                         max_size=3), JUNK)
    inner = {key: from_shape(sub, depth + 1) for key, sub in shape.items()}
    mapping = st.fixed_dictionaries({}, optional=inner)
    if depth == 0:  # mostly valid required keys and a few sections, so each gets checked
        required = st.fixed_dictionaries(
            {"admin": st.one_of(st.just({"token": "t"}), from_shape(shape["admin"], 1)),
             "nodes": st.one_of(st.just([{"name": "node-1", "url": "http://127.0.0.1:9601"}]),
                                from_shape(shape["nodes"], 1))})
        others = [key for key in inner if key not in ("admin", "nodes")]
        sections = st.lists(st.sampled_from(others), max_size=3, unique=True).flatmap(
            lambda keys: st.fixed_dictionaries({key: inner[key] for key in keys}))
        mapping = st.builds(lambda r, s: {**r, **s}, required, sections)
    with_unknown = st.builds(lambda m, k, v: {**m, k: v}, mapping, st.sampled_from(
        ["unknown", "Listen", "node", "timeout", "", "1"]), SCALARS)
    return st.one_of(mapping, mapping, with_unknown, JUNK) if depth else st.one_of(
        mapping, mapping, with_unknown)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@FUZZ_DOCUMENTS
@given(from_shape(SHAPE))
def test_schema_shaped_data(data: Any) -> None:
    check(dump(data))


VALID: dict[str, Any] = {
    "listen": "127.0.0.1:8080",
    "admin": {"token": "${HAGW_ADMIN_TOKEN}", "listen": "127.0.0.1:9901"},
    "nodes": [{"name": "node-1", "url": "http://127.0.0.1:9601", "weight": 5, "zone": "a",
               "health": {"path": "/ready", "expect_status": ["2xx", 301]}},
              {"name": "node-2", "url": "http://127.0.0.1:9602", "backup": True}],
    "balancer": "least_request",
    "timeouts": {"connect": "1s", "request": "30s"},
    "retries": {"attempts": 3, "on": ["connect-failure", 503], "budget": {"percent": "20%"}},
    "limits": {"max_body": "10MB", "max_header": "16KB", "client_header_timeout": "10s"},
    "health": {"interval": "5s", "body_match": "ok|up", "headers": {"X-Probe": "1"},
               "verify": {"path": "/ready", "expect_status": 200}},
    "deploy": {"command": ["deploy", "{node}", "{version}"], "max_unavailable": "25%"},
    "maintenance": {"windows": [{"start": "2030-01-01T02:00Z", "duration": "1h",
                                 "nodes": ["node-1"]}],
                    "queue_routes": [{"method": "POST", "path": "/orders/**"}]},
    "notifiers": [{"type": "webhook", "url": "https://hooks.example/x"}],
    "slo": {"target": "99.9%", "window": "30d"},
    "min_healthy": 1,
    "panic_threshold": 0.5,
    "tls": {"cert": "/etc/hagw/gw.pem", "key": "/etc/hagw/gw.key", "min_version": "1.2",
            "ciphers": "ECDHE+AESGCM", "alpn": ["http/1.1"],
            "sni": [{"names": ["api.example.com", "*.apps.example.com"], "cert": "/a.pem",
                     "key": "/a.key"}],
            "hsts": {"max_age": "365d", "include_subdomains": True}},
    "upstream_tls": {"ca": "/etc/hagw/nodes-ca.pem", "server_name": "api.internal"},
}


def test_the_valid_base_config_loads() -> None:
    parse_config(dump(VALID), "<fuzz>", ENV)


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += paths(value, (*prefix, i))
    return out


VALID_PATHS = paths(VALID)[1:]


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    if isinstance(data, dict):
        return {**data, path[0]: replaced(data[path[0]], path[1:], value)}
    copy = list(data)
    copy[path[0]] = replaced(copy[path[0]], path[1:], value)
    return copy


@FUZZ_DOCUMENTS
@given(st.lists(st.tuples(st.sampled_from(VALID_PATHS), JUNK), min_size=1, max_size=3))
def test_a_valid_config_with_values_replaced(changes: list[tuple[tuple[Any, ...], Any]]) -> None:
    data: Any = VALID
    for path, value in changes:
        try:
            data = replaced(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this path
    check(dump(data))


# -- the value parsers on their own -------------------------------------------------------------

PARSERS: list[Callable[[object], object]] = [
    parse_duration, parse_size, parse_ratio, parse_quota, parse_status_set, HostPort.parse,
    NodeURL.parse]


@FUZZ
@given(st.sampled_from(PARSERS), st.one_of(SCALARS, JUNK))
def test_value_parsers_raise_only_value_error(parse: Callable[[object], object],
                                              value: object) -> None:
    try:
        parse(value)
    except ValueError as exc:
        # The builder turns ValueError into ConfigError; this is what it would show.
        assert str(exc)


@FUZZ
@given(DURATIONS)
def test_parsed_durations_format(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    if seconds != float("inf"):  # test_durations_are_finite covers inf
        assert format_duration(seconds)
