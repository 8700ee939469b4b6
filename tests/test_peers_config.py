"""The ``peers`` config section: validated once, and its Redis password never echoed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.redis_url import RedisURL, redact_url
from gateway.config.types import HostPort

ROOT = Path(__file__).resolve().parent.parent
BASE = 'admin: {token: "t"}\nnodes: [{name: node-1, url: "http://127.0.0.1:9601"}]\n'
SECRET = "hunter2"


def test_defaults_and_a_full_section() -> None:
    assert parse_config(BASE, "g.yaml").peers is None
    config = parse_config(BASE + 'peers: {redis: "redis://127.0.0.1"}\n', "g.yaml").peers
    assert config is not None
    assert config.name == socket.gethostname()
    assert (config.lease_ttl, config.renew_interval, config.prefix) == (5.0, 5.0 / 3, "hagw")
    assert (config.write_replicas, config.wait_timeout, config.sentinels) == (0, 1.0, ())
    assert config.target == RedisURL("127.0.0.1", 6379, 0)

    config = parse_config(BASE + f"""peers:
  redis: "rediss://app:{SECRET}@redis.internal:6380/3"
  sentinels: ["10.0.0.7:26379", "10.0.0.8:26379"]
  sentinel_service: gateway
  name: gw-a
  lease_ttl: 3s
  renew_every: 500ms
  prefix: "hagw:prod"
  write_replicas: 1
  wait_timeout: 250ms
""", "g.yaml").peers
    assert config is not None
    assert config.sentinels == (HostPort("10.0.0.7", 26379), HostPort("10.0.0.8", 26379))
    assert config.renew_interval == 0.5
    target = config.target
    assert (target.host, target.port, target.db, target.username, target.password,
            target.tls) == ("redis.internal", 6380, 3, "app", SECRET, True)


@pytest.mark.parametrize(("snippet", "message"), [
    ('peers: {redis: "http://h:6379"}', "g.yaml:3: peers.redis: expected a URL like redis://"),
    ('peers: {redis: "redis://"}', "peers.redis: expected a URL like redis://"),
    ('peers: {redis: "redis://h:99999"}', "peers.redis: expected a URL like redis://"),
    ('peers: {redis: "redis://h/x"}', "peers.redis: expected a database number"),
    ('peers: {redis: "redis://h?db=1"}', "peers.redis: expected no query"),
    ('peers: {redis: "redis://me@h"}', "peers.redis: expected redis://user:password@host"),
    ('peers: {redis: "redis://h", renew_every: 5s}',
     "peers.renew_every: expected less than lease_ttl (5s), found 5s"),
    ('peers: {redis: "redis://h", lease_ttl: 1s, timeout: 1s}',
     "peers.timeout: expected less than lease_ttl"),
    ('peers: {redis: "redis://h", lease_ttl: 0s}', "peers.lease_ttl: expected a value above"),
    ('peers: {redis: "redis://h", name: "gw a"}', "peers.name: expected a name of letters"),
    ('peers: {redis: "redis://h", prefix: "{x}"}', "peers.prefix: expected letters"),
    ('peers: {redis: "redis://h", write_replicas: -1}', "peers.write_replicas: expected 0 or"),
    ('peers: {redis: "redis://h", sentinels: [nowhere]}',
     'peers.sentinels[0]: expected an address like "127.0.0.1:8080"'),
    ("peers: {name: gw-a}", "peers.redis: required key is missing"),
    ("rate_limit: {enabled: true, scope: fleet}",
     "rate_limit.scope: expected local without peers"),
    ('rate_limit: {scope: everywhere}\npeers: {redis: "redis://h"}', "rate_limit.scope"),
])
def test_errors_name_file_line_key_and_expectation(snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + snippet + "\n", "g.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@h:6379/0", f"redis://user:{SECRET}@h", f"redis://{SECRET}@h/1",
    f"rediss://u:{SECRET}@h:1/2", f"redis://:pa/{SECRET}@h", f"redis://:{SECRET}?x@h",
    f"http://:{SECRET}@h", f"redis://:{SECRET}@h/not-a-db", f"redis://:{SECRET}@h/0?a=b",
    f"redis://h?password={SECRET}",
])
def test_the_password_is_never_echoed(url: str) -> None:
    assert SECRET not in redact_url(url)
    try:
        config = parse_config(BASE + f'peers: {{redis: "{url}"}}\n', "g.yaml")
    except ConfigError as exc:
        assert SECRET not in str(exc)
        assert "***" in str(exc)
    else:
        assert config.peers is not None
        assert SECRET not in repr(config.peers)
        assert SECRET not in repr(config)
        assert SECRET not in str(config.peers.target)
        assert SECRET not in repr(config.peers.target)


def test_scrub_takes_the_password_out_of_any_message() -> None:
    target = RedisURL.parse(f"redis://:{SECRET}@h:6379")
    assert target.scrub(f"AUTH {SECRET} failed for redis://:{SECRET}@h") == \
        "AUTH *** failed for redis://:***@h"


def test_the_commented_peers_block_of_the_shipped_config_is_valid() -> None:
    text = (ROOT / "configs/gateway.yaml").read_text()
    head, sep, tail = text.partition("# peers:\n")
    assert sep, "configs/gateway.yaml documents the peers keys"
    lines = ["peers:"]
    for line in tail.splitlines():
        assert line.startswith("#"), line
        if not line.startswith("#   #"):  # the keys themselves, not their comments
            lines.append(line[2:])
    config = parse_config(head + "\n".join(lines) + "\n", "gateway.yaml",
                          env={"HAGW_ADMIN_TOKEN": "x", "REDIS_PASSWORD": SECRET})
    assert config.peers is not None
    assert config.peers.target.password == SECRET
    assert config.peers.name == "gw-a"
