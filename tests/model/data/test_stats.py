"""Quadtree leaf fractions: hand-computed cases and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.data.stats import main, quadtree_leaf_fractions

IGNORE = 255


def _reference(label: np.ndarray, levels: int = 6) -> list[float]:
    """Block by block, straight from the definition."""
    height, width = label.shape
    total = int((label != IGNORE).sum())
    uniform: dict[tuple[int, int, int], bool] = {}
    fractions = []
    for level in range(levels):
        size = 1 << (levels - 1 - level)
        pixels = 0
        for r in range(0, height, size):
            for c in range(0, width, size):
                block = label[r : r + size, c : c + size]
                values = block[block != IGNORE]
                uniform[level, r, c] = len(set(values.tolist())) <= 1
                parent_size = size * 2
                parent = (level - 1, r - r % parent_size, c - c % parent_size)
                if uniform[level, r, c] and not (level and uniform[parent]):
                    pixels += values.size
        fractions.append(pixels / total)
    return fractions


def test_constant_label_is_all_level_zero() -> None:
    assert quadtree_leaf_fractions(np.full((64, 96), 3, dtype=np.uint8)) == [1, 0, 0, 0, 0, 0]


def test_one_odd_pixel_in_64x64() -> None:
    label = np.zeros((64, 64), dtype=np.uint8)
    label[0, 0] = 1
    fractions = quadtree_leaf_fractions(label)
    # Three clean 32-blocks, then three clean siblings at every level down to the 2x2 block
    # holding the odd pixel, whose four pixels are leaves.
    expected = np.array([3 * 1024, 3 * 256, 3 * 64, 3 * 16, 3 * 4, 4]) / 4096
    np.testing.assert_allclose(fractions, expected)
    assert sum(fractions) == pytest.approx(1.0)


def test_image_edge_and_ignore_do_not_count() -> None:
    # 33x33 is padded to 64x64 with ignore: one uniform label is still a single leaf level.
    assert quadtree_leaf_fractions(np.full((33, 33), 2, dtype=np.uint8)) == [1, 0, 0, 0, 0, 0]
    label = np.full((32, 32), 4, dtype=np.uint8)
    label[:, :16] = IGNORE
    assert quadtree_leaf_fractions(label) == [1, 0, 0, 0, 0, 0]
    label[0, 16] = 5  # now the 32-block and one 16-block are mixed
    fractions = quadtree_leaf_fractions(label)
    assert fractions[0] == 0.0
    assert fractions[1] == pytest.approx(256 / 512)  # the lower right 16x16 block


def test_all_ignore_is_an_error() -> None:
    with pytest.raises(ValueError, match="ignore"):
        quadtree_leaf_fractions(np.full((8, 8), IGNORE, dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        quadtree_leaf_fractions(np.zeros((8, 8, 3), dtype=np.uint8))


def test_levels_argument() -> None:
    label = np.zeros((8, 8), dtype=np.uint8)
    label[7, 7] = 1
    # Blocks of 4, 2, 1 pixels.
    assert quadtree_leaf_fractions(label, levels=3) == [48 / 64, 12 / 64, 4 / 64]


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 70), st.integers(1, 70)),
        elements=st.sampled_from([0, 1, 2, IGNORE]),
    ).filter(lambda a: (a != IGNORE).any())
)
def test_matches_reference_and_sums_to_one(label: np.ndarray) -> None:
    fractions = quadtree_leaf_fractions(label)
    np.testing.assert_allclose(fractions, _reference(label), atol=1e-12)
    assert sum(fractions) == pytest.approx(1.0)


def test_blocky_labels_match_reference() -> None:
    """Random labels are mostly level-5 leaves; blocky ones exercise the coarse levels."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        coarse = rng.integers(0, 3, size=(6, 9), dtype=np.uint8)
        label = coarse.repeat(16, axis=0).repeat(16, axis=1)[:90, :130].copy()
        label[rng.integers(0, 90, 20), rng.integers(0, 130, 20)] = rng.integers(0, 4, 20)
        np.testing.assert_allclose(quadtree_leaf_fractions(label), _reference(label), atol=1e-12)


def test_script_prints_levels_and_published_figure(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--n", "2", "--height", "64", "--width", "128"])
    out = capsys.readouterr().out
    assert "published" in out and "> 0.50" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3, 4, 5]
    assert sum(float(row[2]) for row in rows) == pytest.approx(1.0, abs=0.01)
