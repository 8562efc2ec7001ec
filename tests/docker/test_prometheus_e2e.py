"""A real `qgn serve` process scraped by a real Prometheus, queried like the dashboard does.

What it shows: the metrics the server exports are what docker/prometheus.yml scrapes, the
memory per request that Prometheus computes is larger under `all` than under `pc`, requests to
`/v1` and to the Open Inference Protocol's `/v2` are counted apart (`api`), and every PromQL
expression of the Grafana dashboard evaluates on real data to a finite number.
Everything runs on loopback; every wait is bounded; both processes are stopped at the end.
Needs the `prometheus` binary (Debian: `apt-get install -y prometheus`); skipped without it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model.qgn import qgn_tiny
from model.weights import save_weights
from tests.docker.test_deploy_config import dashboard_exprs
from tests.server.conftest import TINY_TABLES

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "qgn-memory.json"
CLASSES = [f"class{i}" for i in range(12)]
PALETTE = [[(37 * i) % 256, (91 * i) % 256, (173 * i) % 256] for i in range(12)]
SCHEMES = ("all", "pc", "auto")
REQUESTS_PER_SCHEME = 4  # after one first request per scheme
V2_REQUESTS = 2  # V2 infer under pc, after the /v1 ones


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for(what: str, check: Callable[[], bool], seconds: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in logs)
    raise AssertionError(f"{what}: not within {seconds:.0f} s\n{tails}")


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def v2_request(image: bytes, scheme: str) -> bytes:
    """A V2 infer body in pure JSON: the encoded image in base64."""
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(image).decode("ascii")],
    }
    return json.dumps({"parameters": {"scheme": scheme}, "inputs": [tensor]}).encode()


def png(height: int, width: int, seed: int) -> bytes:
    """Large uniform regions: two halves and a rectangle, in colours picked by the seed."""
    colours = np.random.default_rng(seed).integers(0, 256, (3, 3), dtype=np.uint8)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = colours[0]
    image[:, width // 2 :] = colours[1]
    image[height // 4 : height // 2, width // 8 : width // 3] = colours[2]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Prometheus:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` gives now; fails on a PromQL error."""
        status, body = http(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert status == 200, f"{expr!r}: HTTP {status} {body[:500]!r}"
        answer = json.loads(body)
        assert answer["status"] == "success", f"{expr!r}: {answer}"
        assert answer["data"]["resultType"] == "vector", f"{expr!r}: {answer['data']}"
        return answer["data"]["result"]

    def values_by(self, expr: str, label: str) -> dict[str, float]:
        return {item["metric"].get(label, ""): float(item["value"][1]) for item in self.query(expr)}


def scrape_config(server_port: int) -> dict:
    """docker/prometheus.yml with the `qgn` job pointed at the test server, scraped each 1 s."""
    config = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "qgn"]
    job["scrape_interval"] = "1s"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{server_port}"]}]
    return config


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> Iterator[Prometheus]:
    """A server and a Prometheus scraping it, after `all` and `pc` requests were scraped."""
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        pytest.skip("no `prometheus` binary on PATH (Debian: apt-get install -y prometheus)")
    qgn = Path(sys.executable).parent / "qgn"
    assert qgn.is_file(), f"no {qgn}: install the project (pip install -e '.[cpu,dev]')"
    tmp = tmp_path_factory.mktemp("prometheus_e2e")

    torch.manual_seed(0)
    weights = tmp / "w.safetensors"
    card = {"name": "qgn-test", "version": "0", "classes": CLASSES, "palette": PALETTE}
    card["evaluation"] = {"tables": TINY_TABLES}  # what scheme=auto ranks the settings by
    save_weights(qgn_tiny(len(CLASSES)).eval(), weights, card)

    server_port, prometheus_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGN_")}
    env.update(QGN_WEIGHTS=str(weights), QGN_DEVICE="cpu", QGN_QUEUE_SIZE="16")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(server_port)))
    server_log, prometheus_log = tmp / "server.log", tmp / "prometheus.log"
    logs = [server_log, prometheus_log]
    processes: list[subprocess.Popen] = []
    try:
        processes.append(
            start(
                [str(qgn), "serve", "--host", "127.0.0.1", "--port", str(server_port)],
                server_log,
                env,
            )
        )
        processes.append(
            start(
                [
                    prometheus_binary,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                prometheus_log,
            )
        )
        server = f"http://127.0.0.1:{server_port}"
        prometheus = Prometheus(prometheus_port)

        def alive() -> None:
            for process, log in zip(processes, logs, strict=True):
                assert process.poll() is None, f"{log.name}: exited\n{log.read_text()[-3000:]}"

        def ready(url: str) -> Callable[[], bool]:
            def check() -> bool:
                alive()
                return http(url)[0] == 200

            return check

        wait_for("server /readyz 200", ready(f"{server}/readyz"), 120, logs)
        wait_for("prometheus /-/ready 200", ready(f"{prometheus.url}/-/ready"), 60, logs)

        def segment(scheme: str, seed: int) -> None:
            url = f"{server}/v1/segment?scheme={scheme}"
            status, body = http(url, png(128, 256, seed), "image/png")
            assert status == 200, f"{scheme}: HTTP {status} {body[:300]!r}"

        def scraped_total(scheme: str) -> float:
            found = prometheus.values_by(
                f'sum by (scheme) (qgn_requests_total{{scheme="{scheme}"}})', "scheme"
            )
            return found.get(scheme, 0.0)

        def seen(counts: dict[str, int]) -> Callable[[], bool]:
            return lambda: all(scraped_total(s) >= n for s, n in counts.items())

        # A first request per scheme creates the labelled series; Prometheus must hold them
        # before the rest, or rate() over [1m] would see no increase.
        # auto (with room, it runs `all`) feeds the dashboard's panel of auto's choices.
        for scheme in SCHEMES:
            segment(scheme, seed=0)
        wait_for("first requests scraped", seen(dict.fromkeys(SCHEMES, 1)), 60, logs)
        for seed in range(1, REQUESTS_PER_SCHEME + 1):
            for scheme in SCHEMES:
                segment(scheme, seed)
        status, _ = http(f"{server}/v1/segment?scheme=pc", b"not a png", "image/png")
        assert status == 400
        for seed in range(V2_REQUESTS):
            url = f"{server}/v2/models/qgn-test/infer"
            status, body = http(url, v2_request(png(128, 256, seed), "pc"), "application/json")
            assert status == 200, f"V2: HTTP {status} {body[:300]!r}"
        total = REQUESTS_PER_SCHEME + 1
        expected = {"all": total, "auto": total, "pc": total + 1 + V2_REQUESTS}
        wait_for("all requests scraped", seen(expected), 60, logs)
        yield prometheus
    finally:
        for process in reversed(processes):
            stop(process)


def test_all_takes_more_memory_per_request_than_pc(scraped):
    per_request = scraped.values_by(
        "sum by (scheme) (qgn_inference_peak_memory_bytes_sum)"
        " / sum by (scheme) (qgn_inference_peak_memory_bytes_count)",
        "scheme",
    )
    assert set(per_request) == {"all", "pc"}
    assert per_request["all"] > per_request["pc"] > 0, per_request
    # The dashboard's mean (a rate over [1m]) tells the same.
    mean = scraped.values_by(
        "sum by (scheme) (rate(qgn_inference_peak_memory_bytes_sum[1m]))"
        " / sum by (scheme) (rate(qgn_inference_peak_memory_bytes_count[1m]))",
        "scheme",
    )
    assert mean["all"] > mean["pc"] > 0, mean


def test_requests_are_counted_by_api_and_code(scraped):
    codes = scraped.values_by("sum by (code) (qgn_requests_total)", "code")
    v1 = len(SCHEMES) * (REQUESTS_PER_SCHEME + 1)
    assert codes == {"200": v1 + V2_REQUESTS, "400": 1}
    ok = scraped.values_by('sum by (api) (qgn_requests_total{code="200"})', "api")
    assert ok == {"v1": v1, "v2": V2_REQUESTS}
    peaks = scraped.values_by("sum by (api) (qgn_inference_peak_memory_bytes_count)", "api")
    assert peaks == ok


def test_every_dashboard_expr_evaluates_to_data(scraped):
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 10
    for expr in exprs:
        result = scraped.query(expr)
        assert result, f"no data: {expr}"
        values = [float(item["value"][1]) for item in result]
        assert any(math.isfinite(v) for v in values), f"only NaN/Inf: {expr} -> {result}"


def test_admission_metrics_count_every_inference(scraped):
    """One worker, the default device budget, nothing admitted once idle, and one prediction
    error per inference (the V2 ones included)."""
    assert scraped.values_by("sum(qgn_workers)", "") == {"": 1.0}
    assert scraped.values_by("sum(qgn_busy_workers) + sum(qgn_admitted_bytes)", "") == {"": 0.0}
    (budget,) = scraped.values_by("sum(qgn_device_memory_budget_bytes)", "").values()
    assert budget > 0
    counts = scraped.values_by("sum by (scheme) (qgn_peak_prediction_ratio_count)", "scheme")
    total = REQUESTS_PER_SCHEME + 1
    assert counts == {"all": 2 * total, "pc": total + V2_REQUESTS}  # auto ran `all`: room
    # `all`'s prediction is the cost model's bound: never below what was measured.
    worst = scraped.values_by(
        "histogram_quantile(1, sum by (scheme, le)"
        ' (qgn_peak_prediction_ratio_bucket{scheme="all"}))',
        "scheme",
    )
    assert 0 < worst["all"] <= 1, worst
