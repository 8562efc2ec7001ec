"""The Quadtree Generating Network (Chitta, Alvarez, Hebert, WACV 2020), built on spconv.

A dense ResNet encoder, a dense head at stride 32 (level 0), then one sparse refinement stage
per finer level down to single pixels (level 5). Which sites a level refines is decided by a
propagation scheme passed at call time (`model.schemes`), so memory per call is a knob that
needs no retraining. `predict()` runs one image and returns its mask, its canonical quadtree
and what the decoder spent per level.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from model import cancellation
from model.cost import MemoryCost
from model.decoder import DenseHead, RefinementStage
from model.encoder import IMAGE_MEAN, IMAGE_STD, ResNetEncoder, fold_all_batchnorms
from model.memory import MemoryProbe, NullProbe
from model.quadtree import (
    block_sizes,
    canonical_leaves,
    leaf_rows,
    leaves_to_dense,
    level_shape,
)
from model.regions import DenseSkip, encoder_from_pixels, recompute_costs
from model.schemes import LevelView, Scheme, SchemeRun

LEVELS = 6


@dataclass(frozen=True)
class QGNConfig:
    """Everything needed to rebuild the network; stored in the model card."""

    num_classes: int
    encoder_widths: tuple[int, ...] = (16, 32, 64, 96, 128)
    encoder_depths: tuple[int, ...] = (0, 1, 1, 1, 1)
    # Level 0 (stride 32, dense) to level 5 (pixels, sparse); multiples of 8 suit spconv.
    decoder_widths: tuple[int, ...] = (128, 96, 64, 32, 16, 16)
    decoder_depths: tuple[int, ...] = (1, 1, 1, 1, 1, 1)
    # Dilations of the dense head's context blocks (`DenseHead`); none in older cards.
    head_dilations: tuple[int, ...] = ()
    # (rows, cols) grids of the dense head's pyramid pooling (`PyramidContext`); none in
    # older cards.
    head_pool_grids: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.decoder_widths) != LEVELS or len(self.decoder_depths) != LEVELS:
            raise ValueError(f"need {LEVELS} decoder widths and depths (one per level)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QGNConfig:
        def frozen(value):
            return tuple(frozen(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: frozen(v) for k, v in data.items()})


@dataclass
class LevelOutput:
    """The sites one level computed, their logits, and which of them propagated (what the
    loss reads)."""

    coords: Tensor  # (N, 3) batch, row, col
    logits: Tensor  # (N, C + 1)
    propagate: Tensor  # (N,) bool

    @property
    def sites(self) -> int:
        return len(self.coords)

    def leaves(self, level: int, batch: int) -> Tensor:
        return self.compact().leaves(level, batch)

    def compact(self) -> LevelLeaves:
        leaf = ~self.propagate
        classes = self.logits[leaf, 1:].argmax(dim=1)
        return LevelLeaves(self.sites, self.coords[leaf].int(), classes.int())


@dataclass
class LevelLeaves:
    """A level as inference holds it until the mask is painted: its leaves only, in int32.
    Every site's coordinates and logits cost 77 bytes a site of every level up to the mask
    (2.2 of τ 0.1's 11.6 MiB at 512×1024); a leaf costs 16."""

    sites: int  # computed
    coords: Tensor  # (K, 3) batch, row, col of the leaves
    classes: Tensor  # (K,) best real class

    def leaves(self, level: int, batch: int) -> Tensor:
        mine = self.coords[:, 0] == batch
        rows, cols = self.coords[mine, 1].long(), self.coords[mine, 2].long()
        return leaf_rows(level, rows, cols, self.classes[mine].long())


@dataclass
class QGNOutput:
    levels: list[LevelOutput] | list[LevelLeaves]
    height: int
    width: int
    held_skips: bool = True  # the encoder kept its stride-8 and stride-16 maps whole

    def active_sites(self) -> list[int]:
        return [level.sites for level in self.levels]

    def leaves(self, batch: int = 0) -> Tensor:
        """The predicted quadtree of one image, rows of (level, row, col, class).

        The reading rule: each pixel takes the best real class of the deepest computed site
        that covers it. The leaves are so the computed sites that did not propagate (a
        propagated site's children are all computed, so they tile the image): under `pc` the
        walk down the predicted composites, under `all` level 5 everywhere (the paper's
        QGN-All), thresholds and budgets in between. More refinement can thus correct a block
        wrongly called uniform. They are not minimal; the mask's canonical leaves are.
        """
        found = [level.leaves(index, batch) for index, level in enumerate(self.levels)]
        return torch.cat(found).cpu()


@dataclass
class Prediction:
    """One image's result: the dense mask, its canonical quadtree, what ran and what it
    cost."""

    mask: Tensor  # (H, W) class ids
    leaves: Tensor  # (N, 4) canonical leaves of `mask`
    active_sites: list[int]
    in_image_sites: list[int]
    decoder_bytes: list[int]
    peak_bytes: int
    latency_s: float
    device: str
    scheme: SchemeRun
    phase_peaks: dict[str, int] = field(default_factory=dict)
    phase_starts: dict[str, int] = field(default_factory=dict)

    @property
    def active_fraction(self) -> list[float]:
        return [a / max(n, 1) for a, n in zip(self.active_sites, self.in_image_sites, strict=True)]


def as_image(image: np.ndarray | Tensor) -> Tensor:
    """An (H, W, 3) uint8 RGB image as a tensor; anything else raises, saying what it got."""
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got {tuple(image.shape)} {image.dtype}"
        )
    return image


def to_batch(
    image: np.ndarray | Tensor, device: torch.device | str = "cpu", pad_to: int = 1
) -> Tensor:
    """An (H, W, 3) uint8 image as a normalised (1, 3, H', W') float batch, its sides padded
    with zeros up to a multiple of `pad_to`. Filled one channel at a time, so the only large
    allocation is the batch itself."""
    image = as_image(image)
    height, width = image.shape[:2]
    image = image.to(device)
    batch = torch.zeros(
        (1, 3, height + (-height % pad_to), width + (-width % pad_to)), device=image.device
    )
    for channel in range(3):
        plane = batch[0, channel, :height, :width]
        plane.copy_(image[:, :, channel]).div_(255.0)
        plane.sub_(IMAGE_MEAN[channel]).div_(IMAGE_STD[channel])
    return batch


def to_pixels(image: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """An (H, W, 3) uint8 image as the (1, H, W, 3) uint8 pixels `predict` feeds the network:
    a view of the caller's image on the CPU (no copy: 3 bytes a pixel stay the caller's)."""
    return as_image(image).to(device).unsqueeze(0)


class QGN(nn.Module):
    def __init__(self, config: QGNConfig):
        super().__init__()
        self.config = config
        self.num_logits = config.num_classes + 1
        self.encoder = ResNetEncoder(config.encoder_widths, config.encoder_depths)
        widths, depths = config.decoder_widths, config.decoder_depths
        self.head = DenseHead(
            config.encoder_widths[-1],
            widths[0],
            self.num_logits,
            depths[0],
            config.head_dilations,
            config.head_pool_grids,
        )
        # Level l's skip: encoder stride 32 / 2^l; level 5 (stride 1) reads the image itself.
        skip_channels = [*config.encoder_widths[3::-1], 3]
        self.stages = nn.ModuleList(
            RefinementStage(
                widths[i - 1], skip_channels[i - 1], widths[i], self.num_logits, depths[i], f"l{i}"
            )
            for i in range(1, LEVELS)
        )
        self.cost = self.analytic_cost()
        self.folded = False

    def analytic_cost(self) -> MemoryCost:
        """The memory cost derived from the architecture alone (`calibrate` measures on top)."""
        config = self.config
        return MemoryCost.analytic(
            config.decoder_widths,
            config.encoder_widths,
            *recompute_costs(self.encoder),
            self.num_logits,
        )

    def fold_batchnorms(self) -> QGN:
        """Folds the dense layers' BatchNorms into their convolutions: inference only (the
        model can no longer train), less memory and time. Returns the model, in eval mode."""
        fold_all_batchnorms(self.encoder)
        fold_all_batchnorms(self.head)
        self.folded = True
        return self.eval()

    def train(self, mode: bool = True) -> QGN:
        if mode and getattr(self, "folded", False):
            raise RuntimeError(
                "this model's BatchNorms are folded for inference; reload it to train"
            )
        return super().train(mode)

    def forward(
        self,
        images: Tensor,
        scheme: Scheme,
        probe: MemoryProbe | NullProbe | None = None,
        leaves_only: bool = False,
    ) -> QGNOutput:
        """Runs the network on a batch of any size; sides are padded to 32.

        `images` is a normalised (B, 3, H, W) float batch, whose encoder maps are computed
        whole (training), or (B, H, W, 3) uint8 pixels (`to_pixels`, inference only), from
        which `model.regions` computes the same maps without ever holding those at strides
        2 and 4 whole: they are recomputed at the sites of levels 3 and 4, and level 5 reads
        the pixels at its sites. With `leaves_only` each level keeps only its leaves
        (`LevelLeaves`) once the next level is chosen: all a mask needs.
        """
        probe = probe or NullProbe()
        probe.begin_phase("encoder")
        if images.dtype == torch.uint8:
            if self.training:
                raise RuntimeError("uint8 pixels are for inference: call model.eval() first")
            batch, height, width = images.shape[:3]
            cost = self.cost
            hold = scheme.holds_skips(
                cost.held_floor_bytes(height, width), cost.kept_bytes(height, width)
            )
            deepest, skips = encoder_from_pixels(self.encoder, images, hold, probe)
        else:
            batch, (height, width) = images.shape[0], images.shape[-2:]
            pad_h, pad_w = -height % 32, -width % 32
            padded = nn.functional.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
            features = self.encoder(padded)
            deepest, hold = features[4], True
            skips = [DenseSkip(map) for map in [*features[3::-1], padded]]
            del features, padded
        padded_size = (height + (-height % 32), width + (-width % 32))

        probe.begin_phase("level0")
        head_input = [deepest]
        del deepest
        dense_features, dense_logits = self.head(head_input)
        rows, cols = level_shape(height, width, 0, LEVELS)
        grid = torch.stack(
            torch.meshgrid(
                torch.arange(batch), torch.arange(rows), torch.arange(cols), indexing="ij"
            ),
            dim=-1,
        )
        # int32 coordinates: spconv's own dtype, so that a level's sites are indexed by one copy.
        coords = grid.reshape(-1, 3).to(images.device, torch.int32)
        b, r, c = coords.unbind(dim=1)
        site_features = dense_features.permute(0, 2, 3, 1)[b, r, c]
        logits = dense_logits.permute(0, 2, 3, 1)[b, r, c]
        del dense_features, dense_logits

        levels = []
        mask_bytes = self.cost.mask_bytes(height, width)
        for level in range(LEVELS):
            cancellation.check()
            last = level == LEVELS - 1
            if last:
                propagate = torch.zeros(len(coords), dtype=torch.bool, device=coords.device)
            else:
                view = LevelView(
                    level=level,
                    logits=logits.detach(),
                    coords=coords,
                    live_bytes=probe.live_bytes(),
                    child_site_bytes=self.cost.site_bytes[level + 1],
                    child_stage_bytes=self.cost.fixed_stage_bytes(level + 1, hold) + mask_bytes,
                )
                propagate = scheme.select(view)
                del view  # it holds the logits and coordinates
            output = LevelOutput(coords, logits, propagate)
            levels.append(output.compact() if leaves_only else output)
            if last:
                break
            parents = [site_features[propagate]]
            parent_coords = coords[propagate]
            del site_features, coords, logits, propagate, output
            probe.begin_phase(f"level{level + 1}")
            site_features, coords, logits = self.stages[level](  # noqa: RUF059 (next level)
                parents,
                parent_coords,
                skips[level],
                level_shape(height, width, level + 1, LEVELS),
                level_shape(*padded_size, level + 1, LEVELS),
                batch,
            )
            skips[level] = None
        return QGNOutput(levels, height, width, hold)

    @torch.inference_mode()
    def predict(self, image: np.ndarray | Tensor, scheme: Scheme) -> Prediction:
        """Segments one (H, W, 3) uint8 image; peak memory covers everything from the
        uploaded pixels to the canonical leaves of the finished mask."""
        if self.training:
            raise RuntimeError("call model.eval() before predict()")
        device = next(self.parameters()).device
        start = time.perf_counter()
        with MemoryProbe(device) as probe:
            height, width = image.shape[:2]
            pixels = to_pixels(image, device)
            output = self(pixels, scheme, probe, leaves_only=True)
            del pixels
            cancellation.check()
            probe.begin_phase("mask")
            mask_dtype = torch.uint8 if self.config.num_classes <= 255 else torch.int64
            mask = leaves_to_dense(output.leaves(0), height, width, LEVELS, dtype=mask_dtype)
            active, held = output.active_sites(), output.held_skips
            del output
            leaves = canonical_leaves(mask, LEVELS)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        latency = time.perf_counter() - start
        in_image = [math.prod(level_shape(height, width, level, LEVELS)) for level in range(LEVELS)]
        return Prediction(
            mask=mask.cpu(),
            leaves=leaves.cpu(),
            active_sites=active,
            in_image_sites=in_image,
            decoder_bytes=self.cost.decoder_bytes(active, held),
            peak_bytes=probe.peak_bytes,
            latency_s=latency,
            device=device.type,
            scheme=scheme.ran(),
            phase_peaks=dict(probe.phase_peaks),
            phase_starts=dict(probe.phase_starts),
        )


def qgn_tiny(num_classes: int = 12) -> QGN:
    """Unit tests: a few thousand parameters, fast on any image."""
    return QGN(
        QGNConfig(
            num_classes=num_classes,
            encoder_widths=(8, 8, 16, 16, 16),
            encoder_depths=(0, 1, 1, 1, 1),
            decoder_widths=(16, 16, 8, 8, 8, 8),
            decoder_depths=(0, 1, 1, 1, 1, 1),
        )
    )


def qgn_small(num_classes: int = 12) -> QGN:
    """The served model: small enough to train on a 2-core CPU."""
    return QGN(
        QGNConfig(
            num_classes=num_classes,
            head_dilations=(2, 4),
            head_pool_grids=((1, 2), (2, 4), (4, 8)),
        )
    )


MODELS = {"qgn_tiny": qgn_tiny, "qgn_small": qgn_small}
BLOCK_SIZES = block_sizes(LEVELS)
