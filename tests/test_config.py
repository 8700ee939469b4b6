"""Config loading: every bad input names the file, the key and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.units import Quota, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
BASE = """
admin: {token: "t"}
nodes:
  - {name: node-1, url: "http://127.0.0.1:9601"}
"""


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("2s", 2.0), ("45m", 2700.0), ("1h30m", 5400.0), ("30d", 2592000.0),
    ("1.5s", 1.5), (0, 0.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30", 30, "1 second", "s", "", "5x", True, None, "2s3"])
def test_bad_durations_say_what_was_expected(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 500ms"):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    ("16KB", 16384), ("10MB", 10 * 1024**2), ("1GB", 1024**3), ("512", 512), (100, 100),
    ("4KiB", 4096),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_quota_rounding() -> None:
    assert Quota.parse("50%").of(3) == 2  # floors round up
    assert Quota.parse("50%").of(3, round_up=False) == 1  # budgets round down
    assert Quota.parse(2).of(10) == 2
    with pytest.raises(ValueError):
        Quota.parse("150%")


def test_defaults_and_issue_example() -> None:
    config = parse_config("""
listen: "127.0.0.1:8080"
admin:
  listen: "127.0.0.1:9901"
  token: "${HAGW_ADMIN_TOKEN}"
nodes:
  - {name: node-1, url: "http://127.0.0.1:9601", weight: 1}
balancer: round_robin
timeouts: {connect: 1s, request: 30s, idle_upstream: 30s}
retries: {attempts: 2, on: [connect-failure, reset, "502", "503"], methods: [GET, HEAD, OPTIONS, PUT, DELETE]}
limits: {max_body: 10MB, max_header: 16KB, client_header_timeout: 10s}
""", "gateway.yaml", env={"HAGW_ADMIN_TOKEN": "s3cret"})
    assert config.admin.token == "s3cret"
    assert config.retries.retry_statuses == {502, 503}
    assert config.limits.max_body == 10 * 1024 * 1024
    assert config.timeouts.connect == 1.0
    assert config.health.healthy_threshold == 2
    assert config.min_healthy.of(4) == 2
    # What a client may do to the gateway by default (issue 16).
    assert config.trusted_proxies == ()
    assert config.maintenance.queue_rate_limit.enabled is True
    assert config.maintenance.max_queued_bytes == 1024**3
    assert config.maintenance.max_client_queued_bytes == 10 * 1024**2
    assert config.maintenance.min_free_disk == 256 * 1024**2


@pytest.mark.parametrize(("snippet", "message"), [
    ("timeouts: {connect: 1 second}",
     "gateway.yaml:5: timeouts.connect: expected a duration like 500ms, 2s or 45m, found '1 second'"),
    ("limits: {max_bdy: 1MB}", "gateway.yaml:5: limits.max_bdy: unknown key 'max_bdy'"),
    ("balancer: fastest", "gateway.yaml:5: balancer: expected one of 'round_robin'"),
    ("retries: {on: [sometimes]}", "retries.on[0]: expected one of connect-failure"),
    ("listen: 8080", 'listen: expected an address like "127.0.0.1:8080", found 8080'),
    ("health: {expect_status: 7xx}", "health.expect_status: expected an HTTP status"),
    ("min_healthy: lots", "min_healthy: expected a node count like 2"),
    ("retries: {attempts: 0}", "retries.attempts: expected 1 or more, found 0"),
    ("timeouts: {connect: 0ms}", "timeouts.connect: expected a value above zero"),
    ("locality: prefer_zone", "zone: expected the gateway's own zone"),
    ("health: {body_match: '('}", "health.body_match: expected a regular expression"),
    ("trusted_proxies: [10.0.0.0/33]",
     "gateway.yaml:5: trusted_proxies[0]: expected an address or CIDR like 10.0.0.0/8"),
    ("maintenance: {store_headers: ['Bad Header']}",
     "maintenance.store_headers[0]: expected a header name like Authorization"),
    ("maintenance: {max_client_queued_bytes: lots}",
     "maintenance.max_client_queued_bytes: expected a size like 16KB"),
    ("maintenance: {queue_rate_limit: {rate: 0}}",
     "maintenance.queue_rate_limit.rate: expected a value above zero"),
    ("status: {components: [{name: API, zones: [mars-1]}]}",
     "gateway.yaml:5: status.components[0].zones[0]: no node has zone 'mars-1'"),
    ("status: {components: [{name: API, nodes: [node-9]}]}",
     "status.components[0].nodes[0]: no node named 'node-9'"),
    ("status: {components: [{name: API}]}",
     "status.components[0].zones: component 'API' has no zones and no nodes"),
    ("status: {components: [{name: ' ', nodes: [node-1]}]}",
     "status.components[0].name: expected a name of 1 to 100 characters"),
    ("status: {components: [{name: A, nodes: [node-1]}, {name: A, nodes: [node-1]}]}",
     "status.components[1].name: duplicate component name 'A' (also components[0])"),
])
def test_errors_name_file_line_key_and_expectation(snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + snippet + "\n", "gateway.yaml")
    assert message in str(err.value)


def test_node_errors_point_at_the_node() -> None:
    text = """admin: {token: "t"}
nodes:
  - {name: node-1, url: "http://127.0.0.1:9601"}
  - {name: node-1, url: "http://127.0.0.1:9602"}
  - {name: node-3, url: "ftp://x"}
"""
    with pytest.raises(ConfigError, match=r"gateway.yaml:5: nodes\[2\].url: expected a URL"):
        parse_config(text, "gateway.yaml")
    with pytest.raises(ConfigError, match=r"gateway.yaml:4: nodes\[1\].name: duplicate node"):
        parse_config(text.replace("ftp://x", "http://127.0.0.1:9603"), "gateway.yaml")


def test_missing_and_empty_values() -> None:
    with pytest.raises(ConfigError, match="nodes: required key is missing"):
        parse_config('admin: {token: "t"}\n', "g.yaml")
    with pytest.raises(ConfigError, match="admin.token: environment variable NOPE is not set"):
        parse_config('admin: {token: "${NOPE}"}\nnodes: []\n', "g.yaml", env={})
    with pytest.raises(ConfigError, match="admin.token: expected a non-empty token"):
        parse_config(BASE.replace('"t"', '""'), "g.yaml")
    with pytest.raises(ConfigError, match="nodes: expected at least one node"):
        parse_config('admin: {token: "t"}\nnodes: []\n', "g.yaml")


def test_yaml_traps() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'listen'"):
        parse_config(BASE + 'listen: "127.0.0.1:1"\nlisten: "127.0.0.1:2"\n', "g.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_config(BASE + "listen: [\n", "g.yaml")
    # YAML 1.1 would read the key `on` as a boolean; here it is the retry condition list.
    config = parse_config(BASE + "retries: {on: [reset, 502]}\n", "g.yaml")
    assert config.retries.on == ("reset", "502")


def test_env_defaults_and_escape() -> None:
    config = parse_config(BASE.replace('"t"', '"${TOKEN:-fallback}$${literal}"'), "g.yaml",
                          env={})
    assert config.admin.token == "fallback${literal}"


def test_per_node_health_overrides_merge_onto_the_top_level() -> None:
    config = parse_config("""admin: {token: "t"}
health: {path: /healthz, interval: 3s}
nodes:
  - {name: a, url: "http://127.0.0.1:1", health: {interval: 1s}}
  - {name: b, url: "http://127.0.0.1:2"}
""", "g.yaml")
    a, b = config.nodes
    assert config.health_for(a).interval == 1.0 and config.health_for(a).path == "/healthz"
    assert config.health_for(b).interval == 3.0


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read the config file"):
        load_config("nope.yaml")


@pytest.mark.parametrize("path", ["configs/gateway.yaml", "configs/demo.yaml"])
def test_shipped_configs_load(path: str) -> None:
    load_config(ROOT / path, env={"HAGW_ADMIN_TOKEN": "x"})


def test_hagw_check_exits_nonzero_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "timeouts: {request: soon}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{bad}:5: timeouts.request: expected a duration" in result.stderr
    good = subprocess.run([sys.executable, "-m", "gateway", "check", "-c",
                           str(ROOT / "configs/demo.yaml")], capture_output=True, text=True,
                          timeout=30)
    assert good.returncode == 0, good.stderr
    assert "ok (3 nodes" in good.stdout
