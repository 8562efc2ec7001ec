"""The real thing: `qgn serve` as its own process, over a loopback socket."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model.quadtree import leaves_to_dense
from tests.server.conftest import encode, scene_image

QGN = str(Path(sys.executable).with_name("qgn"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, weights: Path, log: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "QGN_WEIGHTS": str(weights), "QGN_DEVICE": "cpu", **env}
        with open(log, "w") as output:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [QGN, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready in 120 s: {log.read_text()}")

    def stop(self) -> int:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest.fixture
def server(tiny_weights, tmp_path):
    running = RunningServer(tiny_weights, tmp_path / "server.log")
    yield running
    running.stop()


def test_real_server_segments_png_and_jpeg_with_every_scheme(server):
    image = scene_image(160, 224, seed=5)
    peaks = {}
    for fmt, media in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        data = encode(image, fmt)
        for query in (
            "scheme=all",
            "scheme=pc",
            "scheme=threshold&threshold=0.2",
            "scheme=budget&budget_mb=3",
        ):
            response = server.http.post(
                f"/v1/segment?{query}", content=data, headers={"content-type": media}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
            leaves = torch.tensor(body["quadtree"]["leaves"], dtype=torch.int64).reshape(-1, 4)
            assert np.array_equal(leaves_to_dense(leaves, 160, 224).numpy(), mask)
            peaks[(fmt, query.split("&")[0])] = body["stats"]["peak_memory_bytes"]
            if query.startswith("scheme=budget"):
                assert body["stats"]["peak_memory_bytes"] <= 3 * 2**20
        assert peaks[(fmt, "scheme=pc")] < peaks[(fmt, "scheme=all")]
    png = server.http.post(
        "/v1/segment?scheme=pc&format=png", files={"image": ("s.png", encode(image))}
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"

    text = server.http.get("/metrics").text
    for metric in (
        "qgn_requests_total",
        "qgn_request_duration_seconds_bucket",
        "qgn_inference_duration_seconds_bucket",
        "qgn_inference_peak_memory_bytes_bucket",
        "qgn_active_site_fraction_bucket",
        "qgn_inflight_requests",
        "qgn_queue_depth",
        "qgn_model_info",
        "qgn_budget_capped",
        "qgn_degraded",
    ):
        assert metric in text, metric
    assert 'qgn_requests_total{api="v1",code="200",scheme="budget"} 2.0' in text
    assert 'qgn_requests_total{api="v1",code="200",scheme="pc"} 3.0' in text
    log = server.log.read_text()
    assert '"path": "/v1/segment"' in log and '"peak_memory_bytes": ' in log


def post_in_thread(server: RunningServer, image: np.ndarray, query: str, results: list):
    """Sends one request from a thread; its response (or error) lands in `results`."""

    def send():
        try:
            results.append(
                server.http.post(
                    f"/v1/segment?{query}",
                    content=encode(image),
                    headers={"content-type": "image/png"},
                )
            )
        except httpx.HTTPError as error:
            results.append(error)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def wait_for_metric(server: RunningServer, line: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and line not in server.http.get("/metrics").text:
        time.sleep(0.02)
    assert line in server.http.get("/metrics").text, f"never saw {line!r}"


def test_sigterm_finishes_what_was_accepted_refuses_the_new_and_exits_0(tiny_weights, tmp_path):
    server = RunningServer(tiny_weights, tmp_path / "server.log", QGN_DRAIN_TIMEOUT_S="120")
    try:
        results: list = []
        running = post_in_thread(server, scene_image(768, 1024, seed=1), "scheme=all", results)
        # Running on the worker, not just arrived: the queued count that follows is then the
        # second request's (a first still decoding would count itself there).
        wait_for_metric(server, "qgn_busy_workers 1.0")
        queued = post_in_thread(server, scene_image(96, 160, seed=2), "scheme=pc", results)
        wait_for_metric(server, "qgn_queue_depth 1.0")
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.http.get("/readyz").status_code == 200:
            time.sleep(0.02)
        ready = server.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
        late = server.http.post(
            "/v1/segment",
            content=encode(scene_image(64, 64)),
            headers={"content-type": "image/png"},
        )
        assert late.status_code == 503 and late.headers["Retry-After"].isdigit()
        running.join(timeout=180)
        queued.join(timeout=60)
        assert [r.status_code for r in results] == [200, 200], results
        assert server.process.wait(timeout=60) == 0
        assert "Finished server process" in server.log.read_text()
    finally:
        server.stop()


def test_what_cannot_finish_in_the_drain_gets_503_before_a_clean_exit(tiny_weights, tmp_path):
    server = RunningServer(tiny_weights, tmp_path / "server.log", QGN_DRAIN_TIMEOUT_S="0.5")
    try:
        results: list = []
        # Long enough that the second request is still queued behind it on a busy machine.
        queued_image = scene_image(96, 160)
        threads = [post_in_thread(server, scene_image(2048, 2048, seed=1), "scheme=all", results)]
        # Running on the worker, not just arrived: the queued count that follows is then the
        # second request's (a first still decoding would count itself there).
        wait_for_metric(server, "qgn_busy_workers 1.0")
        threads.append(post_in_thread(server, queued_image, "scheme=pc", results))
        wait_for_metric(server, "qgn_queue_depth 1.0")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert [getattr(r, "status_code", r) for r in results] == [503, 503], results
        assert all(r.json()["error"]["code"] == "shutting_down" for r in results)
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10, "inside Docker's default grace period"
    finally:
        server.stop()


def test_a_timed_out_request_stops_computing_and_frees_its_place(tiny_weights, tmp_path):
    """504 after QGN_REQUEST_TIMEOUT_S, then the inference stops at its next check: the
    worker is free within 2 s and the next request runs at once."""
    server = RunningServer(
        tiny_weights, tmp_path / "server.log", QGN_REQUEST_TIMEOUT_S="1", QGN_QUEUE_SIZE="1"
    )
    try:
        slow = server.http.post(
            "/v1/segment?scheme=all",
            content=encode(scene_image(1024, 1536, seed=1)),
            headers={"content-type": "image/png"},
        )
        assert slow.status_code == 504
        answered = time.monotonic()
        deadline = answered + 2
        while (
            time.monotonic() < deadline
            and "qgn_busy_workers 0.0" not in server.http.get("/metrics").text
        ):
            time.sleep(0.02)
        assert "qgn_busy_workers 0.0" in server.http.get("/metrics").text
        assert "qgn_admitted_bytes 0.0" in server.http.get("/metrics").text
        assert time.monotonic() - answered < 2
        quick = server.http.post(
            "/v1/segment?scheme=pc",
            content=encode(scene_image(64, 64)),
            headers={"content-type": "image/png"},
        )
        assert quick.status_code == 200, "the queue's one place is free again"
        assert "inference cancelled" in server.log.read_text()
    finally:
        server.stop()
