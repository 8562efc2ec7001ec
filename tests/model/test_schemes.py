"""The ring of the rule-based schemes: at levels 0 and 1, the neighbours of a chosen site
are refined too."""

from __future__ import annotations

import pytest
import torch

from model.quadtree import COMPOSITE
from model.schemes import RING_LEVELS, LevelView, PredictedComposite, Threshold, with_ring


def grid_sites(batch: int, rows: int, cols: int) -> torch.Tensor:
    axes = torch.meshgrid(
        torch.arange(batch), torch.arange(rows), torch.arange(cols), indexing="ij"
    )
    return torch.stack(axes, dim=-1).reshape(-1, 3).to(torch.int32)


def as_grid(mask: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
    grid = torch.zeros(shape, dtype=torch.int32)
    grid[coords[:, 0].long(), coords[:, 1].long(), coords[:, 2].long()] = mask.int()
    return grid


def test_the_ring_adds_the_eight_neighbours_of_a_chosen_site_in_its_own_image():
    coords = grid_sites(2, 4, 5)
    chosen = torch.zeros(len(coords), dtype=torch.bool)
    chosen[(coords == torch.tensor([0, 1, 2], dtype=torch.int32)).all(1)] = True
    chosen[(coords == torch.tensor([1, 3, 4], dtype=torch.int32)).all(1)] = True  # a corner
    ring = as_grid(with_ring(chosen, coords), coords, (2, 4, 5))
    expected = torch.zeros((2, 4, 5), dtype=torch.int32)
    expected[0, 0:3, 1:4] = 1
    expected[1, 2:4, 3:5] = 1
    assert torch.equal(ring, expected)


def test_the_ring_adds_only_sites_the_level_has():
    full = grid_sites(1, 5, 5)
    coords = full[(full[:, 1] + full[:, 2]) % 2 == 0]  # a checkerboard of active sites
    chosen = (coords[:, 1] == 2) & (coords[:, 2] == 2)
    ring = with_ring(chosen, coords)
    assert len(ring) == len(coords)
    picked = {tuple(site) for site in coords[ring].tolist()}
    assert picked == {(0, 2, 2), (0, 1, 1), (0, 1, 3), (0, 3, 1), (0, 3, 3)}


def test_nothing_chosen_stays_nothing():
    coords = grid_sites(1, 3, 3)
    assert not with_ring(torch.zeros(9, dtype=torch.bool), coords).any()


def centre_composite_view(level: int) -> LevelView:
    """A 5×5 level whose centre alone is predicted composite (p = 0.9, elsewhere ~0)."""
    coords = grid_sites(1, 5, 5)
    logits = torch.zeros((25, 4))
    logits[:, 1] = 8.0
    logits[12, COMPOSITE] = 10.0
    return LevelView(level, logits, coords, 0, 0, 0)


@pytest.mark.parametrize("scheme", [PredictedComposite(), Threshold(0.5)], ids=type)
@pytest.mark.parametrize("level", range(5))
def test_pc_and_threshold_refine_the_ring_at_the_coarse_levels_only(scheme, level):
    chosen = scheme.select(centre_composite_view(level))
    assert int(chosen.sum()) == (9 if level in RING_LEVELS else 1)
    assert bool(chosen[12])
