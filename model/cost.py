"""What an inference will cost in memory, before it runs: the basis of `scheme=budget`.

The decoder's peak is the peak of its costliest stage, and a stage's peak is linear in its
active sites. For the CPU path the terms are known exactly (`analytic`): inside a sparse
residual block two (N, D) float tensors live at once (the block input, into which the second
convolution adds, and the first convolution's output; the parents' features are freed once
upsampled), plus the rulebook (int32 input/output pairs, at most 48 bytes a site while it is
built: `model.sparse.neighbour_pairs`) and the coordinates (3 int32, shared with spconv). A
fixed cost per stage covers the filter copies and one chunk of an offset's gathered inputs,
their product and their int64 indices (`model.sparse.gather_chunk_bytes`), or of the
rulebook's search, whichever is larger.

Before the decoder, each phase is bounded on its own by fixed + per padded pixel + per padded
column bytes (`Linear`): the streamed encoder (its bands follow the columns), the last stage
streamed over the kept stride-16 map, and the dense head at level 0. A floor is the largest
of its phases and the mask's bound: one straight line for all of them could not be both an
upper bound at 1×4096 and honest at 1024×2048.

`calibrate` measures the same terms on the device the model runs on (CUDA kernels differ):
per site it keeps the larger of measured and analytic, so predictions err on the side of the
budget; the floors are fitted on measured phases, each a true upper bound of what was
measured and of larger images.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch

from model.regions import KEPT_DTYPE, PIXEL_BAND_ROWS, recomputes
from model.sparse import PAIR_SEARCH_CHUNK_BYTES, RULEBOOK_BYTES_PER_SITE, gather_chunk_bytes

# int32 (batch, row, col): the decoder's coordinates are spconv's indices, one copy.
COORD_BYTES_PER_SITE = 3 * 4
FLOAT_BYTES = 4
KEPT_BYTES = torch.finfo(KEPT_DTYPE).bits // 8  # a value of the kept stride-8 and -16 maps
LIVE_TENSORS_PER_SITE = 2
# What a request may rely on (served by `/v1/model`; tests/model/test_memory_promise.py and
# tests/server/test_memory_promise.py check it over random and thin shapes).
MEMORY_GUARANTEE = {
    "counted": "peak_memory_bytes: the most bytes held at once, during one inference, of what "
    "torch's allocators gave the request's work (its thread and torch's intra-op threads), "
    "from the pixels entering the model to the mask's quadtree; weights and anything "
    "allocated before the request are not counted. On the CPU the decoded upload (3 bytes a "
    "pixel) is read in place and not counted; on CUDA its copy on the device is counted and "
    "host memory is not.",
    "budget": "scheme=budget with budget_mb >= the image's min_budget_mb is always accepted and "
    "peak_memory_bytes never exceeds budget_mb MiB.",
    "cap": "With QGN_MEMORY_BUDGET_MB, no request of any scheme exceeds it; capped is true, "
    "with the cap as budget_mb, whenever the cap dropped a site or had the encoder keep no "
    "map whole.",
    "all": "scheme=all never exceeds the peak admission reserves for it.",
    "how": "The cost model is calibrated on the serving device at start (per-site bytes and "
    "the refine-nothing floors, fitted as upper bounds over thin, small and large shapes); "
    "tested over random shapes from 1x1 to 32768 pixels long, thin ones weighted in, on the "
    "CPU. On CUDA the same calibration runs on the device; no GPU test has checked it yet.",
}
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
    activations (the live floats of a block) and the tile indices of a recomputed skip
    (levels 1 to 4)."""
    activations = FLOAT_BYTES * LIVE_TENSORS_PER_SITE * decoder_widths[level]
    index = RECOMPUTE_BYTES_PER_SITE if 0 < level < len(decoder_widths) - 1 else 0
    return activations, index


def held_bytes_per_pixel(encoder_widths: tuple[int, ...]) -> float:
    """The kept stride-8 and stride-16 maps, per padded pixel."""
    return KEPT_BYTES * (encoder_widths[2] / 64 + encoder_widths[3] / 256)


def padded_width(width: int) -> int:
    return -(-width // 32) * 32


def padded_pixels(height: int, width: int) -> int:
    return (-(-height // 32) * 32) * (-(-width // 32) * 32)


# A phase's bytes as (fixed, per padded pixel, per padded column).
Linear = tuple[float, float, float]


def linear_bytes(terms: Linear, height: int, width: int) -> int:
    fixed, per_pixel, per_column = terms
    return math.ceil(
        fixed + per_pixel * padded_pixels(height, width) + per_column * padded_width(width)
    )


@dataclass
class MemoryCost:
    """Bytes per active site and fixed bytes of each decoder stage (index = level), and the
    phases before the decoder (`Linear` each): what an inference that refines nothing
    peaks at, whether it keeps the stride-8 and stride-16 maps whole (held) or not (lean)."""

    site_bytes: list[int]
    stage_bytes: list[int]
    # The lean encoder: streamed to stride 32, nothing kept but the stride-32 map.
    stream_bytes: Linear = (0.0, 0.0, 0.0)
    # The held encoder: streamed to stride 16, the maps at strides 8 and 16 kept; then the
    # last stage streamed over the kept stride-16 map.
    held_stream_bytes: Linear = (0.0, 0.0, 0.0)
    held_stages_bytes: Linear = (0.0, 0.0, 0.0)
    # The dense head at level 0, over the stride-32 map (on top of the kept maps, if kept).
    head_bytes: Linear = (0.0, 0.0, 0.0)
    # The kept stride-8 and stride-16 maps, per padded pixel: known exactly.
    held_bytes_per_pixel: float = 0.0
    # The widths the per-site terms were derived from; `terms` needs them (`analytic` sets
    # them, a cost built from measured numbers may carry them).
    decoder_widths: tuple[int, ...] = ()
    # Per level, the working bytes of recomputing its skip at its sites, one chunk of tiles
    # at a time (`model.regions.recompute_costs`): levels 3 and 4 always, 1 and 2 when the
    # encoder did not keep their maps.
    recompute_bytes: tuple[int, ...] = ()
    recompute_tiles: tuple[int, ...] = ()  # tiles in such a chunk: fewer sites fill fewer
    # Per level, the working bytes of a chunk of one tile: what any recompute costs at least.
    recompute_base_bytes: tuple[int, ...] = ()
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
        """Estimates from the widths alone (`calibrate` measures the floors' phases)."""
        site_bytes = [
            sum(site_terms(decoder_widths, level)) + RULEBOOK_BYTES_PER_SITE + COORD_BYTES_PER_SITE
            for level in range(len(decoder_widths))
        ]
        filter_bytes = [2 * 9 * width * width * FLOAT_BYTES for width in decoder_widths]
        stage_bytes = [
            filters + max(gather_chunk_bytes(width, width), PAIR_SEARCH_CHUNK_BYTES)
            for filters, width in zip(filter_bytes, decoder_widths, strict=True)
        ]
        deepest = FLOAT_BYTES * encoder_widths[4] / 1024  # the stride-32 map, per pixel
        band = band_bytes_per_column(encoder_widths)
        held = held_bytes_per_pixel(encoder_widths)
        return cls(
            site_bytes=site_bytes,
            stage_bytes=stage_bytes,
            stream_bytes=(0.0, deepest, band),
            held_stream_bytes=(0.0, held, band),
            held_stages_bytes=(0.0, held + deepest, 0.0),
            head_bytes=(filter_bytes[0], 3 * FLOAT_BYTES * decoder_widths[0] / 1024, 0.0),
            held_bytes_per_pixel=held,
            decoder_widths=tuple(decoder_widths),
            recompute_bytes=tuple(recompute_bytes),
            recompute_tiles=tuple(recompute_tiles),
            num_logits=num_logits,
        )

    def kept_bytes(self, height: int, width: int) -> int:
        """The stride-8 and stride-16 maps a held run keeps."""
        return math.ceil(self.held_bytes_per_pixel * padded_pixels(height, width))

    def head_floor_bytes(self, height: int, width: int, held: bool) -> int:
        """The dense head's peak, over the kept maps when `held`."""
        kept = self.kept_bytes(height, width) if held else 0
        return linear_bytes(self.head_bytes, height, width) + kept

    def mask_bytes(self, height: int, width: int) -> int:
        """The peak of painting the mask and finding its leaves."""
        return MASK_BYTES_PER_PIXEL * padded_pixels(height, width)

    def min_budget_bytes(self, height: int, width: int) -> int:
        """The peak of an inference that propagates nothing and keeps no map whole: no
        budget below it can hold."""
        return max(
            linear_bytes(self.stream_bytes, height, width),
            self.head_floor_bytes(height, width, held=False),
            self.mask_bytes(height, width),
        )

    def held_floor_bytes(self, height: int, width: int) -> int:
        """The peak of an inference that keeps the stride-8 and stride-16 maps whole and
        refines nothing: a budget below it has the encoder recompute them at sites instead."""
        return max(
            linear_bytes(self.held_stream_bytes, height, width),
            linear_bytes(self.held_stages_bytes, height, width),
            self.head_floor_bytes(height, width, held=True),
            self.mask_bytes(height, width),
        )

    def fixed_stage_bytes(self, level: int, held: bool = True, sites: int | None = None) -> int:
        """A level's fixed working bytes: its filter copies, and the chunk of tiles its skip
        is recomputed in where it is (levels 3 and 4; 1 and 2 unless `held`): a whole chunk,
        or, for a known count of sites, no more tiles than sites (a chunk of one tile at
        least)."""
        extra = 0
        if recomputes(level, held) and self.recompute_bytes:
            extra = self.recompute_bytes[level]
            if sites is not None and self.recompute_tiles:
                base = self.recompute_base_bytes[level] if self.recompute_base_bytes else 0
                share = min(1.0, sites / self.recompute_tiles[level])
                extra = math.ceil(base + (extra - base) * share)
        return self.stage_bytes[level] + extra

    def run_peak_bytes(
        self, height: int, width: int, active_sites: list[int], held: bool = True
    ) -> int:
        """A bound of the peak of a run that refines `active_sites` per level: its floor, each
        level's stage on top of what is live when the level starts (the kept stride-8 and
        stride-16 maps up to level 2, the outputs of the levels before it) and the mask's
        bound on top of every level's outputs."""
        floor = (
            self.held_floor_bytes(height, width) if held else self.min_budget_bytes(height, width)
        )
        kept = self.kept_bytes(height, width) if held else 0
        output_bytes = 3 * 4 + FLOAT_BYTES * self.num_logits + 1  # coordinates, logits, flag
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
        activations (the live floats of a sparse block), rulebook (index pairs), coordinates,
        the fixed filter copies, recomputing the skip at the sites (tile indices per site, one
        chunk of tiles; levels 1 and 2 as when the encoder keeps their maps) and what
        calibration measured on top of the analytic per-site bytes. Level 0 (dense) and empty
        levels give their sites only. The analytic terms are those of `analytic`; they are
        `COST_TERMS`."""
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


# The floors' phases are measured on these shapes. Their slopes (per pixel, per column) are
# fitted on SLOPE_SIZES: tall enough for every stream to have reached its steady band (a
# stream's bytes per column grow with the rows up to ~512, then stay) and wide enough to be
# past oneDNN's last kernel switch (at 512 rows the stream takes 2.7 kB per column from 1024
# to 2048 columns, 3.1 kB beyond, up to 32768); where a phase is known to hold whole maps,
# its bytes per pixel are at least theirs (`known_bytes_per_pixel`). Their fixed parts are
# then raised to cover every shape measured: on small maps oneDNN takes more per column or
# per pixel, up to a switch (held stream: ~6 kB per column up to 224 columns, ~4 kB beyond;
# the head: ~7 kB per site up to ~160 sites, 2.5 kB beyond), so COVER_SIZES scan the columns
# at a short and a middle height and the pixels along squares, past those switches, and the
# thin extremes.
SLOPE_SIZES = ((512, 2048), (1024, 2048), (512, 4096))
COVER_SIZES = (
    *((32, 64 * k) for k in range(1, 13)),
    *((256, 32 * k) for k in range(1, 25)),
    *((32 * k, 32 * k) for k in (*range(1, 17), 18, 20, 22, 24)),
    (32, 2048), (2048, 32), (512, 1024), (1024, 512),
)  # fmt: skip
FLOOR_SIZES = SLOPE_SIZES + COVER_SIZES
FIT_MARGIN = 1.02


def fit_floor(
    slope_peaks: list[tuple[int, int, int]],
    peaks: list[tuple[int, int, int]],
    min_per_pixel: float = 0.0,
) -> Linear:
    """(fixed, per padded pixel, per padded column) bytes: the slopes a least-squares fit of
    `slope_peaks` (no term negative, and no fewer bytes per pixel than the maps known to be
    held, `min_per_pixel`), the fixed part raised by the largest shortfall over `peaks`
    (every (height, width, peak) given), everything plus 2 %."""

    def design(points):
        rows = [[1.0, padded_pixels(h, w), padded_width(w)] for h, w, _ in points]
        return torch.tensor(rows, dtype=torch.float64)

    def target(points):
        return torch.tensor([float(p) for _, _, p in points], dtype=torch.float64)

    a, b = design(slope_peaks), target(slope_peaks)
    terms = torch.linalg.lstsq(a, b[:, None]).solution[:, 0].clamp(min=0)
    if terms[1] < min_per_pixel:  # too few tall shapes to tell pixels from columns: refit
        rest = torch.linalg.lstsq(a[:, [0, 2]], (b - min_per_pixel * a[:, 1])[:, None])
        fixed, per_column = rest.solution[:, 0].clamp(min=0).tolist()
        terms = torch.tensor([fixed, min_per_pixel, per_column], dtype=torch.float64)
    shortfall = float((target(peaks) - design(peaks) @ terms).max().clamp(min=0))
    fixed, per_pixel, per_column = terms.tolist()
    return (
        float(math.ceil(FIT_MARGIN * (fixed + shortfall))),
        FIT_MARGIN * per_pixel,
        FIT_MARGIN * per_column,
    )


def known_bytes_per_pixel(config) -> dict[str, float]:
    """Per floor phase, the bytes per padded pixel of the maps it is known to hold: a floor
    to the fitted slopes."""
    deepest = FLOAT_BYTES * config.encoder_widths[4] / 1024
    return {
        "stream": deepest,
        "held_stream": held_bytes_per_pixel(config.encoder_widths),  # the kept maps
        # the kept maps and the stride-32 map the last stage fills
        "held_stages": held_bytes_per_pixel(config.encoder_widths) + deepest,
        "head": deepest + FLOAT_BYTES * config.decoder_widths[0] / 1024,
    }


def floor_phases(model, image: torch.Tensor) -> dict[str, int]:
    """The measured peaks of the phases the floors are made of, for one image: the lean and
    held encoders' phases, and the head's (any level's phase of a run that refines nothing,
    less the kept maps where they are kept)."""
    from model.schemes import Budget, Nothing

    height, width = image.shape[:2]
    lean = model.predict(image, Budget(1)).phase_peaks
    held = model.predict(image, Nothing()).phase_peaks
    kept = held_bytes_per_pixel(model.config.encoder_widths) * padded_pixels(height, width)
    levels = [name for name in lean if name.startswith("level")]
    return {
        "stream": lean["encoder"],
        "held_stream": held["encoder"],
        "held_stages": held["encoder_stages"],
        "head": max(max(lean[n] for n in levels), max(held[n] for n in levels) - math.ceil(kept)),
    }


def measure_recompute(
    model, device: torch.device | str, analytic: MemoryCost
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per level, the measured working bytes of recomputing its skip for a whole chunk of
    tiles (never below the analytic figure) and for a chunk of one tile, plus 2 %: the
    analytic bound misses oneDNN's buffers and the gathers' indices (thin images, whose
    sites fill a whole chunk of tiles with a few sites each, measured 7 % over it)."""
    from model.memory import MemoryProbe
    from model.qgn import to_pixels
    from model.regions import TILE_SIDE, SitesFromPixels

    generator = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (1024, 1024, 3), dtype=torch.uint8, generator=generator)
    pixels = to_pixels(image, device)
    full, base = list(analytic.recompute_bytes), [0] * len(analytic.recompute_bytes)
    for level in range(1, len(full) - 1):
        source = SitesFromPixels(model.encoder, pixels, len(full) - 2 - level)
        columns = source.grid[1] // TILE_SIDE
        peaks = []
        for tiles in (1, source.tiles_per_chunk):
            origins = [(0, t // columns, t % columns) for t in range(tiles)]
            coords = TILE_SIDE * torch.tensor(origins, device=pixels.device)
            with torch.inference_mode(), MemoryProbe(pixels.device) as probe:
                source.at(coords)
            peaks.append(math.ceil(FIT_MARGIN * probe.peak_bytes))
        base[level], full[level] = peaks[0], max(full[level], peaks[1])
    return tuple(full), tuple(base)


# Calibrations done in this process: what a model's memory costs depends on its architecture,
# whether its norms are folded, the device and the threads, not on its weights' values.
_CALIBRATED: dict[tuple, MemoryCost] = {}


def calibrate(model, device: torch.device | str, sizes=((128, 256), (256, 512))) -> MemoryCost:
    """`measure_cost`, once per process for each architecture, device and thread count (a
    server and its tests calibrate the same model many times over)."""
    key = (model.config, getattr(model, "folded", False), str(device), torch.get_num_threads())
    key += (tuple(sizes),)
    if key not in _CALIBRATED:
        _CALIBRATED[key] = measure_cost(model, device, sizes)
    return copy.deepcopy(_CALIBRATED[key])


def measure_cost(model, device: torch.device | str, sizes=((128, 256), (256, 512))) -> MemoryCost:
    """Measures the cost terms of `model` on `device`: per site the larger of measured (an
    `all` inference per size of `sizes`) and analytic; the floors' phases from two
    inferences that refine nothing per shape of FLOOR_SIZES, one keeping the encoder's
    stride-8 and stride-16 maps (the held floor) and one not (the floor), on random images."""
    from model.schemes import All

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
    # The floors' phases are measured, not guessed, over FLOOR_SIZES (see there).
    measured = []
    for height, width in FLOOR_SIZES:
        image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        measured.append((height, width, floor_phases(model, image)))
    recompute = measure_recompute(model, device, analytic)
    fits = {}
    for phase, known in known_bytes_per_pixel(model.config).items():
        peaks = [(h, w, phases[phase]) for h, w, phases in measured]
        fits[phase] = fit_floor(peaks[: len(SLOPE_SIZES)], peaks, known)
    return replace(
        analytic,
        site_bytes=site_bytes,
        recompute_bytes=recompute[0],
        recompute_base_bytes=recompute[1],
        stream_bytes=fits["stream"],
        held_stream_bytes=fits["held_stream"],
        held_stages_bytes=fits["held_stages"],
        head_bytes=fits["head"],
    )
