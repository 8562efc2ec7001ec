"""The image as users run it: built with docker/build.sh, run the hardened way, reached only
through a port published on 127.0.0.1.

Without a Docker engine these tests skip and say why (`.ci/run` installs and starts one).
Every container is removed when its test is done.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from model.data import make_scene

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("QGN_TEST_IMAGE", "qgn-serve:cpu")
HARDENED = [
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "-m",
    "3g",
    "--memory-swap",
    "3g",
]
# The largest valid upload: 39.6 megapixels, under the 40 MP and 25 MiB limits.
BIG_SIZE = (6000, 6600)  # width, height


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def engine_missing() -> str | None:
    """Why no container can run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI (bash .ci/run installs Debian's docker.io)"
    done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"no Docker engine answers (bash .ci/run starts one): {done.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def image() -> str:
    """The CPU image, built once per session by docker/build.sh (layers cached)."""
    reason = engine_missing()
    if reason:
        pytest.skip(reason)
    if os.environ.get("QGN_TEST_IMAGE") is None:
        started = time.monotonic()
        done = subprocess.run(
            [str(REPO / "docker" / "build.sh"), "cpu"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, f"docker/build.sh cpu failed:\n{done.stderr[-4000:]}"
        print(f"\ndocker/build.sh cpu: {time.monotonic() - started:.0f} s")
    return IMAGE


@dataclass
class Container:
    name: str
    url: str
    http: httpx.Client

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name)

    def exec(self, *command: str) -> str:
        return docker("exec", self.name, *command)

    def resident_bytes(self, field: str = "VmRSS") -> int:
        """The server's (PID 1's) resident set, or its high-water mark (VmHWM)."""
        for line in self.exec("cat", "/proc/1/status").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/1/status")

    def wait_for_metric_at_least(self, name: str, value: float, seconds: float = 60) -> None:
        """Until the unlabelled metric `name` reads `value` or more."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.http.get("/metrics").text.splitlines():
                if line.startswith(f"{name} ") and float(line.split()[1]) >= value:
                    return
            time.sleep(0.02)
        raise AssertionError(f"{name} never reached {value}")

    def segment(self, data: bytes, query: str = "", media: str = "image/png") -> httpx.Response:
        return self.http.post(f"/v1/segment?{query}", content=data, headers={"content-type": media})


def wait_healthy(name: str, seconds: float = 180) -> None:
    """Until the image's own HEALTHCHECK says healthy."""
    deadline = time.monotonic() + seconds
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "--format", "{{.State.Health.Status}}", name)
        if status == "healthy":
            return
        if docker("inspect", "--format", "{{.State.Running}}", name) != "true":
            raise AssertionError(f"the container stopped: {docker('logs', name, check=False)}")
        time.sleep(1)
    raise AssertionError(f"not healthy in {seconds} s ({status}): {docker('logs', name)}")


@contextmanager
def run_container(image: str, name: str, *options: str) -> Iterator[Container]:
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, *HARDENED, "-p", "127.0.0.1::8000", *options, image)
    try:
        port = docker("port", name, "8000/tcp").splitlines()[0].rsplit(":", 1)[1]
        wait_healthy(name)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            ready = http.get("/readyz")  # healthy means ready: no waiting beyond the HEALTHCHECK
            assert ready.status_code == 200, (ready.status_code, ready.text)
            yield Container(name, f"http://127.0.0.1:{port}", http)
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def container(image) -> Iterator[Container]:
    """One hardened container for the module's tests."""
    with run_container(image, f"qgn-test-{os.getpid()}") as running:
        yield running


@pytest.fixture(scope="session")
def big_jpeg(tmp_path_factory) -> bytes:
    """A 6000×6600 street scene as a JPEG (39.6 MP), under both upload limits."""
    width, height = BIG_SIZE
    scene, _ = make_scene(3, 660, 600)
    buffer = io.BytesIO()
    Image.fromarray(scene).resize((width, height), Image.BILINEAR).save(buffer, "JPEG", quality=92)
    data = buffer.getvalue()
    assert len(data) < 25 * 2**20
    return data


def street_png() -> bytes:
    return (REPO / "server" / "static" / "examples" / "street-1.png").read_bytes()


def model_info(container: Container) -> dict:
    response = container.http.get("/v1/model")
    assert response.status_code == 200
    return response.json()
