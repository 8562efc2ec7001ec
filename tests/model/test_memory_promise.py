"""The memory promise over shapes: a budget at or above the stated minimum is never exceeded,
nor is the server's cap under any scheme, nor `all`'s predicted bound, from 1×1 to thin
images thousands of pixels long (thin shapes are where the floor once under-covered)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.cost import calibrate
from model.qgn import LEVELS, qgn_tiny
from model.quadtree import level_shape
from model.scheme_request import MIB, SchemeRequest, mib_to_bytes
from model.schemes import build_scheme
from tests.model.test_qgn import randomised

MODEL = randomised(qgn_tiny(num_classes=4), seed=5)
MODEL.cost = calibrate(MODEL, "cpu")

# Thin shapes weighted in: a row or column of blocks, thinner than a block, either way.
ALONG, ACROSS = st.integers(1, 4096), st.integers(1, 40)
SHAPES = st.one_of(
    st.tuples(ACROSS, ALONG),
    st.tuples(ALONG, ACROSS),
    st.tuples(st.integers(1, 300), st.integers(1, 300)),
)


def image(height: int, width: int, seed: int, noise: bool) -> torch.Tensor:
    """Noise (every site uncertain) or a few flat regions (a scene-like tree)."""
    generator = torch.Generator().manual_seed(seed)
    if noise:
        return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    out = torch.empty((height, width, 3), dtype=torch.uint8)
    out[:] = torch.randint(0, 256, (3,), dtype=torch.uint8, generator=generator)
    out[height // 3 :, : 2 * width // 3] = torch.randint(0, 256, (3,), dtype=torch.uint8)
    return out


def min_budget_mb(height: int, width: int) -> float:
    """The server's stated minimum (`Engine.min_budget_mb`): MiB rounded up to 0.01."""
    return math.ceil(MODEL.cost.min_budget_bytes(height, width) / MIB * 100) / 100


def all_bound_bytes(height: int, width: int) -> int:
    """What admission reserves for `all` (`PeakPredictor.all_bytes`, its 5 % margin left out:
    the bound must hold without it)."""
    sites = [math.prod(level_shape(height, width, level, LEVELS)) for level in range(LEVELS)]
    return MODEL.cost.run_peak_bytes(height, width, sites)


@settings(max_examples=25, deadline=None)
@given(shape=SHAPES, factor=st.sampled_from([1.0, 1.1, 1.3, 2.5]), seed=st.integers(0, 99))
def test_a_budget_from_the_minimum_up_is_never_exceeded(shape, factor, seed):
    height, width = shape
    budget_mb = round(min_budget_mb(height, width) * factor, 2)
    run = MODEL.predict(image(height, width, seed, seed % 2 == 0), _budget(budget_mb))
    assert run.peak_bytes <= mib_to_bytes(budget_mb), (shape, budget_mb, run.phase_peaks)
    assert run.scheme.budget_mb == budget_mb and not run.scheme.capped


def _budget(budget_mb: float):
    return build_scheme(SchemeRequest("budget", budget_mb=budget_mb))


@settings(max_examples=25, deadline=None)
@given(
    shape=SHAPES,
    factor=st.sampled_from([1.0, 1.01, 1.1, 1.3, 3.0]),
    name=st.sampled_from(["all", "pc", "threshold"]),
    seed=st.integers(0, 99),
)
def test_no_scheme_exceeds_the_servers_cap(shape, factor, name, seed):
    """Under a cap every scheme stays under it, and says `capped` (with the cap as its
    budget) whenever the cap shaped the run: a site dropped or the low-memory encoder."""
    height, width = shape
    cap_mb = round(min_budget_mb(height, width) * factor, 2)
    request = SchemeRequest(name, threshold=0.3 if name == "threshold" else None)
    pixels = image(height, width, seed, seed % 2 == 0)
    run = MODEL.predict(pixels, build_scheme(request, cap_mb=cap_mb))
    assert run.peak_bytes <= mib_to_bytes(cap_mb), (shape, cap_mb, run.phase_peaks)
    free = MODEL.predict(pixels, build_scheme(request))
    held = MODEL.cost.held_floor_bytes(height, width) + MODEL.cost.kept_bytes(height, width)
    shaped = run.active_sites != free.active_sites or held > mib_to_bytes(cap_mb)
    assert run.scheme.capped == shaped, (shape, cap_mb, run.active_sites, free.active_sites)
    assert run.scheme.budget_mb == (cap_mb if shaped else None)


@settings(max_examples=20, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 99))
def test_all_stays_under_the_bound_admission_reserves(shape, seed):
    height, width = shape
    run = MODEL.predict(image(height, width, seed, noise=True), build_scheme(SchemeRequest("all")))
    assert run.peak_bytes <= all_bound_bytes(height, width), (shape, run.phase_peaks)


def test_the_stated_minimum_is_the_measured_floor_of_the_padded_grid():
    """An image thinner than a block costs what its padded grid costs: the rows below it are
    padding, whatever their number (1 and 16 rows once cost more than 17 and 32)."""
    peaks = {
        rows: MODEL.predict(image(rows, 2048, 0, True), _budget(1e-6)).phase_peaks["encoder"]
        for rows in (1, 16, 17, 32)
    }
    assert len(set(peaks.values())) == 1, peaks
    assert max(peaks.values()) <= MODEL.cost.min_budget_bytes(1, 2048)
