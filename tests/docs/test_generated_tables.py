"""The tables of figures in the README and the docs are what their sources give: a figure
copied by hand, or a source changed without regenerating, fails here."""

from __future__ import annotations

import pytest

from benchmarks import doc_tables
from server.errors import ERRORS


def test_no_generated_table_drifted():
    stale = doc_tables.drifted()
    assert not stale, f"{stale}: run python -m benchmarks.doc_tables"


def test_every_file_holds_its_generated_tables():
    names = {
        match.group(2)
        for name in doc_tables.FILES
        for match in doc_tables.BLOCK.finditer((doc_tables.REPO / name).read_text())
    }
    assert names == set(doc_tables.TABLES)


def test_a_hand_edited_figure_is_put_back():
    readme = (doc_tables.REPO / "README.md").read_text()
    pc = next(line for line in readme.splitlines() if line.startswith("| `scheme=pc` |"))
    cells = pc.split("|")
    cells[2] = " 99.9 "  # pc's mIoU at 512×1024, whatever the card says
    edited = readme.replace(pc, "|".join(cells))
    assert edited != readme
    assert doc_tables.regenerate(edited) == readme


def test_the_scheme_table_is_the_cards():
    tables = doc_tables.card()["evaluation"]["tables"]
    pc = next(r for r in tables["1024x2048"]["rows"] if r["setting"] == "pc")
    row = next(line for line in doc_tables.schemes_table().splitlines() if "`scheme=pc`" in line)
    assert f"| {100 * pc['miou']:.1f} | {pc['peak_mib']:.1f} |" in row


def test_the_error_table_has_every_code():
    table = doc_tables.errors_table()
    assert all(f"| `{code}` | {kind.v1} | {kind.v2} |" in table for code, kind in ERRORS.items())


def test_an_unknown_table_name_is_refused():
    with pytest.raises(KeyError, match="unknown generated table"):
        doc_tables.regenerate("<!-- generated: nope -->\n<!-- end generated -->")
