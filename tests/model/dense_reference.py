"""A dense re-implementation of the QGN decoder under `all`, for testing the sparse one.

Every sparse operation has a dense twin with the same weights: the child upsampling is a 2×2
stride-2 transposed convolution, the skip projection a 1×1 convolution, a submanifold
convolution a `conv2d` over a map that is zero off the active sites. Under `all` the active
sites of a level are its in-image blocks, so the dense maps are multiplied by that mask.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from model.qgn import LEVELS, QGN
from model.quadtree import level_shape


def _norm(bn: torch.nn.BatchNorm1d, x: Tensor) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@torch.no_grad()
def dense_logits_all(model: QGN, images: Tensor) -> list[Tensor]:
    """Per level, dense (B, C + 1, rows, cols) logits of the padded grid under `all`."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, -width % 32, 0, -height % 32))
    features = model.encoder(padded)
    skips = [*features[3::-1], padded]
    x, logits = model.head([features[4]])
    out = [logits]
    x = x * _inside(x, height, width, 0)
    for level, stage in enumerate(model.stages, start=1):
        channels = stage.channels
        up = stage.upsample.weight.view(2, 2, channels, -1).permute(3, 2, 0, 1)
        x = F.conv_transpose2d(x, up, stride=2)
        x = x + F.conv2d(skips[level - 1], stage.skip.weight[:, :, None, None])
        inside = _inside(x, height, width, level)
        x = F.relu(_norm(stage.bn, x)) * inside
        for block in stage.blocks:
            h = F.conv2d(x, block.conv1.dense_weight(), padding=1)
            h = F.relu(_norm(block.bn1, h)) * inside
            h = _norm(block.bn2, F.conv2d(h, block.conv2.dense_weight(), padding=1))
            x = F.relu(h + x) * inside
        weight = stage.classifier.weight[:, :, None, None]
        out.append(F.conv2d(x, weight, stage.classifier.bias))
    assert len(out) == LEVELS
    return out


def _inside(x: Tensor, height: int, width: int, level: int) -> Tensor:
    rows, cols = level_shape(height, width, level, LEVELS)
    mask = torch.zeros_like(x[:, :1])
    mask[:, :, :rows, :cols] = 1
    return mask
