"""The QGN decoder: a dense head at stride 32, then one sparse refinement stage per level.

A stage receives the sites its parent level propagated, creates their four children by
indexing (each parent feature goes through one linear map per child position, which is a 2×2
stride-2 transposed convolution evaluated only where it is needed), adds the encoder skip
feature read at the children, and runs submanifold residual blocks on the active sites only.
Each level ends in a 1×1 head predicting C + 1 logits (0 = composite).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.encoder import BasicBlock
from model.regions import SkipSource
from model.sparse import ActiveSites, SubmanifoldConv2d, records_autograd

# Child k of parent (row, col) sits at (2 row + dy, 2 col + dx), k = 2 dy + dx.
CHILD_OFFSETS = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])


class DenseHead(nn.Module):
    """Level 0: dense features and logits at stride 32.

    `context_dilations` adds one dilated residual block per entry after the plain ones: at
    stride 32 they widen the receptive field by 768 pixels for 1 MiB a map at 1024×2048, so
    that a road or a pavement twice as large (1024×2048 against 512×1024) is still seen with
    its surroundings. They start as the identity (last normalisation scaled by zero), so
    weights trained without them load and predict unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_logits: int,
        depth: int = 1,
        context_dilations: tuple[int, ...] = (),
        pool_grids: tuple[tuple[int, int], ...] = (),
    ):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*[BasicBlock(channels, channels) for _ in range(depth)])
        self.context = nn.Sequential(
            *[BasicBlock(channels, channels, dilation=d) for d in context_dilations]
        )
        for block in self.context:
            nn.init.zeros_(block.bn2.weight)
        self.pyramid = PyramidContext(channels, pool_grids) if pool_grids else None
        self.classifier = nn.Conv2d(channels, num_logits, 1)

    def forward(self, inputs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """`inputs` holds the stride-32 map alone and is emptied: the head owns the map, so
        that it is freed once projected, and each block's input once the next block has run
        (a chain of calls would hold every block's input to the end): two maps fewer at
        the head's peak, which sets the request's peak at 1024×2048 (`docs/memory.md`)."""
        x = self.project(inputs.pop())
        for block in (*self.blocks, *self.context):
            x = block(x)
        if self.pyramid is not None:
            x = self.pyramid(x)
        return x, self.classifier(x)


class PyramidContext(nn.Module):
    """Whole-image context for the dense head (PSPNet's pyramid pooling): the stride-32 map
    averaged over grids of bins that are a fixed share of the image, reduced, brought back to
    the map's size and added to it. A large region is then read with the same share of the
    image around it at 1024×2048 as at 512×1024, where dilated blocks see half as much of it.
    The sum starts as the identity (its last convolution is zero), so weights trained without
    it load and predict unchanged; the maps it adds are a quarter of the channels per grid, at
    stride 32."""

    def __init__(self, channels: int, grids: tuple[tuple[int, int], ...]):
        super().__init__()
        self.grids = [tuple(grid) for grid in grids]
        reduced = max(1, channels // 4)
        self.reduce = nn.ModuleList(nn.Conv2d(channels, reduced, 1) for _ in self.grids)
        self.merge = nn.Conv2d(reduced * len(self.grids), channels, 1)
        nn.init.zeros_(self.merge.weight)
        nn.init.zeros_(self.merge.bias)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            nn.functional.interpolate(
                reduce(nn.functional.adaptive_avg_pool2d(x, grid)).relu_(),
                size=size,
                mode="bilinear",
                align_corners=False,
            )
            for grid, reduce in zip(self.grids, self.reduce, strict=True)
        ]
        return self.merge(torch.cat(pooled, dim=1)).add_(x)


def folded_norm(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """A BatchNorm at inference as the affine map it is: (scale, shift) per channel."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def batch_norm_(norm: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm over active sites, in place at inference (it is then an affine map, and
    the decoder's peak memory is what the budget scheme sells). In training, a level with
    under two sites uses the running statistics instead of raising."""
    if not norm.training:
        scale, shift = folded_norm(norm)
        return x.mul_(scale).add_(shift)
    if x.shape[0] > 1:
        return norm(x)
    return nn.functional.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
    )


class SparseBasicBlock(nn.Module):
    """BasicBlock on active sites: two submanifold 3×3 convolutions and a residual.

    At inference on the CPU the second convolution adds into the block's input (which the
    block then owns: the decoder passes each block a tensor nothing else reads), so a block
    holds two (sites, channels) tensors at once, not three."""

    def __init__(self, channels: int, key: str):
        super().__init__()
        self.conv1 = SubmanifoldConv2d(channels, channels, key)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = SubmanifoldConv2d(channels, channels, key)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor, sites: ActiveSites) -> Tensor:
        hidden = batch_norm_(self.bn1, self.conv1(x, sites)).relu_()
        if not (self.training or x.is_cuda or records_autograd(x, hidden)):
            return self.conv2.add_into_(x, hidden, sites, *folded_norm(self.bn2)).relu_()
        out = self.conv2(hidden, sites)
        del hidden
        out = batch_norm_(self.bn2, out)
        return out.add_(x).relu_()


def children_of(parents: Tensor, in_image: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Coordinates of the four children of each (batch, row, col) parent, and for each child
    the index of its parent; children whose block lies outside the image are dropped."""
    count = parents.shape[0]
    offsets = CHILD_OFFSETS.to(parents.device, parents.dtype)
    rows = (2 * parents[:, 1:2] + offsets[:, 0]).reshape(-1)
    cols = (2 * parents[:, 2:3] + offsets[:, 1]).reshape(-1)
    batch = parents[:, 0:1].expand(count, 4).reshape(-1)
    inside = (rows < in_image[0]) & (cols < in_image[1])
    children = torch.stack([batch, rows, cols], dim=1)[inside]
    slot = torch.arange(count * 4, device=parents.device)[inside]
    return children, slot


class RefinementStage(nn.Module):
    """One finer quadtree level, computed on the children of the propagated parents."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        channels: int,
        num_logits: int,
        depth: int,
        key: str,
    ):
        super().__init__()
        self.channels = channels
        self.key = key
        self.upsample = nn.Linear(in_channels, 4 * channels, bias=False)
        self.skip = nn.Linear(skip_channels, channels, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.blocks = nn.ModuleList(SparseBasicBlock(channels, key) for _ in range(depth))
        self.classifier = nn.Linear(channels, num_logits)

    def forward(
        self,
        parents: list[Tensor],
        parent_coords: Tensor,
        skip: SkipSource,
        in_image: tuple[int, int],
        grid: tuple[int, int],
        batch_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (features, coords, logits) of the children that lie in `in_image`;
        `grid` is the level's padded grid. `parents` holds the parents' features alone and is
        emptied: the stage owns them, so that they are freed once upsampled and do not sit
        under the level's convolutions (a fifth of level 4's bytes a site)."""
        coords, slot = children_of(parent_coords, in_image)
        parent_features = parents.pop()
        if len(coords) == 0:
            skip.release()
            empty = parent_features.new_zeros((0, self.channels))
            return empty, coords, self.classifier(empty)
        features = self.upsample(parent_features).reshape(-1, self.channels)
        del parent_features
        if len(slot) < len(features):
            features = features[slot]
        del slot
        # Added as it is made, not held beside the features (at levels 1 and 2 it would
        # outweigh a residual block's two tensors).
        features = skip.add_projected_(features, coords, self.skip.weight)
        skip.release()
        features = batch_norm_(self.bn, features).relu_()
        sites = ActiveSites(coords, grid, batch_size, self.key)
        for block in self.blocks:
            features = block(features, sites)
        return features, coords, self.classifier(features)
