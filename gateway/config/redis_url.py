"""The Redis URL of ``peers.redis``: read once, checked, and never shown with its password.

``redis://[user:password@]host[:port][/db]``, or ``rediss://`` for TLS. The password is
a secret: every message, ``repr`` and log line that mentions the URL goes through
``redact_url`` (or ``RedisURL.__str__``), and ``scrub`` takes it out of any other text,
such as an error message that quotes the URL back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, unquote, urlsplit

HIDDEN = "***"
DEFAULT_PORT = 6379
_EXAMPLE = "a URL like redis://[:password@]host:6379/0 (or rediss:// for TLS)"
_PASSWORD_QUERY = re.compile(r"(?i)((?:^|[?&;])password=)[^&;#]*")


def _split(text: str) -> SplitResult | None:
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return None
    return parts


def redact_url(text: str) -> str:
    """``text`` with the password of a URL replaced by ``***``: the userinfo (all of it
    when it has no ``:``, since ``redis://secret@host`` is a password by habit) and any
    ``password=`` in the query."""
    text = _PASSWORD_QUERY.sub(lambda m: m.group(1) + HIDDEN, text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    # The last "@" ends the userinfo, even when an unescaped "/", "?" or "#" in the
    # password fools a URL parser: hiding too much is the safe mistake.
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return text
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:{HIDDEN}" if colon and "/" not in user else HIDDEN
    return f"{scheme}://{shown}@{after}"


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A checked Redis address. ``str()`` and ``repr()`` never show the password."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @staticmethod
    def parse(text: str) -> RedisURL:
        """Raises ValueError with a message that quotes the URL without its password."""
        shown = redact_url(text)
        parts = _split(text)
        if parts is None or parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"expected {_EXAMPLE}, found {shown!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"expected no query or fragment in the Redis URL (the timeouts "
                             f"and replicas are peers keys), found {shown!r}")
        if parts.username and not parts.password:
            raise ValueError("expected redis://user:password@host or redis://:password@host "
                             "(a name alone before '@' is taken for a user with no "
                             f"password), found {shown!r}")
        path = parts.path.strip("/")
        if path and not (path.isascii() and path.isdigit() and int(path) < 1 << 16):
            raise ValueError(f"expected a database number as the URL's path (/0), found "
                             f"{shown!r}")
        return RedisURL(host=parts.hostname, port=parts.port or DEFAULT_PORT,
                        db=int(path) if path else 0,
                        username=unquote(parts.username) if parts.username else None,
                        password=unquote(parts.password) if parts.password else None,
                        tls=parts.scheme == "rediss")

    def scrub(self, text: str) -> str:
        """``text`` (an error message, say) with this URL's password taken out."""
        text = redact_url(text)
        if self.password:
            text = text.replace(self.password, HIDDEN)
        return text

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        user = self.username or ""
        auth = f"{user}:{HIDDEN}@" if self.password else (f"{user}@" if user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"

    def __repr__(self) -> str:
        return f"<RedisURL {self}>"
