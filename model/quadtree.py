"""Dense label maps <-> quadtrees, as in the QGN paper (Chitta et al., WACV 2020).

Level 0 holds 32×32 blocks, level 5 single pixels (block sizes 32, 16, 8, 4, 2, 1 for the
default 6 levels). A block is a *leaf* when its pixels agree on one class and its parent's do
not. Per-level training targets use class 0 for *composite* (split further) and shift the real
classes to 1..C. Everything here is vectorised: block statistics come from reshaping the
padded map, never from a Python loop over blocks.

Ignore pixels (255) are wildcards in the targets: a block whose non-ignore pixels share one
class is uniform, a block that is all ignore is ignore. Image padding is handled the same way,
so edge blocks are judged on their in-image pixels only.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE = 255
COMPOSITE = 0
DEFAULT_LEVELS = 6

_NO_VALUE = torch.iinfo(torch.int64).max


def block_sizes(levels: int = DEFAULT_LEVELS) -> list[int]:
    """Side of a block at each level, coarsest first: [32, 16, 8, 4, 2, 1] for 6 levels."""
    return [2 ** (levels - 1 - level) for level in range(levels)]


def level_shape(
    height: int, width: int, level: int, levels: int = DEFAULT_LEVELS
) -> tuple[int, int]:
    """Number of blocks of `level` that hold at least one in-image pixel (rows, cols)."""
    size = block_sizes(levels)[level]
    return -(-height // size), -(-width // size)


def _check_mask(mask: Tensor) -> Tensor:
    mask = torch.as_tensor(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D label map (H, W), got shape {tuple(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise TypeError(f"expected an integer label map, got dtype {mask.dtype}")
    if mask.numel() == 0:
        raise ValueError("the label map is empty")
    return mask


def _as_mask(mask: Tensor) -> Tensor:
    return _check_mask(mask).to(torch.int64)


def block_extrema(
    values: Tensor, valid: Tensor | None = None, levels: int = DEFAULT_LEVELS
) -> list[tuple[Tensor, Tensor]]:
    """Per level (coarsest first), the min and max of each block's values: the one quadtree
    pyramid behind targets, leaves and statistics.

    The map is padded up to a multiple of the level-0 block. With `valid`, only valid values
    count (`values` must then be >= 0): a block with none has min = int64 max and max = -1,
    and so has the padding. Without it every value counts and the padding replicates the last
    row and column, which lie in the same block, so no block changes its verdict and the map
    keeps its own dtype (a uint8 mask peaks at ~2.75 bytes per padded pixel, its one padded
    copy included).
    """
    height, width = values.shape
    base = block_sizes(levels)[0]
    pad_h, pad_w = -height % base, -width % base
    if valid is None:
        lo = values
        if pad_h or pad_w:  # one padded copy (two, made in turn, peaked at 3 bytes a pixel)
            lo = values.new_empty((height + pad_h, width + pad_w))
            lo[:height, :width] = values
            lo[height:, :width] = values[-1:]
            lo[:, width:] = lo[:, width - 1 : width]
        hi = lo
    else:
        # Filled, not padded with F.pad: that goes through a float and turns int64 max into
        # int64 min, which made every edge block composite.
        lo = values.new_full((height + pad_h, width + pad_w), _NO_VALUE, dtype=torch.int64)
        hi = values.new_full((height + pad_h, width + pad_w), -1, dtype=torch.int64)
        lo[:height, :width] = torch.where(valid, values, _NO_VALUE)
        hi[:height, :width] = torch.where(valid, values, -1)
    extrema = [(lo, hi)]
    for _ in range(levels - 1):
        lo, hi = _halve(lo, torch.minimum), _halve(hi, torch.maximum)
        extrema.append((lo, hi))
    return extrema[::-1]


# Output rows per step of `_halve`: its temporaries stay a few rows, whatever the image.
HALVE_ROWS = 64


def _halve(grid: Tensor, pick) -> Tensor:
    """Each 2×2 block's `pick` (torch.minimum or torch.maximum), from strided views: a
    reduction over the blocks' dims (`reshape(...).amin(dim=(1, 3))`) took 20× as long."""
    rows, cols = grid.shape[0] // 2, grid.shape[1] // 2
    out = grid.new_empty((rows, cols))
    for top in range(0, rows, HALVE_ROWS):
        band = grid[2 * top : 2 * (top + HALVE_ROWS)]
        pairs = pick(band[0::2], band[1::2])
        pick(pairs[:, 0::2], pairs[:, 1::2], out=out[top : top + HALVE_ROWS])
    return out


def _upsample2(grid: Tensor) -> Tensor:
    return grid.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)


def dense_to_levels(
    mask: Tensor, levels: int = DEFAULT_LEVELS, ignore: int = IGNORE, prune: bool = True
) -> list[Tensor]:
    """Per-level target maps of a label map, coarsest first.

    Level l is a (Hp / s_l) × (Wp / s_l) int64 map, Hp and Wp padded up to a multiple of 32:
    0 = composite, c + 1 = uniform class c, `ignore` = nothing to learn here. With `prune`,
    children of a parent that is already resolved (uniform or ignore) are set to `ignore`, so
    each level is supervised only where the tree reaches it (the reference's `return_255`).
    """
    mask = _as_mask(mask)
    valid = mask != ignore
    targets = []
    for lo, hi in block_extrema(mask, valid, levels):
        uniform = (lo == hi) & (hi >= 0)
        target = torch.full_like(lo, ignore)
        target[hi >= 0] = COMPOSITE
        target[uniform] = lo[uniform] + 1
        targets.append(target)
    if prune:
        for level in range(1, levels):
            resolved = _upsample2(targets[level - 1] != COMPOSITE)
            targets[level][resolved] = ignore
    return targets


def levels_to_leaves(targets: list[Tensor], ignore: int = IGNORE) -> Tensor:
    """Leaves of per-level targets as an (N, 4) int64 tensor of (level, row, col, class).

    A leaf is a uniform site (target 1..C) whose parent is composite; classes are shifted
    back to 0..C-1. Rows are ordered by level, then row-major.
    """
    found = []
    for level, target in enumerate(targets):
        leaf = (target != COMPOSITE) & (target != ignore)
        if level > 0:
            leaf &= _upsample2(targets[level - 1] == COMPOSITE)
        rows, cols = leaf.nonzero(as_tuple=True)
        found.append(leaf_rows(level, rows, cols, target[rows, cols] - 1))
    return torch.cat(found)


def canonical_leaves(mask: Tensor, levels: int = DEFAULT_LEVELS) -> Tensor:
    """The minimal quadtree of a mask, judged on in-image pixels only.

    A block is a leaf iff its in-image pixels share one value and its parent's do not; every
    value of `mask` counts as a class, 255 included. Returns (N, 4) int64 rows of
    (level, row, col, class), ordered by level, then row-major. Beyond the extrema pyramid
    (a third of a byte per pixel of a uint8 mask) it works only on the children of split
    blocks, so no pixel-sized map is made.
    """
    mask = _check_mask(mask)
    if mask.min() < 0:
        raise ValueError("label values must be >= 0")
    height, width = mask.shape
    found = []
    split = None  # (rows, cols) of the previous level's blocks that are not uniform
    for level, (lo, hi) in enumerate(block_extrema(mask, None, levels)):
        rows, cols = level_shape(height, width, level, levels)
        if split is None:
            r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            r, c = r.reshape(-1), c.reshape(-1)
        else:
            r = (2 * split[0][:, None] + torch.tensor([0, 0, 1, 1])).reshape(-1)
            c = (2 * split[1][:, None] + torch.tensor([0, 1, 0, 1])).reshape(-1)
            inside = (r < rows) & (c < cols)
            r, c = r[inside], c[inside]
            order = torch.argsort(r * cols + c)
            r, c = r[order], c[order]
        low, high = lo[r, c], hi[r, c]
        uniform = low == high
        found.append(leaf_rows(level, r[uniform], c[uniform], low[uniform].to(torch.int64)))
        split = (r[~uniform], c[~uniform])
    return torch.cat(found)


def leaf_rows(level: int, rows: Tensor, cols: Tensor, classes: Tensor) -> Tensor:
    """Leaves as the quadtree format writes them: rows of (level, row, col, class)."""
    return torch.stack([torch.full_like(rows, level), rows, cols, classes], dim=1)


def _check_leaves(leaves: Tensor, height: int, width: int, levels: int) -> Tensor:
    leaves = torch.as_tensor(leaves, dtype=torch.int64).reshape(-1, 4)
    if leaves.numel() and (leaves[:, 0].min() < 0 or leaves[:, 0].max() >= levels):
        raise ValueError(f"leaf levels must lie in 0..{levels - 1}")
    if leaves.numel() and leaves[:, 1:3].min() < 0:
        raise ValueError("leaf rows and columns must be >= 0")
    sizes = torch.tensor(block_sizes(levels))[leaves[:, 0]]
    outside = (leaves[:, 1] * sizes >= height) | (leaves[:, 2] * sizes >= width)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} leaves lie outside the {height}×{width} image")
    return leaves


def _expand_blocks(grid: Tensor, size: int, height: int, width: int) -> Tensor:
    """Blows a per-block grid up to pixels and crops it to the image."""
    rows, cols = grid.shape
    pixels = grid[:, None, :, None].expand(rows, size, cols, size).reshape(rows * size, -1)
    return pixels[:height, :width]


def _level_grid(leaves: Tensor, values: Tensor, shape: tuple[int, int], fill, accumulate: bool):
    grid = torch.full(shape, fill, dtype=values.dtype)
    index = leaves[:, 1] * shape[1] + leaves[:, 2]
    grid.view(-1).index_put_((index,), values, accumulate=accumulate)
    return grid


def leaves_to_dense(
    leaves: Tensor,
    height: int,
    width: int,
    levels: int = DEFAULT_LEVELS,
    fill: int = IGNORE,
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """Paints leaves into an (H, W) map; each pixel takes the class of its deepest leaf.

    Pixels that no leaf covers keep `fill`.
    """
    leaves = _check_leaves(leaves, height, width, levels)
    sizes = block_sizes(levels)
    rows, cols = level_shape(height, width, 0, levels)
    # Painted in place, coarse to fine, into a map padded to whole level-0 blocks: each
    # level's leaves are blocks of a (rows, size, cols, size) view of it.
    out = torch.full((rows * sizes[0], cols * sizes[0]), fill, dtype=dtype)
    for level, size in enumerate(sizes):
        at_level = leaves[leaves[:, 0] == level]
        if len(at_level):
            blocks = out.view(out.shape[0] // size, size, out.shape[1] // size, size)
            blocks[at_level[:, 1], :, at_level[:, 2], :] = at_level[:, 3].to(dtype)[:, None, None]
    return out[:height, :width]


def leaf_coverage(leaves: Tensor, height: int, width: int, levels: int = DEFAULT_LEVELS) -> Tensor:
    """How many leaves cover each pixel: a valid quadtree covers every pixel exactly once."""
    leaves = _check_leaves(leaves, height, width, levels)
    count = torch.zeros((height, width), dtype=torch.int32)
    for level, size in enumerate(block_sizes(levels)):
        at_level = leaves[leaves[:, 0] == level]
        ones = torch.ones(len(at_level), dtype=torch.int32)
        grid = _level_grid(at_level, ones, level_shape(height, width, level, levels), 0, True)
        count += _expand_blocks(grid, size, height, width)
    return count
