"""The memory promise over HTTP: `budget_mb` from the stated minimum up, and the server's cap
under every scheme, hold on thin and odd shapes; the stated minimum is always accepted, is
honest (a request at it measures at least 0.8 of it) and costs no more time than `pc`.

The last tests run the shipped weights over a bounded sweep (about a minute): the figures
the issue was about are theirs."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from model.scheme_request import MIB
from model.weights import DEFAULT_WEIGHTS
from server.settings import Settings
from tests.server.conftest import encode, scene_image, started

# Thinner than a block both ways, one block, odd sizes, and a few ordinary ones.
THIN = [(1, 1), (1, 2048), (7, 1500), (16, 2048), (17, 999), (2048, 1), (1500, 9), (33, 31)]


def image(height: int, width: int, seed: int) -> np.ndarray:
    """Noise or flat regions, by seed."""
    if seed % 2:
        return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.ascontiguousarray(
        scene_image(max(height, 96), max(width, 160), seed)[:height, :width]
    )


def segment(client, pixels: np.ndarray, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = client.post(
        f"/v1/segment?{query}", content=encode(pixels), headers={"Content-Type": "image/png"}
    )
    assert response.status_code in (200, 422), response.text
    return response.json()


def min_budget_mb(client, pixels: np.ndarray) -> float:
    """The smallest budget, as the server states it (the 422 for a budget far below it)."""
    refused = segment(client, pixels, scheme="budget", budget_mb=0.001)
    return refused["error"]["min_budget_mb"]


def check_budgets(client, shapes, factors=(1.0, 1.1, 1.3)) -> list[float]:
    """Every budget from the stated minimum up is accepted and never exceeded; returns
    measured / stated at the minimum."""
    honesty = []
    for index, (height, width) in enumerate(shapes):
        pixels = image(height, width, index)
        floor = min_budget_mb(client, pixels)
        for factor in factors:
            budget = round(floor * factor, 2)
            body = segment(client, pixels, scheme="budget", budget_mb=budget)
            peak = body["stats"]["peak_memory_bytes"]
            assert peak <= budget * MIB, ((height, width), budget, peak / MIB)
            assert body["budget_mb"] == budget and not body["capped"]
            if factor == 1.0:
                honesty.append(peak / (floor * MIB))
    return honesty


def check_cap(weights, shape: tuple[int, int], factor: float) -> None:
    """A server capped near a thin image's minimum: no scheme goes over the cap; a run the
    cap shaped says so, with the cap as its budget."""
    height, width = shape
    pixels = image(height, width, 1)
    with started(Settings(weights=weights, device="cpu")) as free:
        floor = min_budget_mb(free, pixels)
        uncapped = {
            name: segment(free, pixels, scheme=name, **extra)
            for name, extra in (("all", {}), ("pc", {}), ("threshold", {"threshold": 0.3}))
        }
    cap = round(floor * factor, 2)
    with started(Settings(weights=weights, device="cpu", memory_budget_mb=cap)) as client:
        engine = client.app.state.engine
        cost = engine.model.cost
        lean = cost.held_floor_bytes(height, width) + cost.kept_bytes(height, width) > cap * MIB
        for name, extra in (("all", {}), ("pc", {}), ("threshold", {"threshold": 0.3})):
            body = segment(client, pixels, scheme=name, **extra)
            assert body["stats"]["peak_memory_bytes"] <= cap * MIB, (shape, name, cap)
            dropped = body["stats"]["active_sites"] != uncapped[name]["stats"]["active_sites"]
            assert body["capped"] == (dropped or lean), (shape, name, cap, dropped, lean)
            assert body["budget_mb"] == (cap if body["capped"] else None)


def test_budgets_hold_on_thin_shapes_over_http(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu")) as client:
        check_budgets(client, THIN)
        guarantee = client.get("/v1/model").json()["memory_guarantee"]
        assert {"counted", "budget", "cap", "all", "how"} <= set(guarantee)
        assert "min_budget_mb" in guarantee["budget"] and "CUDA" in guarantee["counted"]


@pytest.mark.parametrize(
    ("shape", "factor"), [((1, 2048), 1.01), ((2048, 3), 1.1), ((9, 700), 1.3)]
)
def test_the_cap_holds_and_says_when_it_bound(tiny_weights, shape, factor):
    check_cap(tiny_weights, shape, factor)


def test_all_stays_under_what_admission_reserves(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu")) as client:
        predictor = client.app.state.engine.predictor
        for index, (height, width) in enumerate(THIN):
            body = segment(client, image(height, width, 2 * index + 1), scheme="all")
            assert body["stats"]["peak_memory_bytes"] <= predictor.all_bytes(height, width)


def test_shipped_weights_hold_their_budgets_and_an_honest_usable_floor():
    """The bounded sweep on the shipped weights: thin and random shapes up to 32768 long at
    their minimum and above, `all` under its bound; at 512×1024 and 1024×2048 the stated
    minimum is within 1.25× of what a request at it measures, and at 1024×2048 a request at
    it takes at most 1.5× the time of `pc` (medians of three, interleaved)."""
    rng = random.Random(25)
    shapes = [(1, 32768), (32768, 1), (5, 3900), (3900, 5), (12, 3769), (16, 2048)]
    shapes += [(rng.randint(1, 24), rng.randint(100, 8000)) for _ in range(3)]
    shapes += [(rng.randint(1, 1200), rng.randint(1, 1200)) for _ in range(3)]
    with started(Settings(weights=DEFAULT_WEIGHTS, device="cpu")) as client:
        check_budgets(client, shapes, factors=(1.0, 1.1))
        predictor = client.app.state.engine.predictor
        for index, (height, width) in enumerate(shapes[:4] + shapes[-3:]):
            body = segment(client, image(height, width, 2 * index + 1), scheme="all")
            assert body["stats"]["peak_memory_bytes"] <= predictor.all_bytes(height, width)
        for height, width in ((512, 1024), (1024, 2048)):
            pixels = scene_image(height, width, 3)
            floor = min_budget_mb(client, pixels)
            body = segment(client, pixels, scheme="budget", budget_mb=floor)
            assert floor * MIB <= 1.25 * body["stats"]["peak_memory_bytes"], (height, floor)
        latency = {"pc": [], "floor": []}
        for _ in range(3):
            for name, params in (("pc", {}), ("floor", {"budget_mb": floor})):
                scheme = "budget" if name == "floor" else "pc"
                body = segment(client, pixels, scheme=scheme, **params)
                latency[name].append(body["stats"]["latency_ms"])
        ratio = statistics.median(latency["floor"]) / statistics.median(latency["pc"])
        assert ratio <= 1.5, latency
