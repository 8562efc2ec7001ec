"""docs/architecture.md names every module of model/ and server/, and only modules that
exist: it cannot fall behind the code unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"


def modules() -> set[str]:
    found = set()
    for package in ("model", "server"):
        for path in (REPO / package).rglob("*.py"):
            if path.name != "__init__.py":
                found.add(path.relative_to(REPO).as_posix())
    return found


def test_every_module_is_named():
    text = DOC.read_text()
    missing = sorted(m for m in modules() if f"`{m}`" not in text)
    assert not missing, f"docs/architecture.md does not describe: {missing}"


def test_every_module_named_exists():
    named = set(re.findall(r"`((?:model|server)/[\w/]+\.py)`", DOC.read_text()))
    assert named, "no module named at all"
    assert named <= modules(), f"named but not in the tree: {sorted(named - modules())}"


def test_the_picture_is_there():
    assert re.search(r"!\[[^\]]*\]\(architecture\.png\)", DOC.read_text())
    assert (DOC.parent / "architecture.png").stat().st_size > 1000
