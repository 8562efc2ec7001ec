"""The quadtree loss: cross-entropy at every level against the quadtree targets.

Each level is scored only at the sites it computed (under teacher forcing, the children of
the ground-truth composites) and only where its target is not ignore, so the loss is as
sparse as the decoder. Levels are averaged with equal weight, as in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from model.qgn import QGNOutput
from model.quadtree import IGNORE


def level_targets_at(output: QGNOutput, targets: list[Tensor]) -> list[Tensor]:
    """The target of every computed site, level by level."""
    found = []
    for level, computed in zip(output.levels, targets, strict=True):
        b, r, c = level.coords.unbind(dim=1)
        found.append(computed[b, r, c])
    return found


def quadtree_loss(output: QGNOutput, targets: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Mean over levels of each level's cross-entropy; also returns the per-level losses.

    `targets` are `dense_to_levels` maps stacked per level as (B, rows, cols) on the output's
    device. A level with no scored site contributes zero (and still joins the graph).
    """
    per_level = []
    for level, target in zip(output.levels, level_targets_at(output, targets), strict=True):
        if (target != IGNORE).any():
            per_level.append(F.cross_entropy(level.logits, target, ignore_index=IGNORE))
        else:
            per_level.append(level.logits.sum() * 0.0)
    return torch.stack(per_level).mean(), per_level
