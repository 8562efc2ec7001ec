"""The budget scheme refines τ 0.1's sites, the most uncertain first, as many as the next level
can hold, and the measured peak never passes the budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.cost import calibrate
from model.qgn import qgn_tiny
from model.scheme_request import SchemeRequest
from model.schemes import (
    BUDGET_THRESHOLD,
    RING_LEVELS,
    All,
    Budget,
    LevelView,
    Nothing,
    Threshold,
    build_scheme,
)
from tests.model.test_qgn import randomised

MODEL = randomised(qgn_tiny(num_classes=4), seed=3)
MODEL.cost = calibrate(MODEL, "cpu")


def before_mask(prediction) -> int:
    """The peak of every phase of an inference but the mask's (`mask_bytes` bounds it)."""
    return max(peak for phase, peak in prediction.phase_peaks.items() if phase != "mask")


def view(sites: int, level: int = 2) -> LevelView:
    """`sites` in a row whose p(composite) rises from 0.02 to 0.98; a next-level site costs
    10 bytes and its stage nothing."""
    logits = torch.linspace(-2, 2, sites)[:, None] * torch.tensor([[1.0, -1.0]])
    coords = torch.stack([torch.zeros(sites), torch.zeros(sites), torch.arange(sites)], 1)
    return LevelView(level, logits, coords.long(), 0, 10, 0)


def test_a_budget_that_fits_them_refines_tau_01s_sites_and_never_more():
    level = view(100)
    rule = Threshold(BUDGET_THRESHOLD).select(level)
    assert 0 < int(rule.sum()) < 100
    for budget in (4000, 10**9):  # the next level fits all 100 parents (4 × 100 × 10 B)
        assert torch.equal(Budget(budget).select(level), rule)


def test_a_tight_budget_keeps_the_most_uncertain_of_them():
    budget = Budget(1000)  # 25 parents: 4 × 25 × 10 B
    chosen = budget.select(view(100))
    assert budget.parents_that_fit(view(100)) == 25
    assert int(chosen.sum()) == 25 and chosen[-25:].all()  # the highest p(composite)
    assert int(Budget(1).select(view(100)).sum()) == 0


def test_at_the_ring_levels_the_ring_is_refined_too():
    level = view(100, level=RING_LEVELS[0])
    below = view(100)
    ring = Budget(10**9).select(level)
    assert int(ring.sum()) == int(Budget(10**9).select(below).sum()) + 1  # one site before


@settings(max_examples=12, deadline=None)
@given(
    height=st.integers(8, 120),
    width=st.integers(8, 160),
    fraction=st.floats(0.0, 1.2),
    seed=st.integers(0, 1000),
)
def test_the_measured_peak_never_passes_the_budget_on_random_images(height, width, fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    floor = MODEL.cost.min_budget_bytes(height, width)
    full = MODEL.predict(image, All()).peak_bytes
    budget = max(floor, int(floor + fraction * (full - floor)))
    pred = MODEL.predict(image, Budget(budget))
    assert pred.peak_bytes <= budget, (pred.peak_bytes, budget, pred.active_sites)


def test_a_budget_beyond_any_memory_runs_as_tau_01():
    budget = build_scheme(SchemeRequest("budget", budget_mb=1e308))
    assert budget.ran().budget_mb == 1e308
    image = torch.randint(0, 256, (40, 70, 3), dtype=torch.uint8)
    ran = MODEL.predict(image, budget).active_sites
    assert ran == MODEL.predict(image, Threshold(BUDGET_THRESHOLD)).active_sites


@pytest.mark.parametrize("height, width", [(40, 40), (96, 1500), (1500, 96), (333, 517)])
def test_the_fitted_floors_cover_shapes_they_were_not_fitted_on(height, width):
    """Both floors are fits; one below the measured floor would let a budget overrun."""
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    lean = before_mask(MODEL.predict(image, Budget(1)))
    held = before_mask(MODEL.predict(image, Nothing()))
    assert lean <= MODEL.cost.min_budget_bytes(height, width)
    assert held <= MODEL.cost.held_floor_bytes(height, width)


def test_a_budget_keeps_the_maps_only_with_room_for_them_twice():
    """Just above the held floor, keeping the maps left nothing to refine with: such a budget
    recomputes them at sites instead, and refines."""
    held_floor, kept = 5_000_000, 2_000_000
    assert Budget(held_floor + kept).holds_skips(held_floor, kept)
    assert not Budget(held_floor + kept - 1).holds_skips(held_floor, kept)
    assert not Budget(held_floor).holds_skips(held_floor, kept)
