"""The README is the user's manual: every link in it goes somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from tests.readme import README, sections


def test_every_section_link_and_file_link_resolves() -> None:
    text = README.read_text()
    anchors = set(sections())
    missing = sorted({a for a in re.findall(r"\]\(#([^)]+)\)", text) if a not in anchors})
    assert not missing, f"README links to sections it does not have: {missing}"
    root = README.parent
    files = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text)
    assert files
    gone = sorted({f for f in files if not (root / f).exists()})
    assert not gone, f"README links to files that do not exist: {gone}"
    # Pictures too (![alt](path)).
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert Path(root / picture).is_file(), picture
