"""Every endpoint, parameter and error code of the HTTP contract, through the ASGI app."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.quadtree import leaf_coverage, leaves_to_dense
from server.schemas import SegmentResponse, SegmentSummary
from server.settings import Settings
from tests.server.conftest import (
    CLASSES,
    PALETTE,
    TINY_TABLES,
    encode,
    png_header_only,
    scene_image,
    started,
)

PNG = {"content-type": "image/png"}


def post(client, body: bytes, query: str = "", headers=PNG):
    return client.post(f"/v1/segment{query}", content=body, headers=headers)


def decoded_mask(response_json) -> np.ndarray:
    png = Image.open(io.BytesIO(base64.b64decode(response_json["mask"]["data"])))
    assert png.mode == "P"
    palette = png.getpalette()[: 3 * len(PALETTE)]
    assert palette == [c for colour in PALETTE for c in colour]
    return np.asarray(png)


def assert_leaves_paint_mask(body: dict) -> None:
    mask = decoded_mask(body)
    height, width = mask.shape
    assert (body["height"], body["width"]) == (height, width)
    leaves = np.asarray(body["quadtree"]["leaves"], dtype=np.int64).reshape(-1, 4)
    import torch

    leaves_t = torch.from_numpy(leaves)
    assert leaf_coverage(leaves_t, height, width).eq(1).all()
    assert np.array_equal(leaves_to_dense(leaves_t, height, width).numpy(), mask)


def error_of(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    "query",
    [
        "?scheme=all",
        "?scheme=pc",
        "",
        "?scheme=threshold&threshold=0.3",
        "?scheme=budget&budget_mb=4",
    ],
)
def test_each_scheme_returns_a_mask_its_leaves_paint(client, query):
    response = post(client, encode(scene_image()), query)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classes"] == CLASSES
    assert body["quadtree"]["levels"] == 6 and body["quadtree"]["block_sizes"] == [
        32,
        16,
        8,
        4,
        2,
        1,
    ]
    assert body["scheme"] == (
        query.split("scheme=")[1].split("&")[0] if "scheme" in query else "pc"
    )
    stats = body["stats"]
    assert stats["device"] == "cpu" and stats["peak_memory_bytes"] > 0
    assert len(stats["active_sites"]) == 6 and stats["active_sites"][0] == 3 * 5
    assert all(0 <= f <= 1 for f in stats["active_fraction"])
    assert_leaves_paint_mask(body)


def test_schemes_trade_memory_and_the_budget_holds(client):
    body = encode(scene_image(192, 256))
    runs = {q: post(client, body, q).json() for q in ("?scheme=all", "?scheme=pc")}
    peak_all = runs["?scheme=all"]["stats"]["peak_memory_bytes"]
    peak_pc = runs["?scheme=pc"]["stats"]["peak_memory_bytes"]
    assert peak_pc < peak_all
    for budget_mb in (peak_pc / 2**20 * 1.05, (peak_pc + peak_all) / 2 / 2**20):
        run = post(client, body, f"?scheme=budget&budget_mb={budget_mb}").json()
        assert run["stats"]["peak_memory_bytes"] <= budget_mb * 2**20
        assert run["budget_mb"] == pytest.approx(budget_mb)


def test_json_and_png_agree_and_repeat_exactly(client):
    body = encode(scene_image(seed=3))
    first, second = post(client, body, "?scheme=pc").json(), post(client, body, "?scheme=pc").json()
    png = post(client, body, "?scheme=pc&format=png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-qgn-scheme"] == "pc"
    assert float(png.headers["x-qgn-latency-ms"]) > 0
    peak = int(png.headers["x-qgn-peak-memory-bytes"])
    assert peak == first["stats"]["peak_memory_bytes"] == second["stats"]["peak_memory_bytes"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), decoded_mask(first))
    assert first["quadtree"]["leaves"] == second["quadtree"]["leaves"]


@pytest.mark.parametrize(
    "fmt,media",
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
    ],
)
def test_formats_raw_and_multipart(client, fmt, media):
    data = encode(scene_image(64, 96), fmt)
    raw = post(client, data, "", {"content-type": media})
    assert raw.status_code == 200, raw.text
    form = client.post("/v1/segment", files={"image": (f"x.{fmt.lower()}", data, media)})
    assert form.status_code == 200, form.text
    assert raw.json()["quadtree"] == form.json()["quadtree"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGB", (1, 1), (9, 9, 9)),
        lambda: Image.new("RGB", (4096, 1), (9, 9, 9)),
        lambda: Image.new("RGB", (1, 4096), (9, 9, 9)),
        lambda: Image.fromarray(scene_image()).convert("P"),
        lambda: Image.fromarray(scene_image()).convert("L"),
        lambda: Image.fromarray(
            (np.arange(96 * 160).reshape(96, 160) * 7 % 65536).astype(np.uint16)
        ),
        lambda: Image.fromarray(scene_image()).convert("RGBA"),
        lambda: Image.fromarray(scene_image()).convert("LA"),
    ],
    ids=["1x1", "4096x1", "1x4096", "palette", "grey", "16-bit", "rgba", "grey-alpha"],
)
def test_odd_sizes_and_modes_are_converted(client, make):
    image = make()
    response = post(client, encode(image))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == image.size
    assert_leaves_paint_mask(body)


def test_cmyk_jpeg_and_exif_rotation(client):
    cmyk = Image.fromarray(scene_image(64, 96)).convert("CMYK")
    assert (
        post(client, encode(cmyk, "JPEG"), headers={"content-type": "image/jpeg"}).status_code
        == 200
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display: 96×64 stored, 64×96 shown
    data = encode(Image.fromarray(scene_image(64, 96)), "JPEG", exif=exif)
    body = post(client, data, headers={"content-type": "image/jpeg"}).json()
    assert (body["width"], body["height"]) == (64, 96)


def test_animated_gif_gives_its_first_frame(client):
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    first = post(client, encode(frames[0], "GIF"), headers={"content-type": "image/gif"}).json()
    animated = post(client, buffer.getvalue(), headers={"content-type": "image/gif"}).json()
    assert animated["quadtree"] == first["quadtree"]


def test_bad_bodies_get_the_documented_codes(client):
    error_of(post(client, b""), 400, "empty_image")
    error_of(post(client, b"this is text, not a png"), 400, "undecodable_image")
    error_of(post(client, encode(scene_image())[:200]), 400)
    error_of(
        post(client, encode(scene_image(), "JPEG")[:300], headers={"content-type": "image/jpeg"}),
        400,
    )
    error_of(
        post(client, b"hello", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    error_of(client.post("/v1/segment", content=encode(scene_image())), 415)
    error_of(
        post(client, encode(scene_image(), "TIFF"), headers={"content-type": "image/tiff"}), 415
    )
    error_of(post(client, encode(scene_image(), "TIFF")), 415, "unsupported_image_format")
    error_of(
        client.post("/v1/segment", files={"picture": ("a.png", b"x", "image/png")}),
        422,
        "missing_image",
    )
    two = [("image", ("a.png", encode(scene_image()), "image/png"))] * 2
    error_of(client.post("/v1/segment", files=two), 422, "several_images")


def test_limits_hold_before_decoding(client):
    bomb = png_header_only(100_000, 100_000)
    error = error_of(post(client, bomb), 413, "too_many_pixels")
    assert "10000000000" in error["message"]
    big = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    error_of(post(client, encode(big)), 413, "upload_too_large")  # 2 MiB upload limit here


@pytest.mark.parametrize(
    "query,code",
    [
        ("?scheme=dense", "invalid_parameter"),
        ("?scheme=oracle", "invalid_parameter"),
        ("?scheme=threshold", "missing_parameter"),
        ("?scheme=threshold&threshold=1.5", "invalid_parameter"),
        ("?scheme=threshold&threshold=-0.1", "invalid_parameter"),
        ("?scheme=threshold&threshold=nan", "invalid_parameter"),
        ("?scheme=threshold&threshold=abc", "invalid_parameter"),
        ("?scheme=pc&threshold=0.5", "invalid_parameter"),
        ("?scheme=budget", "missing_parameter"),
        ("?scheme=budget&budget_mb=0", "invalid_parameter"),
        ("?scheme=budget&budget_mb=-3", "invalid_parameter"),
        ("?scheme=budget&budget_mb=inf", "invalid_parameter"),
        ("?scheme=all&budget_mb=5", "invalid_parameter"),
        ("?format=jpeg", "invalid_parameter"),
    ],
)
def test_bad_parameters_are_422(client, query, code):
    error_of(post(client, encode(scene_image()), query), 422, code)


def test_a_budget_below_the_minimum_names_the_minimum(client):
    error = error_of(
        post(client, encode(scene_image()), "?scheme=budget&budget_mb=0.01"),
        422,
        "budget_too_small",
    )
    assert error["min_budget_mb"] > 0.01
    assert str(error["min_budget_mb"]) in error["message"]
    ok = post(client, encode(scene_image()), f"?scheme=budget&budget_mb={error['min_budget_mb']}")
    assert ok.status_code == 200
    assert ok.json()["stats"]["peak_memory_bytes"] <= error["min_budget_mb"] * 2**20


def test_model_health_docs_and_unknown_routes(client, tiny_weights):
    info = client.get("/v1/model").json()
    card = __import__("json").loads(tiny_weights.with_suffix(".json").read_text())
    assert info["weights_sha256"] == card["weights_sha256"]
    assert info["classes"] == CLASSES and info["palette"] == PALETTE
    assert info["levels"] == 6 and info["block_sizes"] == [32, 16, 8, 4, 2, 1]
    assert set(info["schemes"]) == {"all", "pc", "threshold", "budget", "auto"}
    assert info["limits"] == {"max_upload_mb": 2.0, "max_pixels": 5_000_000}
    assert info["default_scheme"] == "pc" and info["memory_budget_mb"] is None
    assert info["memory_measurement"] == "allocation window"
    assert info["evaluation"]["tables"] == TINY_TABLES
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]
    error_of(client.get("/nowhere"), 404, "not_found")
    error_of(client.get("/v1/segment"), 405)


def test_every_metric_counts_the_requests(client):
    post(client, encode(scene_image()), "?scheme=all")
    post(client, encode(scene_image()), "?scheme=dense")
    post(client, b"", "?scheme=pc")
    text = client.get("/metrics").text
    for name in (
        'qgn_requests_total{api="v1",code="200",scheme="all"}',
        'qgn_requests_total{api="v1",code="422",scheme="none"}',
        'qgn_requests_total{api="v1",code="400",scheme="pc"}',
        'qgn_request_duration_seconds_count{api="v1",scheme="all"}',
        'qgn_inference_duration_seconds_count{api="v1",scheme="all"}',
        'qgn_inference_peak_memory_bytes_bucket{api="v1",le="1.048576e+06",scheme="all"}',
        'qgn_inference_peak_memory_bytes_bucket{api="v1",le="6.8719476736e+10",scheme="all"}',
        'qgn_active_site_fraction_count{api="v1",level="5"}',
        "qgn_inflight_requests 0.0",
        "qgn_queue_depth 0.0",
        'qgn_model_info{device="cpu",name="qgn-test"',
    ):
        assert name in text, name
    assert "qgn_budget_capped_total" in text or "qgn_budget_capped" in text


def test_server_memory_cap_runs_requests_under_it(tiny_weights):
    body = encode(scene_image(192, 256))
    with started(Settings(weights=tiny_weights, device="cpu")) as probe:
        peak_all = post(probe, body, "?scheme=all").json()["stats"]["peak_memory_bytes"]
        floor = error_of(post(probe, body, "?scheme=budget&budget_mb=0.001"), 422)["min_budget_mb"]
    cap_mb = round((floor + peak_all / 2**20) / 2, 2)
    with started(Settings(weights=tiny_weights, device="cpu", memory_budget_mb=cap_mb)) as capped:
        run = post(capped, body, "?scheme=all").json()
        assert run["capped"] is True and run["budget_mb"] == cap_mb and run["scheme"] == "all"
        assert run["stats"]["peak_memory_bytes"] <= cap_mb * 2**20
        big = post(capped, body, f"?scheme=budget&budget_mb={cap_mb * 4}").json()
        assert big["capped"] is True and big["budget_mb"] == cap_mb
        small = post(capped, encode(scene_image(32, 32)), "?scheme=pc").json()
        assert small["capped"] is False and small["budget_mb"] is None
        assert capped.get("/v1/model").json()["memory_budget_mb"] == cap_mb
        text = capped.get("/metrics").text
        assert 'qgn_budget_capped_total{api="v1",scheme="all"} 1.0' in text
        assert 'qgn_budget_capped_total{api="v1",scheme="budget"} 1.0' in text
        huge = encode(np.zeros((2048, 2048, 3), dtype=np.uint8))
        error_of(post(capped, huge, "?scheme=pc"), 413, "over_memory_budget")


@pytest.mark.parametrize(
    "query", ["?scheme=pc", "?scheme=threshold&threshold=0.3", "?scheme=budget&budget_mb=50"]
)
def test_the_json_answer_is_exactly_what_its_schema_says(client, query):
    """The body is written without pydantic: it must still be a `SegmentResponse`, field for
    field, with nothing more."""
    body = post(client, encode(scene_image(70, 90)), query).json()
    assert SegmentResponse.model_validate(body).model_dump(mode="json", exclude_unset=True) == body
    leaves = np.asarray(body["quadtree"]["leaves"])
    assert leaves.ndim == 2 and leaves.shape[1] == 4 and leaves.dtype.kind == "i"


def test_summary_says_what_ran_and_the_class_shares_of_the_same_mask(client):
    body = encode(scene_image(96, 160, seed=3))
    full = post(client, body, "?scheme=threshold&threshold=0.4").json()
    summary = post(client, body, "?scheme=threshold&threshold=0.4&format=summary")
    assert summary.status_code == 200 and summary.headers["content-type"] == "application/json"
    assert len(summary.text.splitlines()) < 40  # short enough for a terminal
    short = summary.json()
    assert set(short) == set(SegmentSummary.model_fields) - {"auto"}  # auto: only when asked
    assert (short["width"], short["height"]) == (160, 96)
    assert (short["scheme"], short["threshold"]) == ("threshold", 0.4)
    assert short["leaves"] == len(full["quadtree"]["leaves"])
    assert short["peak_memory_mb"] == pytest.approx(
        full["stats"]["peak_memory_bytes"] / 2**20, abs=0.011
    )
    mask = decoded_mask(full)
    counts = np.bincount(mask.ravel(), minlength=len(CLASSES))
    expected = {CLASSES[c]: round(n / mask.size, 4) for c, n in enumerate(counts) if n}
    assert short["classes"] == expected
    shares = list(short["classes"].values())
    assert shares == sorted(shares, reverse=True)


def test_an_unknown_format_is_a_422_naming_the_formats(client):
    response = post(client, encode(scene_image()), "?format=gif")
    assert response.status_code == 422
    assert "summary" in response.json()["error"]["message"]
