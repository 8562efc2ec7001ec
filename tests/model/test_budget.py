"""The budget scheme plans across the tree: it reserves room for the levels below, and the
measured peak never passes the budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.cost import calibrate
from model.qgn import qgn_tiny
from model.scheme_request import SchemeRequest
from model.schemes import All, Budget, LevelView, Nothing, build_scheme
from tests.model.test_qgn import randomised

MODEL = randomised(qgn_tiny(num_classes=4), seed=3)
MODEL.cost = calibrate(MODEL, "cpu")


def before_mask(prediction) -> int:
    """The peak of every phase of an inference but the mask's (`mask_bytes` bounds it)."""
    return max(peak for phase, peak in prediction.phase_peaks.items() if phase != "mask")


def view(sites: int, later_levels: tuple[tuple[int, int], ...]) -> LevelView:
    logits = torch.linspace(-2, 2, sites)[:, None] * torch.tensor([[1.0, -1.0]])
    coords = torch.stack([torch.zeros(sites), torch.zeros(sites), torch.arange(sites)], 1)
    return LevelView(0, logits, coords.long(), 0, 10, 0, later_levels)


def test_a_level_leaves_room_for_the_levels_below():
    # The next level alone fits all 100 parents (4 × 100 × 10 B = 4000 B)...
    budget = Budget(4000)
    alone = view(100, ())
    assert budget.parents_that_fit(alone) == 100
    assert int(budget.select(alone).sum()) == 100
    # ...but if they all propagated, the level after would need 1600 sites × 10 B.
    planned = view(100, ((10, 0),))
    count = int(budget.select(planned).sum())
    assert 0 < count < 100
    assert budget.subtree_fits(planned, count) and not budget.subtree_fits(planned, count + 1)
    # The chosen sites are the most uncertain: the highest p(composite), i.e. the last ones.
    assert budget.select(planned)[-count:].all()


def test_an_ample_budget_is_all_and_none_is_nothing():
    later = ((10, 0), (10, 0))
    assert int(Budget(10**9).select(view(50, later)).sum()) == 50
    assert int(Budget(1).select(view(50, later)).sum()) == 0


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


def test_a_budget_beyond_any_memory_runs_as_all():
    budget = build_scheme(SchemeRequest("budget", budget_mb=1e308))
    assert budget.ran().budget_mb == 1e308
    image = torch.zeros(40, 70, 3, dtype=torch.uint8)
    assert MODEL.predict(image, budget).active_sites == MODEL.predict(image, All()).active_sites


@pytest.mark.parametrize("height, width", [(40, 40), (96, 1500), (1500, 96), (333, 517)])
def test_the_fitted_floors_cover_shapes_they_were_not_fitted_on(height, width):
    """Both floors are fits; one below the measured floor would let a budget overrun."""
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    lean = before_mask(MODEL.predict(image, Budget(1)))
    held = before_mask(MODEL.predict(image, Nothing()))
    assert lean <= MODEL.cost.min_budget_bytes(height, width)
    assert held <= MODEL.cost.held_floor_bytes(height, width)
