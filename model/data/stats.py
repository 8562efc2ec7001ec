"""How much of a label map the quadtree settles at each level.

QGN's premise is that most pixels of a street scene lie in large uniform blocks (in
Cityscapes more than half lie in uniform 32x32 blocks), so only blocks on class boundaries
need fine resolution. `quadtree_leaf_fractions` measures that for one label map, and
`python -m model.data.stats --n 50` averages it over synthetic validation scenes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from model.quadtree import block_extrema

IGNORE_INDEX = 255
PUBLISHED_LEVEL0 = 0.5  # Chitta et al. (WACV 2020): > 50 % of Cityscapes pixels at level 0


def quadtree_leaf_fractions(
    label: np.ndarray, levels: int = 6, ignore_index: int = IGNORE_INDEX
) -> list[float]:
    """Fraction of the labelled pixels that become leaves at each level (coarsest first).

    Level 0 has blocks of 2**(levels-1) pixels (32 for 6 levels), the last level single
    pixels. A block is a leaf iff its labelled pixels all share one class and its parent's
    do not (level 0 has no parent). Ignore pixels, and the padding that makes the map a
    multiple of the block size, count neither in a leaf nor in the total.
    """
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D (H, W) map, got shape {label.shape}")
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    label = np.asarray(label)
    if label.dtype == np.bool_ or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must hold integer class indices, got dtype {label.dtype}")
    block = 1 << (levels - 1)
    mask = torch.from_numpy(label.astype(np.int64))
    valid = mask != ignore_index
    total = int(valid.sum())
    if total == 0:
        raise ValueError("label has no pixels outside the ignore index; fractions are undefined")
    height, width = label.shape
    valid_padded = torch.zeros(
        (-(-height // block) * block, -(-width // block) * block), dtype=torch.int64
    )
    valid_padded[:height, :width] = valid
    fractions = []
    parent_uniform = None
    for level, (lo, hi) in enumerate(block_extrema(mask, valid, levels)):
        uniform = (lo == hi) | (hi < 0)  # one class, or nothing labelled to split
        leaf = uniform
        if parent_uniform is not None:
            leaf = uniform & ~parent_uniform.repeat_interleave(2, 0).repeat_interleave(2, 1)
        size = block >> level
        rows, cols = lo.shape
        labelled = valid_padded.reshape(rows, size, cols, size).sum(dim=(1, 3))
        fractions.append(int(labelled[leaf].sum()) / total)
        parent_uniform = uniform
    return fractions


def main(argv: Sequence[str] | None = None) -> None:
    from model.data.synthetic import VAL_SEEDS, make_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="number of validation scenes")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args(argv)
    if not 1 <= args.n <= len(VAL_SEEDS):
        parser.error(f"--n must be in 1..{len(VAL_SEEDS)}, got {args.n}")

    per_image = np.array(
        [
            quadtree_leaf_fractions(make_scene(seed, args.height, args.width)[1])
            for seed in VAL_SEEDS[: args.n]
        ]
    )
    print(f"synthetic validation scenes: {args.n} at {args.height}x{args.width}")
    print("level  block  mean leaf fraction  (min .. max over scenes)")
    for level in range(per_image.shape[1]):
        column = per_image[:, level]
        print(
            f"{level:>5}  {32 >> level:>5}  {column.mean():>18.3f}  "
            f"({column.min():.3f} .. {column.max():.3f})"
        )
    print(
        f"published (Cityscapes, Chitta et al. 2020): level 0 > {PUBLISHED_LEVEL0:.2f}; "
        f"here {per_image[:, 0].mean():.3f}"
    )


if __name__ == "__main__":
    main()
