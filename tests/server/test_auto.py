"""scheme=auto: the most accurate of the card's settings that fits the free memory, the caps
and the deadline, chosen at admission, and said in every answer form."""

from __future__ import annotations

import math

import pytest

from model.scheme_request import SchemeRequest
from server.auto import FLOOR, Candidate, Option, candidates, choose
from server.latency import LatencyModel
from server.settings import Settings
from tests.server.conftest import TINY_TABLES, encode, scene_image, started

PNG = {"content-type": "image/png"}


def option(label: str, miou: float, peak: int, seconds: float) -> Option:
    candidate = Candidate(label, SchemeRequest("pc"), miou, 1.0, 1)
    return Option(candidate, peak, seconds)


OPTIONS = [
    option("all", 0.8, 1000, 5.0),
    option("t0.1", 0.75, 100, 1.0),
    option("pc", 0.7, 10, 0.5),
]


@pytest.mark.parametrize(
    "excluded, room, left, label, reason",
    [
        ({}, 2000, None, "all", "best"),
        ({}, 500, None, "t0.1", "memory"),
        ({0: "max_memory"}, 2000, None, "t0.1", "max_memory"),
        ({}, 2000, 2.0, "t0.1", "deadline"),
        ({}, 2000, 0.1, "pc", "deadline"),  # nothing is fast enough: the fastest that fits
        ({0: "memory"}, 50, 2.0, "pc", "memory"),
    ],
)
def test_the_most_accurate_that_fits_runs_and_the_reason_names_what_kept_the_better(
    excluded, room, left, label, reason
):
    chosen, said = choose(OPTIONS, excluded, room, left)
    assert (chosen.candidate.label, said) == (label, reason)


def test_when_nothing_fits_the_room_the_request_waits():
    assert choose(OPTIONS, {}, 5, None) is None


def card(*sizes: str) -> dict:
    rows = TINY_TABLES["96x160"]["rows"]
    return {"evaluation": {"tables": {size: {"images": 1, "rows": rows} for size in sizes}}}


def test_candidates_are_the_cards_requestable_settings_by_miou_and_the_floor_last():
    ranked = candidates(card("96x160", "960x1600"), 90, 150, floor_mb=0.5)
    assert [c.label for c in ranked] == ["all", "threshold=0.1", "pc", "threshold=0.9", FLOOR]
    assert ranked[-1].request == SchemeRequest("budget", budget_mb=0.5)
    assert ranked[0].card_pixels == 96 * 160  # the nearest evaluated size
    assert candidates(card("96x160", "960x1600"), 1000, 1600, 0.5)[0].card_pixels == 960 * 1600
    assert candidates({"evaluation": {"note": "none"}}, 90, 150, 0.5) == []


def test_latency_from_the_card_then_one_size_then_a_line():
    model = LatencyModel()
    assert model.seconds("all", 1000, card_seconds=2.0) == 2.0  # never run: the card's
    model.observe("pc", 1000, 0.5, card_seconds=1.0)  # this server runs at half the card's time
    assert model.seconds("all", 1000, card_seconds=2.0) == pytest.approx(1.0)
    assert model.seconds("pc", 4000, None) == pytest.approx(2.0)  # one size: by pixels
    model.observe("pc", 4000, 1.1, None)
    assert model.seconds("pc", 7000, None) == pytest.approx(1.7)  # a line: 0.3 + 0.0002 × px
    described = model.describe()
    assert described["settings"]["pc"]["runs"] == 2 and described["speed_against_card"] == 0.5


@pytest.fixture(scope="module")
def auto_client(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu")) as client:
        yield client


def post(client, query: str, image=None):
    body = encode(scene_image(96, 160) if image is None else image)
    return client.post(f"/v1/segment?{query}", content=body, headers=PNG)


def test_alone_with_room_auto_runs_the_most_accurate_and_says_why(auto_client):
    body = post(auto_client, "scheme=auto").json()
    assert (body["scheme"], body["auto"]["setting"], body["auto"]["reason"]) == (
        "all",
        "all",
        "best",
    )
    assert body["auto"]["predicted_peak_mb"] > 0 and body["auto"]["free_memory_mb"] > 0
    assert "predicted_latency_ms" not in body["auto"]  # no deadline, nothing to say
    assert body["stats"]["peak_memory_bytes"] <= body["auto"]["predicted_peak_mb"] * 2**20


def test_max_memory_steers_to_a_cheaper_setting_that_holds_it(auto_client):
    best = post(auto_client, "scheme=auto").json()
    limit = best["auto"]["predicted_peak_mb"] / 2
    body = post(auto_client, f"scheme=auto&max_memory_mb={limit}").json()
    assert body["auto"]["reason"] == "max_memory" and body["scheme"] != "all"
    assert body["stats"]["peak_memory_bytes"] <= limit * 2**20


def test_a_max_memory_below_the_minimum_is_a_422_naming_it(auto_client):
    response = post(auto_client, "scheme=auto&max_memory_mb=0.01")
    error = response.json()["error"]
    assert response.status_code == 422 and error["code"] == "budget_too_small"
    assert error["min_budget_mb"] > 0.01 and str(error["min_budget_mb"]) in error["message"]


def test_a_deadline_steers_to_a_faster_setting_and_says_its_predicted_latency(auto_client):
    # Large enough that a quarter of `all`'s time is not spent decoding the upload: the
    # deadline counts from the request's arrival.
    image = scene_image(384, 640)
    alone = post(auto_client, "scheme=all", image).json()["stats"]["latency_ms"]
    response = post(auto_client, f"scheme=auto&deadline_ms={alone / 4}", image)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["auto"]["reason"] == "deadline" and body["scheme"] != "all"
    assert body["auto"]["predicted_latency_ms"] <= alone


def test_an_impossible_deadline_is_a_503_with_an_integer_retry_after(auto_client):
    response = post(auto_client, "scheme=auto&deadline_ms=0.001")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "deadline_unreachable"
    assert response.headers["Retry-After"].isdigit()


@pytest.mark.parametrize(
    "query",
    [
        "scheme=pc&deadline_ms=100",
        "scheme=budget&budget_mb=8&max_memory_mb=8",
        "scheme=auto&deadline_ms=0",
        "scheme=auto&deadline_ms=-5",
        "scheme=auto&deadline_ms=nan",
        "scheme=auto&max_memory_mb=inf",
        "scheme=auto&max_memory_mb=lots",
        "scheme=auto&threshold=0.3",
    ],
)
def test_bad_auto_parameters_are_422(auto_client, query):
    response = post(auto_client, query)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_the_png_headers_and_the_summary_say_the_same(auto_client):
    png = post(auto_client, "scheme=auto&format=png")
    assert png.headers["X-QGN-Auto-Reason"] == "best" and png.headers["X-QGN-Scheme"] == "all"
    assert float(png.headers["X-QGN-Auto-Predicted-Peak-Mb"]) > 0
    summary = post(auto_client, "scheme=auto&format=summary").json()
    assert summary["auto"]["setting"] == png.headers["X-QGN-Auto-Setting"]


def test_v2_takes_the_parameters_and_answers_them_flat(auto_client):
    import numpy as np

    pixels = scene_image(96, 160)
    body = {
        "parameters": {"scheme": "auto", "deadline_ms": 10_000},
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ],
    }
    answer = auto_client.post("/v2/models/qgn-test/infer", json=body).json()
    parameters = answer["parameters"]
    assert parameters["auto_reason"] == "best" and parameters["scheme"] == "all"
    assert parameters["auto_predicted_latency_ms"] > 0
    body["parameters"] = {"scheme": "pc", "max_memory_mb": 4}
    refused = auto_client.post("/v2/models/qgn-test/infer", json=body)
    assert refused.status_code == 400 and "max_memory_mb" in refused.json()["error"]
    assert np.asarray(answer["outputs"][0]["shape"]).tolist() == [96, 160]


def test_choices_are_counted_and_the_latency_model_is_shown(auto_client):
    post(auto_client, "scheme=auto")
    metrics = auto_client.get("/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("qgn_auto_choices_total{")]
    assert any('reason="best"' in line and 'setting="all"' in line for line in counted)
    model = auto_client.get("/v1/model").json()
    assert "auto" in model["schemes"] and model["latency_model"]["settings"]["all"]["runs"] >= 1
    assert math.isfinite(model["latency_model"]["speed_against_card"])


def test_auto_as_the_default_scheme(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu", default_scheme="auto")) as client:
        assert post(client, "").json()["auto"]["reason"] == "best"


def test_a_tight_device_budget_runs_a_cheaper_setting_instead_of_waiting(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu")) as client:
        best = post(client, "scheme=auto").json()["auto"]["predicted_peak_mb"]
    pixels_mb = 3 * 96 * 160 / 2**20
    tight = Settings(weights=tiny_weights, device="cpu", device_memory_mb=best / 2 + pixels_mb)
    with started(tight) as client:
        body = post(client, "scheme=auto").json()
        assert body["auto"]["reason"] == "memory" and body["scheme"] != "all"
