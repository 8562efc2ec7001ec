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
from dataclasses import dataclass

import torch

from model.encoder import STEM_BAND_ROWS

# spconv's int32 pairs, plus one offset's pairs widened to int64 while it is applied.
RULEBOOK_BYTES_PER_SITE = 2 * 9 * 4 + 2 * 8
COORD_BYTES_PER_SITE = 3 * 8 + 3 * 4
FLOAT_BYTES = 4
LIVE_TENSORS_PER_SITE = 5


def band_bytes_per_column(encoder_widths: tuple[int, ...]) -> float:
    """The stem's working band, per padded column: its float input rows and its output rows."""
    return (2 * STEM_BAND_ROWS + 2) * 3 * FLOAT_BYTES + STEM_BAND_ROWS * encoder_widths[
        0
    ] * FLOAT_BYTES / 2


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
    # The widths the per-site terms were derived from; `terms` needs them (`analytic` sets
    # them, a cost built from measured numbers may carry them).
    decoder_widths: tuple[int, ...] = ()

    @classmethod
    def analytic(cls, decoder_widths: tuple[int, ...], encoder_widths: tuple[int, ...]):
        site_bytes = [
            FLOAT_BYTES * LIVE_TENSORS_PER_SITE * width
            + RULEBOOK_BYTES_PER_SITE
            + COORD_BYTES_PER_SITE
            + (decoder_widths[level - 1] if level else 0)  # a parent's floats, per child
            for level, width in enumerate(decoder_widths)
        ]
        stage_bytes = [2 * 9 * width * width * FLOAT_BYTES for width in decoder_widths]
        # The uint8 pixels (3 B/pixel), the stride-2 map kept as a skip, and two stride-4 maps
        # of the first stage at its peak.
        per_pixel = (
            3 + FLOAT_BYTES * encoder_widths[0] / 4 + 2 * FLOAT_BYTES * encoder_widths[1] / 16
        )
        return cls(
            site_bytes,
            stage_bytes,
            per_pixel,
            0,
            band_bytes_per_column(encoder_widths),
            tuple(decoder_widths),
        )

    def min_budget_bytes(self, height: int, width: int) -> int:
        """The peak of an inference that propagates nothing: no budget below it can hold."""
        padded_width = -(-width // 32) * 32 + 2
        return math.ceil(
            self.base_bytes
            + self.base_bytes_per_pixel * padded_pixels(height, width)
            + self.band_bytes_per_column * padded_width
        )

    def decoder_bytes(self, active_sites: list[int]) -> list[int]:
        """Predicted working bytes of each level's stage for the given active sites."""
        return [
            (self.stage_bytes[level] + self.site_bytes[level] * count) if count else 0
            for level, count in enumerate(active_sites)
        ]

    def terms(self, active_sites: list[int]) -> list[dict]:
        """What each sparse level's predicted bytes are made of, for the given active sites:
        activations (the live floats of a sparse block, plus a parent's floats per child),
        rulebook (index pairs), coordinates, the fixed filter copies, and what calibration
        measured on top of the analytic per-site bytes. Level 0 (dense) and empty levels give
        their sites only. The analytic terms are those of `analytic`."""
        if not self.decoder_widths:
            raise ValueError(
                "terms need the decoder widths: build the cost with MemoryCost.analytic, or "
                "set decoder_widths (dataclasses.replace(cost, decoder_widths=...))"
            )
        widths = self.decoder_widths
        rows = []
        for level, sites in enumerate(active_sites):
            if level == 0 or sites == 0:
                rows.append({"level": level, "sites": sites})
                continue
            activations = FLOAT_BYTES * LIVE_TENSORS_PER_SITE * widths[level] + widths[level - 1]
            analytic = activations + RULEBOOK_BYTES_PER_SITE + COORD_BYTES_PER_SITE
            rows.append(
                {
                    "level": level,
                    "sites": sites,
                    "activations_bytes": sites * activations,
                    "rulebook_bytes": sites * RULEBOOK_BYTES_PER_SITE,
                    "coords_bytes": sites * COORD_BYTES_PER_SITE,
                    "filters_bytes": self.stage_bytes[level],
                    "calibration_extra_bytes": sites * max(self.site_bytes[level] - analytic, 0),
                }
            )
        return rows


def calibrate(model, device: torch.device | str, sizes=((128, 256), (256, 512))) -> MemoryCost:
    """Measures the cost terms of `model` on `device` and keeps the larger of measured and
    analytic per term. Runs two `all` and two refine-nothing inferences on random images."""
    from model.schemes import All, Budget

    analytic = MemoryCost.analytic(model.config.decoder_widths, model.config.encoder_widths)
    generator = torch.Generator().manual_seed(0)
    site_bytes = list(analytic.site_bytes)
    base = []
    for height, width in sizes:
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        run = model.predict(image, All())
        for level in range(1, len(site_bytes)):
            count = run.active_sites[level]
            phase = f"level{level}"
            measured = (
                run.phase_peaks[phase] - run.phase_starts[phase] - analytic.stage_bytes[level]
            )
            measured += FLOAT_BYTES * model.config.decoder_widths[level - 1] * count / 4
            site_bytes[level] = max(site_bytes[level], math.ceil(measured / max(count, 1)))
        nothing = model.predict(image, Budget(1))
        base.append((padded_pixels(height, width), nothing.peak_bytes))
    # The refine-nothing peak is measured, not guessed: it is the floor a budget is refused
    # below. Bytes per pixel are the highest ratio seen (fixed costs inflate it at small sizes,
    # so it over-covers larger ones) with 2 % of margin; the stem's band is added on top.
    band = band_bytes_per_column(model.config.encoder_widths)
    per_pixel = 1.02 * max(peak / pixels for pixels, peak in base)
    fixed = 0
    return MemoryCost(
        site_bytes, analytic.stage_bytes, per_pixel, fixed, band, analytic.decoder_widths
    )
