"""The README as GitHub renders its headings: the anchors (slugs) of its sections and the
text under each, for tests that check links into the user's manual."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
_HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")
_FENCE = re.compile(r"^(```|~~~)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, every character that is
    not a letter, digit, ``_``, ``-`` or space removed, spaces made ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = text.replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def sections(text: str | None = None) -> dict[str, str]:
    """Anchor -> the text under that heading, up to the next heading of any level. A slug
    seen before gets ``-1``, ``-2``... as on GitHub. Headings inside code fences are not
    headings."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    current: list[str] | None = None
    fenced = False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match is None:
            if current is not None:
                current.append(line)
            continue
        anchor = slug(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        if count:
            anchor = f"{anchor}-{count}"
        current = out[anchor] = []
    return {anchor: "\n".join(body) for anchor, body in out.items()}
