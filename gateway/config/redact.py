"""Keeping the config's secrets out of what the gateway shows: admin answers, events, logs.

- A URL (a deploy webhook, a notifier) is shown by its origin only: its userinfo, path,
  query and fragment may carry a token (``https://hooks.slack.com/services/T/B/XXXX``,
  ``?token=``), so ``https://hooks.example.com/...`` is all anyone reads.
- A value that came from the environment (``${VAR}``) is never echoed by a config error:
  the message names the variable instead (``found the value of ${DEPLOY_TOKEN}, not
  shown``), in ``hagw check``, in the 422 of ``POST /reload`` and in the
  ``config.reload_failed`` event alike.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: What stands for a hidden part of a URL.
ELIDED = "..."
_URL = re.compile(r"\bhttps?://[^\s'\"<>(){}]+", re.IGNORECASE)
#: Values from the environment shorter than this are not scrubbed from other messages
#: (a port or a flag is no secret, and replacing "80" everywhere would garble them).
_MIN_SECRET = 4


def shown_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host and port, then ``/...`` if anything
    followed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return ELIDED
    if not parts.scheme or not host:
        return ELIDED
    shown = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}"
    if port is not None:
        shown += f":{port}"
    rest = url.split(parts.netloc, 1)[-1] if parts.netloc else ""
    return shown + ("/" + ELIDED if rest not in ("", "/") else "")


def redact_urls(text: str) -> str:
    """``text`` with every http(s) URL in it shown by its origin only."""
    return _URL.sub(lambda m: shown_url(m.group(0)), text) if "://" in text else text


class EnvSecrets:
    """The values ``${VAR}`` expansion put into one config document, by key path."""

    __slots__ = ("by_path",)

    def __init__(self) -> None:
        #: key path -> (the expanded string, the variables it came from)
        self.by_path: dict[tuple[str | int, ...], tuple[str, tuple[str, ...]]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_path)

    def __repr__(self) -> str:
        return f"<EnvSecrets {len(self.by_path)} values>"

    def record(self, path: tuple[str | int, ...], value: str, names: tuple[str, ...]) -> None:
        self.by_path[path] = (value, names)

    def scrub(self, path: tuple[str | int, ...], message: str) -> str:
        """``message`` about the key at ``path`` with no value from the environment in it."""
        own = self._at(path)
        if own is not None:
            _value, names = own
            # Whatever the check printed of the value (as is, repr'd, transformed), it goes.
            message = message.split(", found ", 1)[0] + f", found the value of {_names(names)}"\
                " (from the environment, not shown)"
        for value, names in self.by_path.values():
            if len(value) >= _MIN_SECRET:
                for form in (repr(value), repr(value)[1:-1], value):
                    message = message.replace(form, _names(names))
        return message

    def _at(self, path: tuple[str | int, ...]) -> tuple[str, tuple[str, ...]] | None:
        """The expanded value at ``path``, or at the nearest key above it."""
        probe = path
        while probe:
            found = self.by_path.get(probe)
            if found is not None:
                return found
            probe = probe[:-1]
        return None


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(f"${{{name}}}" for name in names)

