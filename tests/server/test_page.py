"""The page at `/`, its static files, `/v1/recent` and the offline `/docs`, in process.

What the page does in a browser is tested in `test_page_browser.py`.
"""

from __future__ import annotations

import re
import threading
from importlib.resources import files

from PIL import Image

from model.qgn import Prediction
from model.schemes import SchemeRun
from server.recent import RECENT_SIZE, RecentRequests
from tests.server.conftest import encode, scene_image

STATIC = files("server") / "static"


def prediction(scheme: str, peak_bytes: int) -> Prediction:
    return Prediction(
        mask=None,
        leaves=None,
        active_sites=[],
        in_image_sites=[],
        decoder_bytes=[],
        peak_bytes=peak_bytes,
        latency_s=0.0125,
        device="cpu",
        scheme=SchemeRun(scheme),
    )


def test_the_ring_keeps_the_last_requests_oldest_first_from_many_threads():
    ring = RecentRequests(size=50)

    def fill(thread: int):
        for i in range(100):
            ring.add(prediction("pc", thread * 1000 + i))

    threads = [threading.Thread(target=fill, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latest = ring.latest(50)
    assert latest.size == 50 and len(latest.requests) == 50
    times = [entry.time for entry in latest.requests]
    assert times == sorted(times)
    per_thread = {}
    for entry in latest.requests:  # each thread's entries stay in the order it added them
        thread, i = divmod(entry.peak_memory_bytes, 1000)
        assert per_thread.get(thread, -1) < i
        per_thread[thread] = i
    assert ring.latest(3).requests == latest.requests[-3:]
    assert latest.requests[0].latency_ms == 12.5


def test_segment_requests_fill_v1_recent_bounded_by_its_limit(client):
    image = encode(scene_image(64, 96))
    for scheme in ("all", "pc", "all", "pc"):
        response = client.post(f"/v1/segment?scheme={scheme}", files={"image": ("a.png", image)})
        assert response.status_code == 200
    body = client.get("/v1/recent").json()
    assert body["size"] == RECENT_SIZE
    entries = body["requests"]
    assert [e["scheme"] for e in entries[-4:]] == ["all", "pc", "all", "pc"]
    assert entries[-1]["peak_memory_bytes"] == response.json()["stats"]["peak_memory_bytes"]
    assert entries[-1]["latency_ms"] > 0 and entries[-1]["time"] > 1.7e9
    assert client.get("/v1/recent?limit=2").json()["requests"] == entries[-2:]
    for bad in (0, RECENT_SIZE + 1, "x"):
        refused = client.get(f"/v1/recent?limit={bad}")
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_parameter"
    failed = client.post("/v1/segment", content=b"text", headers={"content-type": "image/png"})
    assert failed.status_code == 400
    assert client.get("/v1/recent").json()["requests"] == entries  # errors cost no memory


def test_the_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href|data-src)="(static/[^"]+)"', page.text)
    assert len(assets) >= 5
    for asset in assets:
        assert client.get(f"/{asset}").status_code == 200, asset
    scripts = [f"static/js/{p.name}" for p in (STATIC / "js").iterdir()]
    imported = set()
    for script in scripts:
        text = client.get(f"/{script}").text
        imported |= {f"static/js/{name}" for name in re.findall(r'from "\./([\w.]+)"', text)}
    assert imported <= set(scripts)
    everything = page.text + "".join(client.get(f"/{s}").text for s in scripts)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", everything), "no outside URL"
    assert client.get("/static/../app.py").status_code == 404


def test_the_examples_are_bundled_scenes(client):
    for name in ("street-1.png", "street-2.png", "street-3.png"):
        with (STATIC / "examples" / name).open("rb") as handle:
            assert Image.open(handle).size == (512, 256)
        assert client.get(f"/static/examples/{name}").headers["content-type"] == "image/png"


def test_docs_use_local_assets_and_redoc_is_gone(client):
    docs = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404
    assert "/v1/recent" in client.get("/openapi.json").json()["paths"]
    assert "/" not in client.get("/openapi.json").json()["paths"]
