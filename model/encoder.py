"""A ResNet encoder without dilation: five dense feature maps at strides 2, 4, 8, 16, 32.

Contract: `forward(x)` takes a (B, 3, H, W) batch with H and W multiples of 32 and returns
a list of five maps; map i has `out_channels[i]` channels and stride `strides[i]`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """The two-convolution residual block of ResNet-18/34."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, dilation)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, dilation)
        self.bn2 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_layer(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # in place, as torchvision's ResNet does: one map less
        return self.relu(out)


def make_stage(
    in_channels: int,
    out_channels: int,
    depth: int,
    stride: int,
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride, norm_layer)]
    blocks += [BasicBlock(out_channels, out_channels, 1, norm_layer) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class ResNetEncoder(nn.Module):
    """A stride-2 stem followed by four stride-2 stages of BasicBlocks.

    `widths[i]` and `depths[i]` are the channels and block count at stride 2^(i+1); the stem
    is one stride-2 convolution plus `depths[0]` blocks (0 allowed).
    """

    strides = (2, 4, 8, 16, 32)

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 96, 128),
        depths: tuple[int, ...] = (0, 1, 1, 1, 1),
        in_channels: int = 3,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError(f"need 5 widths and 5 depths, got {widths} and {depths}")
        self.out_channels = tuple(widths)
        self.stem = nn.Sequential(
            conv3x3(in_channels, widths[0], stride=2),
            norm_layer(widths[0]),
            nn.ReLU(inplace=True),
            *[BasicBlock(widths[0], widths[0], 1, norm_layer) for _ in range(depths[0])],
        )
        self.stages = nn.ModuleList(
            make_stage(widths[i - 1], widths[i], max(depths[i], 1), 2, norm_layer)
            for i in range(1, 5)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """The five maps of a normalised float batch, whole (training and the reference
        path; `model.regions` computes the same maps from uint8 pixels window by window)."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"input sides must be multiples of 32, got {tuple(x.shape[-2:])}")
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def normalise(pixels: Tensor) -> Tensor:
    """uint8 pixels (channels on dim -3, or last for (N, 3) rows) as the network's floats."""
    channel_dim = -1 if pixels.ndim == 2 else -3
    shape = [1] * pixels.ndim
    shape[channel_dim] = 3
    mean = torch.tensor(IMAGE_MEAN, device=pixels.device).view(shape)
    std = torch.tensor(IMAGE_STD, device=pixels.device).view(shape)
    return (pixels.float() / 255.0 - mean) / std


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution that computes `norm(conv(x))` with the normaliser's running statistics."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    return fused


def fold_all_batchnorms(module: nn.Module) -> nn.Module:
    """Folds every (Conv2d, BatchNorm2d) pair of `module` in place, for inference: residual
    blocks' conv1/bn1 and conv2/bn2, and adjacent pairs in a Sequential. Each normalisation
    stops costing a feature map of memory and a pass over it."""
    for block in list(module.modules()):
        for conv, norm in (("conv1", "bn1"), ("conv2", "bn2")):
            first, second = getattr(block, conv, None), getattr(block, norm, None)
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                setattr(block, conv, fold_batchnorm(first, second))
                setattr(block, norm, nn.Identity())
        if isinstance(block, nn.Sequential):
            layers = list(block)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d):
                    block[i] = fold_batchnorm(layers[i], layers[i + 1])
                    block[i + 1] = nn.Identity()
    return module.eval()
