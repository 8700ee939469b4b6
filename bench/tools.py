"""The system tools the suite drives, and why one is unavailable."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

#: Debian package names; ``.ci/run`` installs them.
SYSTEM_TOOLS = ("nginx", "haproxy", "wrk", "hey")


class Tools:
    """Where each system tool is, or None. Looked up once per run."""

    def __init__(self, overrides: dict[str, str | None] | None = None) -> None:
        self.paths: dict[str, str | None] = {name: _which(name) for name in SYSTEM_TOOLS}
        self.paths.update(overrides or {})

    def path(self, name: str) -> str | None:
        return self.paths.get(name)

    def missing(self, *names: str) -> str | None:
        """``None`` if every tool is there, else the reason to print as "skipped: ..."."""
        absent = [n for n in names if self.paths.get(n) is None]
        if not absent:
            return None
        return f"{', '.join(absent)} not installed (apt-get install {' '.join(absent)})"


def _which(name: str) -> str | None:
    # nginx and haproxy live in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def hagw_command() -> list[str]:
    """How to start ``hagw``: the script next to this interpreter, else ``python -m gateway``."""
    script = Path(sys.executable).with_name("hagw")
    if script.exists():
        return [str(script)]
    found = shutil.which("hagw")
    return [found] if found else [sys.executable, "-m", "gateway"]
