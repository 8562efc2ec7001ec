"""Overload on loopback: 16 clients against a queue of 2, for a bounded time.

Every request gets an answer; the only refusals are 503s with an integer `Retry-After`; the
server's own counters agree with what the clients saw; `/healthz` stays quick while the queue
is full; and SIGTERM with a full queue still answers every request before the process exits.
The latency bounds are generous on purpose (2 shared cores): the counts carry the weight.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from tests.reliability.conftest import healthy, metric, start_server
from tests.server.conftest import encode, scene_image

pytestmark = pytest.mark.reliability

CLIENTS = 16
QUEUE_SIZE = 2
LOAD_SECONDS = 60.0
PAUSE_AFTER_503_S = 0.025  # impatient clients: far sooner than Retry-After says
HEALTH_EVERY_S = 0.1
HEALTH_P95_LIMIT_S = 1.0
PNG = {"content-type": "image/png"}


@dataclass
class Outcomes:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    accepted_s: list[float] = field(default_factory=list)
    bad_refusals: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    sent: int = 0

    def record(self, response: httpx.Response | None, seconds: float, error: str = "") -> None:
        with self.lock:
            self.sent += 1
            if response is None:
                self.lost.append(error)
                return
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                self.accepted_s.append(seconds)
            elif response.status_code == 503:
                retry_after = response.headers.get("retry-after", "")
                code = response.json()["error"]["code"]
                if not re.fullmatch(r"[1-9]\d*", retry_after) or code != "queue_full":
                    self.bad_refusals.append(f"Retry-After {retry_after!r}, code {code}")


def post(client: httpx.Client, body: bytes, query: str, outcomes: Outcomes) -> int | None:
    start = time.perf_counter()
    try:
        response = client.post(f"/v1/segment?{query}", content=body, headers=PNG)
    except httpx.HTTPError as error:
        outcomes.record(None, time.perf_counter() - start, repr(error))
        return None
    outcomes.record(response, time.perf_counter() - start)
    return response.status_code


def client_loop(url: str, index: int, stop_at: float, outcomes: Outcomes) -> None:
    body = encode(scene_image(256, 256, seed=index))
    query = "scheme=all" if index % 2 else "scheme=pc"
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.monotonic() < stop_at:
            if post(client, body, query, outcomes) == 503:
                time.sleep(PAUSE_AFTER_503_S)


def health_loop(url: str, stop_at: float, seconds: list[float], statuses: Counter) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            statuses[client.get("/healthz").status_code] += 1
            seconds.append(time.perf_counter() - start)
            time.sleep(HEALTH_EVERY_S)


def test_a_full_queue_refuses_cleanly_and_health_stays_quick(weights, tmp_path, summary):
    server = start_server(weights, tmp_path / "server.log", QGN_QUEUE_SIZE=str(QUEUE_SIZE))
    try:
        outcomes, health_s, health_statuses = Outcomes(), [], Counter()
        stop_at = time.monotonic() + LOAD_SECONDS
        threads = [
            threading.Thread(target=client_loop, args=(server.url, i, stop_at, outcomes))
            for i in range(CLIENTS)
        ]
        threads.append(
            threading.Thread(
                target=health_loop, args=(server.url, stop_at, health_s, health_statuses)
            )
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=LOAD_SECONDS + 180)
        assert not any(thread.is_alive() for thread in threads), "a client never got an answer"

        answered = sum(outcomes.statuses.values())
        p50, p99 = np.percentile(outcomes.accepted_s, [50, 99])
        health_p95 = float(np.percentile(health_s, 95))
        print(
            f"\noverload: {outcomes.sent} requests from {CLIENTS} clients in {LOAD_SECONDS:.0f} s, "
            f"queue {QUEUE_SIZE}: {dict(outcomes.statuses)}, lost {len(outcomes.lost)}; "
            f"accepted p50 {p50:.3f} s, p99 {p99:.3f} s; /healthz p95 {health_p95 * 1000:.1f} ms "
            f"max {max(health_s) * 1000:.1f} ms over {len(health_s)} probes"
        )
        summary["overload"] = {
            "requests": outcomes.sent,
            "ok_200": outcomes.statuses[200],
            "refused_503": outcomes.statuses[503],
            "lost": len(outcomes.lost),
            "accepted_p99_s": round(float(p99), 3),
            "healthz_p95_ms": round(health_p95 * 1000, 1),
        }
        assert not outcomes.lost, outcomes.lost[:5]
        assert answered == outcomes.sent
        assert set(outcomes.statuses) <= {200, 503}, outcomes.statuses
        assert not outcomes.bad_refusals, outcomes.bad_refusals[:5]
        assert outcomes.statuses[200] >= CLIENTS and outcomes.statuses[503] >= CLIENTS
        assert set(health_statuses) == {200}
        assert health_p95 < HEALTH_P95_LIMIT_S

        text = server.http.get("/metrics").text  # the server counted what the clients saw
        counted = {
            code: sum(
                metric(text, f'qgn_requests_total{{api="v1",code="{code}",scheme="{scheme}"}}')
                for scheme in ("all", "pc")
            )
            for code in (200, 503)
        }
        assert counted == {200: outcomes.statuses[200], 503: outcomes.statuses[503]}
        assert metric(text, "qgn_queue_depth") == 0
        assert metric(text, "qgn_inflight_requests") == 0
        assert healthy(server)
        drain_on_sigterm(server)
    finally:
        server.stop()


def drain_on_sigterm(server) -> None:
    """SIGTERM with the queue full (one running, one waiting): both still get their 200,
    the four refused got their 503, then the process exits."""
    outcomes = Outcomes()
    body = encode(scene_image(512, 512, seed=9))

    def one_request():
        with httpx.Client(base_url=server.url, timeout=120) as client:
            post(client, body, "scheme=all", outcomes)

    threads = [threading.Thread(target=one_request) for _ in range(QUEUE_SIZE + 4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and outcomes.statuses[503] < 4:
        time.sleep(0.005)
    assert outcomes.statuses[503] == 4 and outcomes.statuses[200] == 0, outcomes.statuses
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=120)
    assert outcomes.sent == QUEUE_SIZE + 4 and not outcomes.lost, outcomes.lost
    assert outcomes.statuses == {200: QUEUE_SIZE, 503: 4}
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
