"""Reliability fixtures: a real `qgn serve` process on loopback, its memory, and a summary.

The servers are the ones `tests/server/test_e2e.py` starts (`RunningServer`), with tiny random
weights; one default server is shared by the whole suite, the overload and fault tests start
their own with the settings they need. Each test adds its numbers to `summary`, which is
printed (run with `-s` to see it) and written to `reliability_summary.json` in pytest's
temporary folder when the session ends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.server.conftest import write_tiny_weights
from tests.server.test_e2e import RunningServer

# One torch thread per server: on a small shared box, OpenMP threads that spin while another
# job holds the cores make each request ten times slower, and the suite would not fit its time.
SERVER_ENV = {"OMP_NUM_THREADS": "1"}


def start_server(weights: Path, log: Path, **env: str) -> RunningServer:
    """`qgn serve` on a free loopback port, ready (`/readyz` 200) when this returns."""
    return RunningServer(weights, log, **{**SERVER_ENV, **env})


def memory_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (`VmRSS`) or its peak so far (`VmHWM`), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/{pid}/status has no {field}")
    return int(match.group(1)) * 1024


def metric(text: str, sample: str) -> float:
    """The value of one sample (`name{labels}` as Prometheus writes it) in /metrics text;
    0 when the sample is not there yet."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def healthy(server: RunningServer) -> bool:
    return server.process.poll() is None and server.http.get("/healthz").status_code == 200


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("reliability-weights"))


@pytest.fixture(scope="session")
def server(weights, tmp_path_factory):
    """The shared server, default settings (25 MiB uploads, 40 megapixels, queue of 8)."""
    running = start_server(weights, tmp_path_factory.mktemp("shared-server") / "server.log")
    yield running
    assert running.stop() in (0, -15), running.log.read_text()[-4000:]


@pytest.fixture(scope="session")
def summary(tmp_path_factory):
    numbers: dict[str, dict] = {}
    yield numbers
    path = tmp_path_factory.getbasetemp() / "reliability_summary.json"
    path.write_text(json.dumps(numbers, indent=2) + "\n")
    print("\n==== reliability summary ====")
    for part, values in numbers.items():
        print(f"{part}: " + ", ".join(f"{key}={value}" for key, value in values.items()))
    print(f"(written to {path})")
