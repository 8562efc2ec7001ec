import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.quadtree import (
    COMPOSITE,
    IGNORE,
    block_sizes,
    canonical_leaves,
    dense_to_levels,
    leaf_coverage,
    leaves_to_dense,
    levels_to_leaves,
)


@st.composite
def masks(draw, max_side=80, classes=(0, 1, 2, 7, 255)):
    """Random label maps of odd sizes made of rectangles, so uniform blocks occur."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    mask = torch.full((height, width), draw(st.sampled_from(classes)), dtype=torch.int64)
    for _ in range(draw(st.integers(0, 6))):
        r0, r1 = sorted(draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
        c0, c1 = sorted(draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
        mask[r0:r1, c0:c1] = draw(st.sampled_from(classes))
    if draw(st.booleans()):
        noise = torch.rand(height, width, generator=torch.Generator().manual_seed(height * width))
        mask[noise < 0.01] = draw(st.sampled_from(classes))
    return mask


@settings(max_examples=150, deadline=None)
@given(masks())
def test_canonical_leaves_paint_the_mask_and_tile_it_once(mask):
    leaves = canonical_leaves(mask)
    height, width = mask.shape
    assert torch.equal(leaves_to_dense(leaves, height, width), mask)
    assert torch.equal(
        leaf_coverage(leaves, height, width), torch.ones_like(mask, dtype=torch.int32)
    )


@settings(max_examples=150, deadline=None)
@given(masks())
def test_canonical_leaves_are_minimal(mask):
    """No parent has all its in-image children as leaves of one class."""
    height, width = mask.shape
    leaves = canonical_leaves(mask)
    sizes = block_sizes()
    for level in range(1, 6):
        size, parent_size = sizes[level], sizes[level - 1]
        by_parent: dict[tuple[int, int], set[int]] = {}
        counts: dict[tuple[int, int], int] = {}
        for _, row, col, cls in leaves[leaves[:, 0] == level].tolist():
            key = (row // 2, col // 2)
            by_parent.setdefault(key, set()).add(cls)
            counts[key] = counts.get(key, 0) + 1
        for (prow, pcol), classes in by_parent.items():
            rows = len(range(prow * parent_size, min((prow + 1) * parent_size, height), size))
            cols = len(range(pcol * parent_size, min((pcol + 1) * parent_size, width), size))
            assert not (counts[(prow, pcol)] == rows * cols and len(classes) == 1)


def test_canonical_leaves_of_a_constant_mask_is_one_leaf_per_32_block():
    leaves = canonical_leaves(torch.full((40, 70), 3))
    assert leaves[:, 0].eq(0).all() and leaves[:, 3].eq(3).all()
    assert len(leaves) == 2 * 3


def test_one_odd_pixel_splits_down_to_pixels():
    mask = torch.zeros(32, 32, dtype=torch.int64)
    mask[5, 9] = 1
    leaves = canonical_leaves(mask)
    assert (leaves[:, 0] == 0).sum() == 0
    assert [int((leaves[:, 0] == level).sum()) for level in range(1, 6)] == [3, 3, 3, 3, 4]
    assert leaves[(leaves[:, 0] == 5) & (leaves[:, 3] == 1)].tolist() == [[5, 5, 9, 1]]


def test_level_targets_composite_uniform_ignore_and_pruning():
    mask = torch.zeros(64, 64, dtype=torch.int64)
    mask[:32, 32:] = IGNORE  # an all-ignore 32-block
    mask[32:, :32] = 4
    mask[40, 3] = IGNORE  # ignore is a wildcard: the block stays uniform
    mask[32:, 32:] = 2
    mask[63, 63] = 5  # forces a chain of composites down to the pixel
    targets = dense_to_levels(mask)
    assert [tuple(t.shape) for t in targets] == [
        (2, 2),
        (4, 4),
        (8, 8),
        (16, 16),
        (32, 32),
        (64, 64),
    ]
    assert targets[0].tolist() == [[1, IGNORE], [5, COMPOSITE]]
    # Children of resolved parents are pruned to ignore.
    assert targets[1][:2, :2].eq(IGNORE).all() and targets[1][2:, :2].eq(IGNORE).all()
    assert targets[1][2:, 2:].tolist() == [[3, 3], [3, COMPOSITE]]
    assert targets[5][63, 63] == 6 and targets[5][62, 62] == 3 and targets[5][0, 0] == IGNORE
    unpruned = dense_to_levels(mask, prune=False)
    assert unpruned[5][40, 3] == IGNORE and unpruned[5][41, 3] == 5
    assert unpruned[1][:2, :2].eq(1).all()


@settings(max_examples=100, deadline=None)
@given(masks(classes=(0, 1, 2, 7)))
def test_level_targets_leaves_paint_the_mask(mask):
    height, width = mask.shape
    leaves = levels_to_leaves(dense_to_levels(mask))
    assert torch.equal(leaves_to_dense(leaves, height, width), mask)


@settings(max_examples=100, deadline=None)
@given(masks(classes=(0, 1, IGNORE)))
def test_level_targets_with_ignore_agree_on_labelled_pixels(mask):
    height, width = mask.shape
    painted = leaves_to_dense(levels_to_leaves(dense_to_levels(mask)), height, width)
    labelled = mask != IGNORE
    assert torch.equal(painted[labelled], mask[labelled])


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="2-D"):
        canonical_leaves(torch.zeros(4))
    with pytest.raises(TypeError, match="integer"):
        dense_to_levels(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="outside"):
        leaves_to_dense(torch.tensor([[0, 1, 0, 3]]), 32, 32)
    with pytest.raises(ValueError, match="levels"):
        leaves_to_dense(torch.tensor([[6, 0, 0, 3]]), 32, 32)


def test_uint8_masks_keep_their_dtype_cost():
    mask = torch.randint(0, 3, (64, 96), dtype=torch.uint8)
    leaves = canonical_leaves(mask)
    assert leaves.dtype == torch.int64
    assert torch.equal(leaves_to_dense(leaves, 64, 96, dtype=torch.uint8), mask)


@st.composite
def odd_masks(draw, ignore: bool = True):
    """Odd sizes up to 140 a side, few classes in large rectangles, ignore pixels sprinkled."""
    height, width = draw(st.integers(1, 140)), draw(st.integers(1, 140))
    mask = torch.full((height, width), draw(st.integers(0, 2)), dtype=torch.int64)
    for _ in range(draw(st.integers(0, 3))):
        top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        mask[top : top + draw(st.integers(1, 80)), left : left + draw(st.integers(1, 80))] = draw(
            st.integers(0, 2)
        )
    if ignore and draw(st.booleans()):
        seed = draw(st.integers(0, 2**16))
        noise = torch.rand(height, width, generator=torch.Generator().manual_seed(seed))
        mask[noise < draw(st.sampled_from([0.001, 0.01, 0.05]))] = IGNORE
    return mask


def reference_targets(mask: torch.Tensor, prune: bool) -> list[list[list[int]]]:
    """Per level, each block's target judged from its in-image pixels one block at a time."""
    height, width = mask.shape
    levels = []
    for size in block_sizes():
        rows, cols = -(-height // 32) * 32 // size, -(-width // 32) * 32 // size
        grid = [[IGNORE] * cols for _ in range(rows)]
        for row in range(rows):
            for col in range(cols):
                block = mask[row * size : (row + 1) * size, col * size : (col + 1) * size]
                labelled = set(block[block != IGNORE].tolist())
                if len(labelled) == 1:
                    grid[row][col] = labelled.pop() + 1
                elif labelled:
                    grid[row][col] = COMPOSITE
        levels.append(grid)
    if prune:
        for level in range(len(levels) - 1, 0, -1):
            for row, line in enumerate(levels[level]):
                for col in range(len(line)):
                    if levels[level - 1][row // 2][col // 2] != COMPOSITE:
                        line[col] = IGNORE
    return levels


@settings(max_examples=60, deadline=None)
@given(odd_masks(), st.booleans())
def test_level_targets_match_a_per_block_reference_at_odd_sizes(mask, prune):
    targets = dense_to_levels(mask, prune=prune)
    assert [t.tolist() for t in targets] == reference_targets(mask, prune)


@settings(max_examples=60, deadline=None)
@given(odd_masks(ignore=False))
def test_level_targets_agree_with_canonical_leaves_at_odd_sizes(mask):
    canonical = canonical_leaves(mask)
    unpruned = dense_to_levels(mask, prune=False)
    for level, row, col, cls in canonical.tolist():
        assert unpruned[level][row, col] == cls + 1
    from_targets = levels_to_leaves(dense_to_levels(mask))
    assert sorted(from_targets.tolist()) == sorted(canonical.tolist())


def test_edge_blocks_are_judged_on_in_image_pixels():
    assert dense_to_levels(torch.full((40, 40), 0))[0].tolist() == [[1, 1], [1, 1]]
    targets = dense_to_levels(torch.full((19, 18), 2), prune=False)
    assert targets[1].tolist() == [[3, 3], [3, 3]]
