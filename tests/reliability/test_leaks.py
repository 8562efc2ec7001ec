"""Leaks: a thousand mixed requests must not make the server process grow.

Small images (32..128 px) keep it fast; the mix covers every scheme, JSON and PNG answers, raw
and multipart uploads, PNG/JPEG/WebP, and some requests that fail (400, 422), since error paths
leak too. The resident memory after all of them must stay within 10 % of what it was after the
first hundred, when the allocator and the caches have settled.
"""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from model import allocation_window, memory
from model.memory import CpuAllocationTracker
from model.scheme_request import MIB
from model.schemes import make_scheme
from model.weights import load_weights
from server.settings import Settings
from tests.reliability.conftest import healthy, memory_bytes, start_server
from tests.server.conftest import encode, scene_image, started

pytestmark = pytest.mark.reliability

REQUESTS = 1000
SETTLED_AFTER = 100
GROWTH_LIMIT = 0.10
MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def mixed_requests(count: int, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """(url, httpx keyword arguments) for `count` requests, the same every run."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = (int(n) for n in rng.integers(32, 129, 2))
        fmt = ("PNG", "JPEG", "WEBP")[index % 3]
        data = encode(scene_image(height, width, seed=index), fmt)
        query = (
            "scheme=all",
            "scheme=pc",
            f"scheme=threshold&threshold={rng.uniform(0, 1):.3f}",
            f"scheme=budget&budget_mb={rng.uniform(0.05, 8):.2f}",  # some below the minimum: 422
            "scheme=threshold&threshold=2",  # 422
        )[index % 5]
        query += "&format=png" if index % 4 == 0 else ""
        if index % 11 == 0:
            data = rng.bytes(int(rng.integers(1, 4096)))  # 400
        if index % 2:
            yield f"/v1/segment?{query}", {"files": {"image": (f"i.{fmt.lower()}", data)}}
        else:
            yield f"/v1/segment?{query}", {"content": data, "headers": {"content-type": MEDIA[fmt]}}


def test_a_thousand_requests_leave_the_resident_memory_where_it_settled(weights, tmp_path, summary):
    server = start_server(weights, tmp_path / "server.log")
    try:
        pid, statuses, trace = server.process.pid, Counter(), []
        settled = None
        for done, (url, request) in enumerate(mixed_requests(REQUESTS), start=1):
            statuses[server.http.post(url, **request).status_code] += 1
            if done % 100 == 0:
                trace.append(round(memory_bytes(pid) / MIB, 1))
            if done == SETTLED_AFTER:
                settled = memory_bytes(pid)
        final = memory_bytes(pid)
        growth = final / settled - 1
        print(
            f"\nleaks: {REQUESTS} requests {dict(statuses)}; RSS after {SETTLED_AFTER}: "
            f"{settled / MIB:.1f} MiB, after {REQUESTS}: {final / MIB:.1f} MiB "
            f"({growth:+.1%}); every 100: {trace}"
        )
        summary["leaks"] = {
            "requests": REQUESTS,
            f"rss_after_{SETTLED_AFTER}_mib": round(settled / MIB, 1),
            f"rss_after_{REQUESTS}_mib": round(final / MIB, 1),
            "growth": f"{growth:+.1%}",
        }
        assert set(statuses) <= {200, 400, 422}, statuses
        assert statuses[200] > REQUESTS // 2 and statuses[400] and statuses[422]
        assert growth < GROWTH_LIMIT
        assert healthy(server)
    finally:
        server.stop()


def live_trackers() -> int:
    """Per-op trackers and allocation windows still alive (open or never freed)."""
    gc.collect()
    trackers = sum(type(thing) is CpuAllocationTracker for thing in gc.get_objects())
    return trackers + allocation_window.windows_alive()


@pytest.mark.parametrize("counting", ["allocation window", "dispatch tracker"])
def test_no_cpu_memory_tracker_outlives_its_inference(weights, counting, monkeypatch):
    """The test above allows 10 % after 1000 requests; a tracker kept alive by a finaliser on
    a view of the weights (fixed in model/memory.py) was 0.8 % there, but never stopped.
    Counting the trackers (and the windows) catches it exactly, with no allocator noise."""
    if counting == "dispatch tracker":
        monkeypatch.setattr(memory, "windows_count", lambda device_type: False)
    assert memory.measurement("cpu") == counting
    model, _ = load_weights(weights)
    image = scene_image(64, 64)
    for name in ("all", "pc"):
        model.predict(image, make_scheme(name))
    trackers, finalizers = live_trackers(), len(weakref.finalize._registry)
    for name in ("all", "pc") * 5:
        model.predict(image, make_scheme(name))
    assert live_trackers() == trackers
    assert len(weakref.finalize._registry) == finalizers


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device (CI has none): GPU memory is checked only where there is one",
)
def test_gpu_memory_returns_to_its_level(weights):  # pragma: no cover - needs a GPU
    with started(Settings(weights=weights, device="cuda")) as client:
        requests = list(mixed_requests(500, seed=1))
        for url, request in requests[:SETTLED_AFTER]:
            client.post(url, **request)
        torch.cuda.synchronize()
        settled = torch.cuda.memory_allocated()
        for url, request in requests[SETTLED_AFTER:]:
            assert client.post(url, **request).status_code < 500
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= settled + MIB
