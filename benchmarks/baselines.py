"""Dense networks to measure QGN against, through the same harness as `QGN.predict`.

- `DenseQGN`: the QGN encoder with a dense decoder of the same widths and depths: what
  QGN-All computes, but with plain `conv2d` on every pixel of every level (a 2×2 stride-2
  transposed convolution upsamples, a 1×1 convolution projects the encoder skip, then
  BatchNorm, ReLU, the level's BasicBlocks and a 1×1 classifier at every level). It takes
  the QGN's own weights (`from_qgn`), so it is the one baseline with a meaningful mIoU.
- `DilatedASPP`: DeepLabv3 in the small: the same BasicBlock widths, output stride 8 (the
  stride-16 and stride-32 stages dilated by 2 and 4 instead), an ASPP head (rates 12/24/36,
  as DeepLabv3 uses at output stride 8) and logits upsampled bilinearly to every pixel.
- `torchvision_model`: torchvision's `deeplabv3_resnet50` / `lraspp_mobilenet_v3_large`,
  built without any weights, where torchvision imports.

`predict_dense` runs any of them on one uint8 image exactly as `QGN.predict` runs QGN: the
clock and the `MemoryProbe` window start before the image becomes a float batch and stop
when the uint8 mask is done. The others are untrained: memory and latency only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from model.encoder import BasicBlock as _BasicBlock
from model.encoder import ResNetEncoder, conv3x3, fold_all_batchnorms
from model.memory import MemoryProbe, NullProbe
from model.qgn import QGN, QGNConfig, to_batch


def _pad_to(x: Tensor, multiple: int) -> Tensor:
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return nn.functional.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def batch_norm_(norm: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """BatchNorm with running statistics, in place (as the sparse decoder's own)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


class DenseSegmenter(nn.Module):
    """What `predict_dense` runs: `forward(images, probe, size)` gives the (B, H, W) uint8
    mask of a float batch, `size` being the content's (H, W) when `images` arrive padded (to
    `pad_multiple`). A baseline writes `segment`, with the probe and the size filled in."""

    pad_multiple = 1

    def forward(
        self,
        images: Tensor,
        probe: MemoryProbe | NullProbe | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        height, width = size or images.shape[-2:]
        return self.segment(images, probe or NullProbe(), height, width)

    def segment(
        self, images: Tensor, probe: MemoryProbe | NullProbe, height: int, width: int
    ) -> Tensor:
        raise NotImplementedError


class DenseLevel(nn.Module):
    """One decoder level on the full grid: upsample, add the skip, blocks, classifier."""

    def __init__(
        self, in_channels: int, skip_channels: int, channels: int, num_logits: int, depth: int
    ):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, channels, 2, stride=2, bias=False)
        self.skip = nn.Conv2d(skip_channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(*[_BasicBlock(channels, channels) for _ in range(depth)])
        self.classifier = nn.Conv2d(channels, num_logits, 1)

    def forward(self, x: Tensor, skip: Tensor) -> tuple[Tensor, Tensor]:
        features = self.upsample(x).add_(self.skip(skip))
        features = self.blocks(batch_norm_(self.bn, features).relu_())
        return features, self.classifier(features)


class DenseQGN(DenseSegmenter):
    """QGN-All made dense: the same encoder, widths, depths and per-level classifiers.

    The mask follows QGN's reading rule (`QGNOutput.leaves`): under `all` every pixel takes
    the finest level's best real class, so no coarser level's logits outlive it.
    """

    def __init__(self, config: QGNConfig):
        super().__init__()
        from model.decoder import DenseHead

        self.num_logits = config.num_classes + 1
        self.encoder = ResNetEncoder(config.encoder_widths, config.encoder_depths)
        widths, depths = config.decoder_widths, config.decoder_depths
        self.head = DenseHead(config.encoder_widths[-1], widths[0], self.num_logits, depths[0])
        skip_channels = [*config.encoder_widths[3::-1], 3]
        self.levels = nn.ModuleList(
            DenseLevel(widths[i - 1], skip_channels[i - 1], widths[i], self.num_logits, depths[i])
            for i in range(1, len(widths))
        )

    @classmethod
    def from_qgn(cls, model: QGN) -> DenseQGN:
        """The dense twin of a QGN with its weights: under `all`, on an image whose sides
        are multiples of 32, it computes the same logits (so the trained weights' mIoU
        carries over)."""
        dense = cls(model.config)
        # The very same encoder and head (folded or not, as the QGN's are).
        dense.encoder = copy.deepcopy(model.encoder)
        dense.head = copy.deepcopy(model.head)
        with torch.no_grad():
            for level, stage in zip(dense.levels, model.stages, strict=True):
                channels = stage.channels
                up = stage.upsample.weight.view(2, 2, channels, -1).permute(3, 2, 0, 1)
                level.upsample.weight.copy_(up)
                level.skip.weight.copy_(stage.skip.weight[:, :, None, None])
                level.bn.load_state_dict(stage.bn.state_dict())
                for mine, theirs in zip(level.blocks, stage.blocks, strict=True):
                    mine.conv1.weight.copy_(theirs.conv1.dense_weight())
                    mine.conv2.weight.copy_(theirs.conv2.dense_weight())
                    mine.bn1.load_state_dict(theirs.bn1.state_dict())
                    mine.bn2.load_state_dict(theirs.bn2.state_dict())
                level.classifier.weight.copy_(stage.classifier.weight[:, :, None, None])
                level.classifier.bias.copy_(stage.classifier.bias)
        if getattr(model, "folded", False):
            fold_all_batchnorms(dense.levels)
        return dense.eval()

    pad_multiple = 32

    def segment(
        self, images: Tensor, probe: MemoryProbe | NullProbe, height: int, width: int
    ) -> Tensor:
        probe.begin_phase("encoder")
        padded = _pad_to(images, 32)
        features = self.encoder(padded)
        skips = [*features[3::-1], padded]
        del padded
        probe.begin_phase("level0")
        x, logits = self.head([features[4]])
        del features
        del logits
        for index, level in enumerate(self.levels):
            probe.begin_phase(f"level{index + 1}")
            x, logits = level(x, skips[index])
            skips[index] = None
        del x
        mask = logits[:, 1:].argmax(dim=1).to(torch.uint8)
        del logits
        return mask[:, :height, :width]


class DilatedBasicBlock(nn.Module):
    """BasicBlock with a dilation: the receptive field grows without lowering resolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out))
        return out.add_(self.shortcut(x)).relu_()


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1×1 branch, three dilated 3×3
    branches and an image-pooling branch, concatenated and projected."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__()

        def branch(kernel: int, rate: int) -> nn.Sequential:
            padding = 0 if kernel == 1 else rate
            return nn.Sequential(
                nn.Conv2d(
                    in_channels, channels, kernel, padding=padding, dilation=rate, bias=False
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList([branch(1, 1), *[branch(3, rate) for rate in rates]])
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([*(b(x) for b in self.branches), pooled], dim=1))


class DilatedASPP(DenseSegmenter):
    """A dilated ResNet at output stride 8 with a DeepLabv3 head, QGN's encoder widths."""

    output_stride = 8
    pad_multiple = 8

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 64, 96, 128),
        depths: tuple[int, ...] = (0, 1, 1, 1, 1),
        rates: tuple[int, ...] = (12, 24, 36),
    ):
        super().__init__()
        self.stem = nn.Sequential(
            conv3x3(3, widths[0], stride=2),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            *[DilatedBasicBlock(widths[0], widths[0]) for _ in range(depths[0])],
        )
        # Strides 4 and 8 as in the encoder; the stride-16 and -32 stages dilate instead.
        stages = []
        for i, (stride, dilation) in enumerate(((2, 1), (2, 1), (1, 2), (1, 4)), start=1):
            blocks = [DilatedBasicBlock(widths[i - 1], widths[i], stride, dilation)]
            blocks += [
                DilatedBasicBlock(widths[i], widths[i], 1, dilation)
                for _ in range(max(depths[i], 1) - 1)
            ]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.aspp = ASPP(widths[-1], widths[-1], rates)
        self.head = nn.Sequential(
            conv3x3(widths[-1], widths[-1]),
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[-1], num_classes, 1),
        )

    def segment(
        self, images: Tensor, probe: MemoryProbe | NullProbe, height: int, width: int
    ) -> Tensor:
        probe.begin_phase("encoder")
        x = self.stem(_pad_to(images, self.output_stride))
        for stage in self.stages:
            x = stage(x)
        probe.begin_phase("aspp")
        logits = self.head(self.aspp(x))
        del x
        probe.begin_phase("upsample")
        logits = nn.functional.interpolate(
            logits, scale_factor=self.output_stride, mode="bilinear", align_corners=False
        )
        probe.begin_phase("mask")
        return logits[:, :, :height, :width].argmax(dim=1).to(torch.uint8)


class TorchvisionSegmenter(DenseSegmenter):
    """A torchvision segmentation model behind the `DenseSegmenter` contract."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def segment(
        self, images: Tensor, probe: MemoryProbe | NullProbe, height: int, width: int
    ) -> Tensor:
        probe.begin_phase("network")
        logits = self.net(images)["out"]
        probe.begin_phase("mask")
        return logits[:, :, :height, :width].argmax(dim=1).to(torch.uint8)


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    """`deeplabv3_resnet50` or `lraspp_mobilenet_v3_large`, untrained (nothing downloaded).

    Raises ImportError (or whatever torchvision raises on import) where it cannot be used.
    """
    from torchvision.models import segmentation

    builders: dict[str, Callable[..., nn.Module]] = {
        "deeplabv3_resnet50": segmentation.deeplabv3_resnet50,
        "lraspp_mobilenet_v3_large": segmentation.lraspp_mobilenet_v3_large,
    }
    if name not in builders:
        raise KeyError(f"unknown torchvision model {name!r}; valid: {', '.join(builders)}")
    net = builders[name](weights=None, weights_backbone=None, num_classes=num_classes)
    return TorchvisionSegmenter(net)


def build_baseline(name: str, model: QGN) -> nn.Module:
    """A baseline by name, sized from the QGN it is compared with, in eval mode. `dense`
    takes the QGN's weights; the others are untrained (seeded). Where the QGN's BatchNorms
    are folded, the baseline's are too."""
    config = model.config
    torch.manual_seed(0)
    builders: dict[str, Callable[[], nn.Module]] = {
        "dense": lambda: DenseQGN.from_qgn(model),
        "dilated": lambda: DilatedASPP(
            config.num_classes, config.encoder_widths, config.encoder_depths
        ),
        "tv_deeplabv3_resnet50": lambda: torchvision_model(
            "deeplabv3_resnet50", config.num_classes
        ),
        "tv_lraspp_mobilenet_v3": lambda: torchvision_model(
            "lraspp_mobilenet_v3_large", config.num_classes
        ),
    }
    if name not in builders:
        raise KeyError(f"unknown baseline {name!r}; valid baselines: {', '.join(builders)}")
    net = builders[name]().eval()
    if getattr(model, "folded", False) and name != "dense":  # dense copies QGN's own layers
        fold_all_batchnorms(net)
    return net


BASELINES = ("dense", "dilated", "tv_deeplabv3_resnet50", "tv_lraspp_mobilenet_v3")


@torch.inference_mode()
def predict_dense(net: nn.Module, image: np.ndarray) -> dict:
    """Segments one (H, W, 3) uint8 image; returns the mask and what it cost, measured as
    `QGN.predict` measures (same clock span, same tracker window)."""
    start = time.perf_counter()
    with MemoryProbe("cpu") as probe:
        height, width = image.shape[:2]
        batch = to_batch(image, pad_to=getattr(net, "pad_multiple", 1))
        mask = net(batch, probe, size=(height, width))[0]
        del batch
    latency = time.perf_counter() - start
    return {
        "mask": mask,
        "peak_bytes": probe.peak_bytes,
        "latency_s": latency,
        "phase_peaks": dict(probe.phase_peaks),
        "phase_starts": dict(probe.phase_starts),
    }
