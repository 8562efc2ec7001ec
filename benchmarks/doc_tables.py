"""The tables of figures in the README and the docs, generated from what is committed.

    python -m benchmarks.doc_tables            # rewrite every generated table
    python -m benchmarks.doc_tables --check    # exit 1 and name the tables that drifted

A table lives between `<!-- generated: NAME -->` and `<!-- end generated -->` in a Markdown
file; NAME says which function below writes it, from the model card (`weights/*.json`) or the
error table (`server.errors.ERRORS`). Nobody copies a figure by hand, and a test
(`tests/docs/test_generated_tables.py`) fails when one drifts from its source.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from model.weights import DEFAULT_WEIGHTS
from server.auto import request_of
from server.errors import ERRORS

REPO = Path(__file__).resolve().parent.parent
FILES = ("README.md", "docs/api.md", "weights/MODEL_CARD.md")
BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)
SIZES = ("512x1024", "1024x2048")


def card(weights: Path = DEFAULT_WEIGHTS) -> dict:
    return json.loads(weights.with_suffix(".json").read_text())


def schemes_table() -> str:
    """Each requestable setting named the same at both sizes, most memory first."""
    tables = card()["evaluation"]["tables"]
    rows = {size: {r["setting"]: r for r in tables[size]["rows"]} for size in SIZES}
    shared = [
        s
        for s in rows[SIZES[0]]
        if s in rows[SIZES[1]] and rows[SIZES[0]][s]["scheme"] in ("all", "pc", "threshold")
    ]
    shared.sort(key=lambda s: (-rows[SIZES[1]][s]["peak_mib"], -rows[SIZES[1]][s]["miou"]))
    lines = [
        "| request | mIoU % 512×1024 | peak MiB | ms | mIoU % 1024×2048 | peak MiB | ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setting in shared:
        cells = [f"`{request_of(rows[SIZES[0]][setting]).query()}`"]
        for size in SIZES:
            row = rows[size][setting]
            cells += [
                f"{100 * row['miou']:.1f}",
                f"{row['peak_mib']:.1f}",
                f"{row['latency_ms_median']:.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def card_table(size: str, previous: bool = False) -> str:
    """The card's evaluation at `size`; with `previous`, the weights before's (the History)."""
    source = card()
    evaluation = source["previous_evaluations"][0] if previous else source["evaluation"]
    table = evaluation["tables"][size]
    lines = [
        f"{size.replace('x', '×')}, {table['images']} scenes:",
        "",
        "| setting | mIoU % | pixel acc % | peak MiB | decoder MiB | ms | active sites per level |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in table["rows"]:
        sites = ", ".join(str(round(a)) for a in row["active_sites"])
        lines.append(
            f"| {row['setting']} | {100 * row['miou']:.2f} | {100 * row['pixel_acc']:.2f} | "
            f"{row['peak_mib']:.1f} | {row['decoder_mib']:.1f} | "
            f"{row['latency_ms_median']:.0f} | {sites} |"
        )
    return "\n".join(lines) + "\n"


def card_targets() -> str:
    targets = card()["evaluation"]["targets"]
    lines = ["| target | |", "|---|---|"]
    lines += [f"| `{name}` | {'met' if met else '**missed**'} |" for name, met in targets.items()]
    return "\n".join(lines) + "\n"


def card_source() -> str:
    evaluation = card()["evaluation"]
    return (
        f"`{evaluation['command']}` — {evaluation['machine']}, {evaluation['date']}, weights "
        f"sha256 `{evaluation['weights_sha256'][:12]}…`, split `{evaluation['split']}`.\n"
    )


def errors_table() -> str:
    lines = ["| code | /v1 | V2 | meaning |", "|---|---:|---:|---|"]
    for code, kind in sorted(ERRORS.items(), key=lambda item: (item[1].v1, item[0])):
        lines.append(f"| `{code}` | {kind.v1} | {kind.v2} | {kind.meaning} |")
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "schemes": schemes_table,
    "card-source": card_source,
    "card-512x1024": lambda: card_table("512x1024"),
    "card-1024x2048": lambda: card_table("1024x2048"),
    "card-targets": card_targets,
    "card-previous-512x1024": lambda: card_table("512x1024", previous=True),
    "card-previous-1024x2048": lambda: card_table("1024x2048", previous=True),
    "errors": errors_table,
}


def regenerate(text: str) -> str:
    """The text with every generated block rewritten from its source."""

    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise KeyError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return BLOCK.sub(fill, text)


def drifted(root: Path = REPO) -> list[str]:
    """The files whose generated tables differ from what their sources give now."""
    return [f for f in FILES if regenerate((root / f).read_text()) != (root / f).read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    args = parser.parse_args(argv)
    stale = drifted()
    if args.check:
        for name in stale:
            print(f"{name}: generated tables drifted; run python -m benchmarks.doc_tables")
        return 1 if stale else 0
    for index, name in enumerate(FILES, 1):
        path = REPO / name
        path.write_text(regenerate(path.read_text()))
        print(f"[{index}/{len(FILES)}] {name}{' (rewritten)' if name in stale else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
