"""What an inference will cost in memory, before it runs: the basis of `scheme=budget`.

The decoder's peak is the peak of its costliest stage, and a stage's peak is linear in its
active sites. For the CPU path the terms are known exactly (`analytic`): inside a sparse
residual block five (N, D) float tensors live at once (the block input, the first
convolution's output, the second's output, and one offset's gathered inputs and product),
plus the rulebook (9 int32 input/output index pairs per site, one offset widened to int64
while in use) and the coordinates (3 int64 + 3 int32). A fixed cost per stage covers the
filter copies. Everything before the
decoder (the encoder, the dense level 0, the final mask) is linear in the padded pixel count.

`calibrate` measures the same terms on the device the model runs on (CUDA kernels differ):
per site it keeps the larger of measured and analytic, so predictions err on the side of the
budget; the refine-nothing floor (the smallest budget accepted) is the measured one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from model.regions import PIXEL_BAND_ROWS, recomputes

# spconv's int32 pairs, plus one offset's pairs widened to int64 while it is applied.
RULEBOOK_BYTES_PER_SITE = 2 * 9 * 4 + 2 * 8
COORD_BYTES_PER_SITE = 3 * 8 + 3 * 4
FLOAT_BYTES = 4
LIVE_TENSORS_PER_SITE = 5
# What `MemoryCost.terms` splits a sparse level's predicted bytes into.
COST_TERMS = ("activations", "rulebook", "coords", "filters", "recompute", "calibration_extra")
# The indices that map a recomputed level's sites to their tiles.
RECOMPUTE_BYTES_PER_SITE = 64
# The finished mask (uint8, padded to whole blocks), a padded copy the extrema pyramid starts
# from, and the pyramid (a third of a byte per pixel each way).
MASK_BYTES_PER_PIXEL = 3


def band_bytes_per_column(encoder_widths: tuple[int, ...]) -> float:
    """The first pass's working band, per padded column: one band of float pixels and the
    stride-2 rows it makes (`calibrate` measures the real figure)."""
    return PIXEL_BAND_ROWS * FLOAT_BYTES * (3 + encoder_widths[0] / 4)


def site_terms(decoder_widths: tuple[int, ...], level: int) -> tuple[int, int]:
    """A sparse level's analytic bytes per site beyond the rulebook and coordinates: its
    activations (the live floats of a block, plus a parent's floats per child) and the tile
    indices of a recomputed skip (levels 1 to 4)."""
    activations = FLOAT_BYTES * LIVE_TENSORS_PER_SITE * decoder_widths[level]
    activations += decoder_widths[level - 1] if level else 0
    index = RECOMPUTE_BYTES_PER_SITE if 0 < level < len(decoder_widths) - 1 else 0
    return activations, index


def held_bytes_per_pixel(encoder_widths: tuple[int, ...]) -> float:
    """The stride-8 and stride-16 maps, per padded pixel."""
    return FLOAT_BYTES * (encoder_widths[2] / 64 + encoder_widths[3] / 256)


def padded_width(width: int) -> int:
    return -(-width // 32) * 32


def padded_pixels(height: int, width: int) -> int:
    return (-(-height // 32) * 32) * (-(-width // 32) * 32)


@dataclass
class MemoryCost:
    """Bytes per active site and fixed bytes of each decoder stage (index = level), and the
    peak of an inference that refines nothing: linear in the padded pixels, plus the stem's
    band of rows, linear in the padded width (for a short image the band is all of it)."""

    site_bytes: list[int]
    stage_bytes: list[int]
    base_bytes_per_pixel: float
    base_bytes: int
    band_bytes_per_column: float = 0.0
    # What keeping the stride-8 and stride-16 maps whole adds to the floor (every scheme but
    # a small budget keeps them), per padded pixel.
    held_bytes_per_pixel: float = 0.0
    held_bytes: int = 0
    held_bytes_per_column: float = 0.0
    # The widths the per-site terms were derived from; `terms` needs them (`analytic` sets
    # them, a cost built from measured numbers may carry them).
    decoder_widths: tuple[int, ...] = ()
    # Per level, the working bytes of recomputing its skip at its sites, one chunk of tiles
    # at a time (`model.regions.recompute_costs`): levels 3 and 4 always, 1 and 2 when the
    # encoder did not keep their maps.
    recompute_bytes: tuple[int, ...] = ()
    recompute_tiles: tuple[int, ...] = ()  # tiles in such a chunk: fewer sites fill fewer
    num_logits: int = 32  # per site of a level's output (C + 1)

    @classmethod
    def analytic(
        cls,
        decoder_widths: tuple[int, ...],
        encoder_widths: tuple[int, ...],
        recompute_bytes: tuple[int, ...] = (),
        recompute_tiles: tuple[int, ...] = (),
        num_logits: int = 32,
    ):
        site_bytes = [
            sum(site_terms(decoder_widths, level)) + RULEBOOK_BYTES_PER_SITE + COORD_BYTES_PER_SITE
            for level in range(len(decoder_widths))
        ]
        stage_bytes = [2 * 9 * width * width * FLOAT_BYTES for width in decoder_widths]
        # The stride-32 map; the encoder's bands are per column.
        per_pixel = FLOAT_BYTES * encoder_widths[4] / 1024
        return cls(
            site_bytes=site_bytes,
            stage_bytes=stage_bytes,
            base_bytes_per_pixel=per_pixel,
            base_bytes=0,
            band_bytes_per_column=band_bytes_per_column(encoder_widths),
            held_bytes_per_pixel=held_bytes_per_pixel(encoder_widths),
            decoder_widths=tuple(decoder_widths),
            recompute_bytes=tuple(recompute_bytes),
            recompute_tiles=tuple(recompute_tiles),
            num_logits=num_logits,
        )

    def encoder_bytes(self, height: int, width: int) -> int:
        """The peak of the encoder and level 0 when nothing is kept whole."""
        return math.ceil(
            self.base_bytes
            + self.base_bytes_per_pixel * padded_pixels(height, width)
            + self.band_bytes_per_column * padded_width(width)
        )

    def mask_bytes(self, height: int, width: int) -> int:
        """The peak of painting the mask and finding its leaves."""
        return MASK_BYTES_PER_PIXEL * padded_pixels(height, width)

    def min_budget_bytes(self, height: int, width: int) -> int:
        """The peak of an inference that propagates nothing: no budget below it can hold."""
        return max(self.encoder_bytes(height, width), self.mask_bytes(height, width))

    def held_floor_bytes(self, height: int, width: int) -> int:
        """The peak of an inference that keeps the stride-8 and stride-16 maps whole and
        refines nothing: a budget below it has the encoder recompute them at sites instead."""
        held = math.ceil(
            self.held_bytes
            + self.held_bytes_per_pixel * padded_pixels(height, width)
            + self.held_bytes_per_column * padded_width(width)
        )
        return max(self.encoder_bytes(height, width) + held, self.mask_bytes(height, width))

    def fixed_stage_bytes(self, level: int, held: bool = True, sites: int | None = None) -> int:
        """A level's fixed working bytes: its filter copies, and the chunk of tiles its skip
        is recomputed in where it is (levels 3 and 4; 1 and 2 unless `held`): a whole chunk,
        or, for a known count of sites, no more tiles than sites."""
        extra = 0
        if recomputes(level, held) and self.recompute_bytes:
            extra = self.recompute_bytes[level]
            if sites is not None and self.recompute_tiles:
                extra = math.ceil(extra * min(1.0, sites / self.recompute_tiles[level]))
        return self.stage_bytes[level] + extra

    def run_peak_bytes(
        self, height: int, width: int, active_sites: list[int], held: bool = True
    ) -> int:
        """A bound of the peak of a run that refines `active_sites` per level: its floor, each
        level's stage on top of what is live when the level starts (the kept stride-8 and
        stride-16 maps up to level 2, the outputs of the levels before it) and the mask's
        bound on top of every level's outputs."""
        pixels = padded_pixels(height, width)
        floor = (
            self.held_floor_bytes(height, width) if held else self.min_budget_bytes(height, width)
        )
        kept = math.ceil(self.held_bytes_per_pixel * pixels) if held else 0
        output_bytes = 3 * 8 + FLOAT_BYTES * self.num_logits + 1  # coordinates, logits, flag
        worst, outputs = floor, 0
        for level, stage in enumerate(self.decoder_bytes(active_sites, held)):
            worst = max(worst, outputs + (kept if level <= 2 else 0) + stage)
            outputs += output_bytes * active_sites[level]
        return max(worst, outputs + self.mask_bytes(height, width))

    def decoder_bytes(self, active_sites: list[int], held: bool = True) -> list[int]:
        """Predicted working bytes of each level's stage for the given active sites."""
        return [
            (self.fixed_stage_bytes(level, held, count) + self.site_bytes[level] * count)
            if count
            else 0
            for level, count in enumerate(active_sites)
        ]

    def terms(self, active_sites: list[int]) -> list[dict]:
        """What each sparse level's predicted bytes are made of, for the given active sites:
        activations (the live floats of a sparse block, plus a parent's floats per child),
        rulebook (index pairs), coordinates, the fixed filter copies, recomputing the skip at
        the sites (tile indices per site, one chunk of tiles; levels 1 and 2 as when the
        encoder keeps their maps) and what calibration measured on top of the analytic
        per-site bytes. Level 0 (dense) and empty levels give their sites only. The analytic
        terms are those of `analytic`; they are `COST_TERMS`."""
        if not self.decoder_widths:
            raise ValueError(
                "terms need the decoder widths: build the cost with MemoryCost.analytic, or "
                "set decoder_widths (dataclasses.replace(cost, decoder_widths=...))"
            )
        rows = []
        for level, sites in enumerate(active_sites):
            if level == 0 or sites == 0:
                rows.append({"level": level, "sites": sites})
                continue
            activations, index = site_terms(self.decoder_widths, level)
            analytic = activations + RULEBOOK_BYTES_PER_SITE + COORD_BYTES_PER_SITE + index
            rows.append(
                {
                    "level": level,
                    "sites": sites,
                    "activations_bytes": sites * activations,
                    "rulebook_bytes": sites * RULEBOOK_BYTES_PER_SITE,
                    "coords_bytes": sites * COORD_BYTES_PER_SITE,
                    "filters_bytes": self.stage_bytes[level],
                    "recompute_bytes": sites * index
                    + self.fixed_stage_bytes(level, sites=sites)
                    - self.stage_bytes[level],
                    "calibration_extra_bytes": sites * max(self.site_bytes[level] - analytic, 0),
                }
            )
        return rows


# The floors are fitted over these shapes, from 16:1 tall to 1:16 wide: the floors are not
# exactly linear in pixels and columns (oneDNN's buffers depend on the shapes), and a fit over
# tall images alone under-covered wide ones. Over 64×64 … 2048×4096 the fitted floors are
# 1.07–2.4× the measured ones (tests/model/test_budget.py checks they never fall below).
FLOOR_SIZES = (
    (512, 32), (512, 256), (768, 128), (1024, 64), (2048, 128), (128, 2048), (256, 1024), (512, 512)
)  # fmt: skip


def before_mask(prediction) -> int:
    """The peak of every phase of an inference but the mask's (`mask_bytes` bounds it)."""
    return max(peak for phase, peak in prediction.phase_peaks.items() if phase != "mask")


def fit_floor(peaks: list[tuple[int, int, int]]) -> tuple[int, float, float]:
    """(fixed, per padded pixel, per padded column) bytes that cover every (height, width,
    peak) given: a least-squares fit, no term negative, its fixed part raised by the largest
    shortfall, everything plus 2 %."""
    design = torch.tensor(
        [[1.0, padded_pixels(h, w), padded_width(w)] for h, w, _ in peaks], dtype=torch.float64
    )
    target = torch.tensor([[float(p)] for _, _, p in peaks], dtype=torch.float64)
    terms = torch.linalg.lstsq(design, target).solution[:, 0].clamp(min=0)
    shortfall = float((target[:, 0] - design @ terms).max().clamp(min=0))
    fixed, per_pixel, per_column = terms.tolist()
    return math.ceil(1.02 * (fixed + shortfall)), 1.02 * per_pixel, 1.02 * per_column


def calibrate(model, device: torch.device | str, sizes=((128, 256), (256, 512))) -> MemoryCost:
    """Measures the cost terms of `model` on `device` and keeps the larger of measured and
    analytic per term. Runs, per size, an `all` inference and two that refine nothing, one
    keeping the encoder's stride-8 and stride-16 maps (the held floor) and one not (the
    floor), on random images."""
    from model.schemes import All, Budget, Nothing

    analytic = model.analytic_cost()
    generator = torch.Generator().manual_seed(0)
    site_bytes = list(analytic.site_bytes)
    for height, width in sizes:
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        run = model.predict(image, All())
        for level in range(1, len(site_bytes)):
            count = run.active_sites[level]
            phase = f"level{level}"
            measured = (
                run.phase_peaks[phase] - run.phase_starts[phase] - analytic.fixed_stage_bytes(level)
            )
            measured += FLOAT_BYTES * model.config.decoder_widths[level - 1] * count / 4
            site_bytes[level] = max(site_bytes[level], math.ceil(measured / max(count, 1)))
    # Both floors are measured, not guessed (the first is the floor a budget is refused
    # below): each is fitted as fixed + per pixel + per column (the encoder's bands) over
    # FLOOR_SIZES, raised until it covers every image measured, plus 2 %.
    lean, held = [], []
    for height, width in FLOOR_SIZES:
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        lean.append((height, width, before_mask(model.predict(image, Budget(1)))))
        held.append((height, width, before_mask(model.predict(image, Nothing()))))
    fixed, per_pixel, per_column = fit_floor(lean)
    cost = replace(
        analytic,
        site_bytes=site_bytes,
        base_bytes=fixed,
        base_bytes_per_pixel=per_pixel,
        band_bytes_per_column=per_column,
    )
    excess = [(h, w, peak - cost.encoder_bytes(h, w)) for h, w, peak in held]
    cost.held_bytes, per_pixel, cost.held_bytes_per_column = fit_floor(excess)
    # The held maps are a known number of bytes a pixel; a fit over small images can fall
    # below it, and a held floor below the maps it holds would let a budget overrun.
    cost.held_bytes_per_pixel = max(per_pixel, 1.02 * analytic.held_bytes_per_pixel)
    return cost
