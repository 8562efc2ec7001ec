"""The README a newcomer reads: short, its test command the one CI runs, its links alive, and
every curl example in it working, verbatim, against a real server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from model.weights import DEFAULT_WEIGHTS
from tests.server.test_e2e import RunningServer

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "weights/MODEL_CARD.md"]


def test_short_enough_to_read_in_five_minutes():
    assert len(README.splitlines()) <= 150
    assert len(README.encode()) <= 12 * 1024


def test_the_test_command_is_what_ci_runs():
    ci = (REPO / ".ci/run").read_text().strip().splitlines()[-1]
    assert f"\n{ci}\n" in README


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_exists(page):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    missing = [link for link in local if not (page.parent / link).exists()]
    assert not missing, missing


def curl_examples(text: str) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def test_the_readme_has_curl_examples():
    assert len(curl_examples(README)) >= 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = RunningServer(DEFAULT_WEIGHTS, tmp_path_factory.mktemp("readme") / "server.log")
    yield running
    running.stop()


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_every_curl_example_works_verbatim(server, page, tmp_path):
    """Each `curl` line, with only the port changed, from a folder that sees the repository's
    files as the README's reader does; an answer must be the JSON or the PNG asked for."""
    (tmp_path / "server").symlink_to(REPO / "server")
    for command in curl_examples((REPO / page).read_text()):
        local = command.replace("localhost:8000", f"127.0.0.1:{server.port}")
        out = subprocess.run(local, shell=True, cwd=tmp_path, capture_output=True, timeout=120)
        assert out.returncode == 0, (command, out.stderr)
        if " -o mask.png" in command:
            assert (tmp_path / "mask.png").read_bytes().startswith(b"\x89PNG"), command
            (tmp_path / "mask.png").unlink()
            continue
        body = out.stdout.split(b"\r\n\r\n")[-1]  # after the headers of `curl -D -`
        answer = json.loads(body)
        assert "error" not in answer, (command, answer)
        assert answer["scheme"] in ("all", "pc", "threshold", "budget"), command
        if "format=summary" in command:
            assert len(body.splitlines()) < 40 and answer["classes"], command
