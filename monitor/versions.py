"""What a deploy version may be: one conservative rule for every path a version travels.

A version reaches deploy actions as an argv word; the shipped scripts put it into a
remote shell command, a file system path and an image tag. So it is held to what is
safe in all of them: 1 to 128 ASCII letters, digits and ``. _ + -``, starting with a
letter or a digit (never an option such as ``--help``), with no ``..`` (never a path
out of a releases directory). The same rule holds for a version an operator asks for
(admin API, CLI), for one a node reports in its health answer, and for every
placeholder an action fills in; ``configs/deploy/*.sh`` check the same pattern.

The deploy runner and the health checker both use it, so it lives beside them rather
than inside either (``monitor.deploy`` and ``monitor.health`` never import each other).
"""

from __future__ import annotations

import re

#: The pattern, as the shipped shell scripts and the OpenAPI document spell it too.
PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
MAX_LENGTH = 128
#: What a valid version looks like, for error messages.
RULE = ("a version is 1 to 128 ASCII letters, digits, '.', '_', '+' or '-', starts with "
        "a letter or a digit, and has no '..' (e.g. v2, 1.2.3, 2026.12.01+build.7)")

_VERSION = re.compile(PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)
#: Characters of a rejected input shown in a message, at most.
_SHOWN = 40


def shown(text: str) -> str:
    """A safe, truncated rendering of untrusted text for messages and logs: ASCII only,
    control characters escaped, at most ``_SHOWN`` characters of the input."""
    if len(text) <= _SHOWN:
        return ascii(text)
    return f"{text[:_SHOWN]!a}... ({len(text)} characters)"


def is_valid_version(text: str) -> bool:
    # fullmatch: ``$`` alone would accept a trailing newline.
    return _VERSION.fullmatch(text) is not None and ".." not in text


def validate_version(text: str) -> str:
    """``text`` if it is a valid version; otherwise ValueError saying what is allowed."""
    if is_valid_version(text):
        return text
    raise ValueError(f"invalid version {shown(text)}: {RULE}")


def valid_or_none(text: str | None) -> str | None:
    """``text`` if it is a valid version, else None (unknown)."""
    return text if text is not None and is_valid_version(text) else None
