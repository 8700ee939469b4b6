"""The deploy version rule (monitor/versions.py): what may reach a deploy action."""

from __future__ import annotations

import pytest

from monitor.versions import PATTERN, is_valid_version, shown, valid_or_none, validate_version

GOOD = ["v2", "1.2.3", "2026.12.01+build.7", "release-1_2", "V", "0", "a" * 128, "v2.",
        "1-rc.1+sha.5114f85"]
BAD = ["v2; touch X", "$(id)", "`id`", "../../x", "a/..", "a..b", "..", ".", "--help", "-v",
       "", "a" * 129, "v2\n", "\nv2", "v 2", " v2", "v2 ", "v2\t", "véa", "v2\u202e",
       "١٢٣", "v2/x", "v2\\x", "v2|x", "v2&x", "v2>x", "v2*", "~v2", "+v2", "_v2", ".v2",
       "v2\x00", "v2'", 'v2"', "{version}", "v2#x", "v2=1", "v2,x", "v2:x", "v2@x"]


@pytest.mark.parametrize("version", GOOD)
def test_good_versions_pass_unchanged(version: str) -> None:
    assert is_valid_version(version)
    assert validate_version(version) == version
    assert valid_or_none(version) == version


@pytest.mark.parametrize("version", BAD)
def test_bad_versions_are_refused_with_the_rule(version: str) -> None:
    assert not is_valid_version(version)
    assert valid_or_none(version) is None
    with pytest.raises(ValueError) as caught:
        validate_version(version)
    message = str(caught.value)
    assert "ASCII letters, digits" in message and "'..'" in message
    assert message.isascii() and message.isprintable()  # no newline, NUL or bidi control


def test_the_message_shows_a_truncated_escaped_repr_of_the_input() -> None:
    hostile = "v2; rm -rf / #" + "A" * 10_000 + "\n\x1b[31m"
    with pytest.raises(ValueError) as caught:
        validate_version(hostile)
    message = str(caught.value)
    assert message.startswith("invalid version 'v2; rm -rf / #AAAA")
    assert f"({len(hostile)} characters)" in message and "\x1b" not in message
    assert len(message) < 400
    assert shown("v2\n\u202e") == "'v2\\n\\u202e'"


def test_none_is_unknown() -> None:
    assert valid_or_none(None) is None


def test_the_pattern_is_the_one_the_shipped_scripts_use() -> None:
    for script in ("configs/deploy/deploy-systemd.sh", "configs/deploy/deploy-container.sh"):
        with open(script) as text:
            assert f"pattern='{PATTERN}'" in text.read(), script
