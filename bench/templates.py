"""Config templates for nginx and haproxy, filled with this run's ports and paths.

Placeholders are ``{{name}}`` so that nginx's own ``$variables`` and haproxy's
``%[...]`` stay untouched; a placeholder left unfilled is an error, not a broken config.
"""

from __future__ import annotations

import re
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def render(template: str, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(fill, template)


def render_file(template: Path, values: dict[str, str], out: Path) -> Path:
    out.write_text(render(template.read_text(), values))
    return out
