"""The encoder computed over windows of its maps, from uint8 pixels: exact, and never whole.

A zero-padded k×k convolution of stride s, read over output rows g0 .. g1 - 1, needs input rows
s g0 - k//2 .. s (g1 - 1) + k//2 and nothing else; a residual block needs one more row of its
first convolution on each side. So any window of any encoder map can be computed from a window
of pixels with unpadded ("valid") convolutions, provided every intermediate map is zero where
it lies outside its grid, as the zero padding of the whole-map network makes it.

A `Windows` is a batch of equal-sized windows, one origin each, so the tiles around the sites
of levels 3 and 4 (`SitesFromPixels`) and the bands of rows of the first pass (`RowStream`,
`stream_encoder`) run the same code. `SkipSource` is what a decoder level reads its skip
features from: a dense map, the pixels themselves (level 5) or the encoder recomputed at its
sites.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model import arrival, cancellation
from model.encoder import IMAGE_MEAN, IMAGE_STD, BasicBlock, normalise
from model.sparse import gather_chunk_rows, records_autograd


@dataclass(frozen=True)
class Windows:
    """Windows of one map, all `height` × `width`, on a map of `grid` (rows, cols).

    `tops` and `lefts` are the (min, max) of the windows' top rows and left columns in the
    map's own coordinates, kept in Python so that bookkeeping costs no tensor ops. Where the
    windows differ (tiles), window i starts at `scale * base[i] + shift` ((batch, top, left)
    rows of `base`, the batch unscaled); where one top-left serves every image of the batch
    (bands), `base` is None.
    """

    tops: tuple[int, int]
    lefts: tuple[int, int]
    height: int
    width: int
    grid: tuple[int, int]
    base: Tensor | None = None
    scale: int = 1
    shift: int = 0

    @property
    def origins(self) -> Tensor | None:
        """(T, 3) (batch, top, left) of each window, or None for a band."""
        if self.base is None:
            return None
        origins = self.base * torch.tensor([1, self.scale, self.scale], device=self.base.device)
        origins[:, 1:] += self.shift
        return origins

    @classmethod
    def band(cls, top: int, height: int, grid: tuple[int, int]) -> Windows:
        """Rows top .. top + height - 1, every column."""
        return cls((top, top), (0, 0), height, grid[1], grid)

    @classmethod
    def tiles(cls, origins: Tensor, side: int, grid: tuple[int, int]) -> Windows:
        low, high = torch.aminmax(origins[:, 1:], dim=0)
        (top, left), (bottom, right) = low.tolist(), high.tolist()
        return cls((top, bottom), (left, right), side, side, grid, origins)

    def moved(self, scale: int, shift: int, height: int, width: int, grid) -> Windows:
        """Origins scale * origin + shift, with the given size and grid."""
        tops = (scale * self.tops[0] + shift, scale * self.tops[1] + shift)
        lefts = (scale * self.lefts[0] + shift, scale * self.lefts[1] + shift)
        return Windows(
            tops,
            lefts,
            height,
            width,
            grid,
            self.base,
            scale * self.scale,
            scale * self.shift + shift,
        )

    def needed_by(self, kernel: int, stride: int, grid: tuple[int, int]) -> Windows:
        """The windows of the input map (of `grid`) that a zero-padded convolution reads to
        produce these windows."""
        height, width = stride * (self.height - 1) + kernel, stride * (self.width - 1) + kernel
        return self.moved(stride, -(kernel // 2), height, width, grid)

    def grown(self, margin: int) -> Windows:
        return self.moved(1, -margin, self.height + 2 * margin, self.width + 2 * margin, self.grid)

    def offset_in(self, outer: Windows) -> tuple[int, int]:
        """Where these windows start inside `outer` (the same for every window)."""
        return self.tops[0] - outer.tops[0], self.lefts[0] - outer.lefts[0]

    def zero_outside(self, x: Tensor) -> Tensor:
        """`x` (T, C, height, width) with every position outside the grid set to zero, in
        place: what zero padding makes of the whole map."""
        rows, cols = self.grid
        if (
            self.tops[0] >= 0
            and self.lefts[0] >= 0
            and self.tops[1] + self.height <= rows
            and self.lefts[1] + self.width <= cols
        ):
            return x
        if self.base is None:  # one top-left for all: zero the outside rows and columns
            top, left = self.tops[0], self.lefts[0]
            if top < 0:
                x[..., :-top, :] = 0
            if top + self.height > rows:
                x[..., max(rows - top, 0) :, :] = 0
            if left < 0:
                x[..., :-left] = 0
            if left + self.width > cols:
                x[..., max(cols - left, 0) :] = 0
            return x
        origins = self.origins
        row = origins[:, 1:2] + torch.arange(self.height, device=x.device)
        col = origins[:, 2:3] + torch.arange(self.width, device=x.device)
        inside = ((row >= 0) & (row < rows))[:, None, :, None]
        return x.mul_(inside & ((col >= 0) & (col < cols))[:, None, None, :])


def units_of(encoder: nn.Module, stages: int) -> list[nn.Module]:
    """The encoder's layers up to the output of `stages` stride-2 stages after the stem
    (0: the stem's stride-2 map, 1: stride 4, ...), as units `run_unit` knows: the stem's
    convolution (with its norm and ReLU) and residual blocks."""
    stem = list(encoder.stem)
    units: list[nn.Module] = [nn.Sequential(*stem[:3]), *stem[3:]]
    for stage in list(encoder.stages)[:stages]:
        units.extend(stage)
    return units


def unit_input(unit: nn.Module, out: Windows, grid_in: tuple[int, int]) -> Windows:
    """The input windows a unit reads to produce `out`."""
    if isinstance(unit, BasicBlock):
        conv = unit.conv1
        return out.grown(1).needed_by(3, conv.stride[0], grid_in)
    return out.needed_by(3, unit[0].stride[0], grid_in)


def conv_valid(conv: nn.Conv2d, x: Tensor) -> Tensor:
    return nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride)


def run_unit(unit: nn.Module, x: Tensor, x_windows: Windows, out: Windows) -> Tensor:
    """One unit on windows `x_windows` of its input (exactly `unit_input(unit, out)`), giving
    windows `out` of its output, zero outside the output grid."""
    if not isinstance(unit, BasicBlock):
        conv, norm, relu = unit
        return out.zero_outside(relu(norm(conv_valid(conv, x))))
    hidden = first_convolution(unit, x, out.grown(1))
    y = unit.bn2(conv_valid(unit.conv2, hidden))
    del hidden
    return with_shortcut(unit, y, x, x_windows, out)


def first_convolution(block: BasicBlock, x: Tensor, rows: Windows) -> Tensor:
    """A block's first convolution (with its norm and ReLU) over `x`, giving windows `rows`,
    zero outside the grid."""
    return rows.zero_outside(block.relu(block.bn1(conv_valid(block.conv1, x))))


def with_shortcut(
    block: BasicBlock, y: Tensor, x: Tensor, x_windows: Windows, out: Windows
) -> Tensor:
    """A block's output: its second convolution's `y` (normalised) plus the shortcut of its
    input `x` (windows `x_windows`) at `out`, ReLU, zero outside the grid."""
    reads = out.needed_by(1, block.conv1.stride[0], x_windows.grid)  # the 1×1 shortcut
    top, left = reads.offset_in(x_windows)
    y += block.shortcut(x[..., top : top + reads.height, left : left + reads.width])
    return out.zero_outside(block.relu(y))


def plan_windows(units: list[nn.Module], out: Windows, grids: list[tuple[int, int]]) -> list:
    """The windows of every map from the pixels (first) to `out` (last); `grids` are the
    maps' grids (`grids_of`)."""
    windows = [out]
    for unit, grid in zip(reversed(units), reversed(grids[:-1]), strict=True):
        windows.append(unit_input(unit, windows[-1], grid))
    return windows[::-1]


def run_units(units: list[nn.Module], pixels: Tensor, windows: list[Windows]) -> Tensor:
    """The units over `windows` (from `plan_windows`), starting from the pixels."""
    x = pixel_patches(pixels, windows[0])
    for unit, x_windows, out in zip(units, windows[:-1], windows[1:], strict=True):
        x = run_unit(unit, x, x_windows, out)
    return x


def grids_of(units: list[nn.Module], pixel_grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The grids of the padded pixels, then of each unit's output."""
    grids = [pixel_grid]
    for unit in units:
        stride = (unit.conv1 if isinstance(unit, BasicBlock) else unit[0]).stride[0]
        grids.append((grids[-1][0] // stride, grids[-1][1] // stride))
    return grids


@functools.cache
def normalising_constants(device: torch.device) -> tuple[Tensor, Tensor]:
    """(scale, shift) as (1, 3, 1, 1) tensors, made once per device: the normalised value
    of a pixel is pixel * scale + shift (two passes over a patch, not three)."""
    mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def pixel_patches(pixels: Tensor, windows: Windows) -> Tensor:
    """Windows of the normalised image, (T, 3, height, width) floats: zero outside the
    image content, as the padded whole-image batch is after normalising. `pixels` is
    (B, H, W, 3) uint8, unpadded; bands take every image of the batch."""
    _, height, width, _ = pixels.shape
    scale, shift = normalising_constants(pixels.device)
    if windows.base is None:
        top, left = windows.tops[0], windows.lefts[0]
        r0, r1 = max(top, 0), min(top + windows.height, height)
        c0, c1 = max(left, 0), min(left + windows.width, width)
        patch = pixels[:, r0:r1, c0:c1].permute(0, 3, 1, 2).float()
        patch.mul_(scale).add_(shift)
        pads = (c0 - left, left + windows.width - max(c1, c0), r0 - top)
        patch = nn.functional.pad(patch, (*pads, top + windows.height - max(r1, r0)))
        # A band wholly below the image pads an empty patch, which comes back contiguous:
        # mixed into the stream's channels-last rows it had every later convolution make
        # blocked copies (a 16-row image measured more than a 32-row one).
        return patch.contiguous(memory_format=torch.channels_last)
    origins = windows.origins
    rows = origins[:, 1:2] + torch.arange(windows.height, device=pixels.device)
    cols = origins[:, 2:3] + torch.arange(windows.width, device=pixels.device)
    row_in = (rows >= 0) & (rows < height)
    col_in = (cols >= 0) & (cols < width)
    batch = origins[:, 0].view(-1, 1, 1)
    gathered = pixels[
        batch, rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]
    ]  # (T, h, w, 3) uint8
    patch = gathered.permute(0, 3, 1, 2).float()
    del gathered
    patch.mul_(scale).add_(shift)
    return patch.mul_(row_in[:, None, :, None] & col_in[:, None, None, :])


def padded_grid(pixels: Tensor) -> tuple[int, int]:
    return (-(-pixels.shape[1] // 32) * 32, -(-pixels.shape[2] // 32) * 32)


class RowStream:
    """One unit applied to a map that arrives a band of rows at a time, all columns: it keeps
    only the input rows its next output rows read, so no map is ever whole."""

    def __init__(
        self,
        unit: nn.Module,
        grid_in: tuple[int, int],
        grid_out: tuple[int, int],
        min_rows: int,
    ):
        self.unit, self.grid_in, self.grid_out = unit, grid_in, grid_out
        self.min_rows = min_rows
        first = unit_input(unit, Windows.band(0, 1, grid_out), grid_in)
        self.read_top, self.read_rows = first.tops[0], first.height
        self.stride = grid_in[0] // grid_out[0]
        self.pending: list[Tensor] = []  # buffered input rows, from global row self.first
        self.first = 0
        self.done = 0  # output rows emitted so far

    def push(self, rows: Tensor | None, ended: bool = False) -> Tensor | None:
        """Adds the next input rows; returns every output row they complete (all that are
        left once the input has `ended`), or None."""
        if rows is not None and rows.shape[2]:
            self.pending.append(rows)
        if not self.pending:
            return None
        available = self.first + sum(piece.shape[2] for piece in self.pending)
        stop = self.done
        while stop < self.grid_out[0] and (
            ended or self.read_top + self.stride * stop + self.read_rows <= available
        ):
            stop += 1
        if stop == self.done or (stop - self.done < self.min_rows and not ended):
            return None
        out = Windows.band(self.done, stop - self.done, self.grid_out)
        reads = self.window(out)
        patch = self.gather(reads, available)
        top, left = reads.tops[0], reads.lefts[0]
        taken = min(top + reads.height, available)
        untaken = self.rows_from(taken)  # arrived beyond this call's window
        self.pending = []  # the patch holds the rest: not the buffer too under the unit
        result = self.compute(patch, reads, out)
        self.done = stop
        if stop < self.grid_out[0]:  # the next calls read the patch's rows from `keep` on
            keep = self.first_read(stop)
            columns = slice(-left, -left + self.grid_in[1])
            self.pending = [patch[:, :, keep - top : taken - top, columns], *untaken]
            self.first = keep
        return result

    def window(self, out: Windows) -> Windows:
        """The input rows (all columns, and the zeros beyond) a call making `out` reads."""
        return unit_input(self.unit, out, self.grid_in)

    def compute(self, patch: Tensor, reads: Windows, out: Windows) -> Tensor:
        return run_unit(self.unit, patch, reads, out)

    def first_read(self, done: int) -> int:
        """The first input row that output row `done` reads."""
        return self.read_top + self.stride * done

    def rows_from(self, start: int) -> list[Tensor]:
        """The buffered rows from global row `start` on."""
        found, row = [], self.first
        for piece in self.pending:
            if start < row + piece.shape[2]:
                found.append(piece[:, :, max(start - row, 0) :])
            row += piece.shape[2]
        return found

    def gather(self, reads: Windows, available: int) -> Tensor:
        """The input window `reads` in one new tensor: the buffered rows it covers, zero
        outside the grid (the buffer is copied once, not concatenated and then padded)."""
        top, left = reads.tops[0], reads.lefts[0]
        first = self.pending[0]
        patch = torch.empty(
            (first.shape[0], first.shape[1], reads.height, reads.width),
            dtype=first.dtype,
            device=first.device,
            memory_format=torch.channels_last,
        )
        begin, end = max(top, self.first), min(top + reads.height, available)
        patch[:, :, : begin - top].zero_()
        patch[:, :, end - top :].zero_()
        patch[:, :, :, :-left].zero_()
        patch[:, :, :, -left + self.grid_in[1] :].zero_()
        row = self.first
        for piece in self.pending:
            lo, hi = max(row, begin), min(row + piece.shape[2], end)
            if lo < hi:
                patch[:, :, lo - top : hi - top, -left : -left + self.grid_in[1]] = piece[
                    :, :, lo - row : hi - row
                ]
            row += piece.shape[2]
        return patch


class BlockStream(RowStream):
    """A residual block over arriving rows that keeps, between calls, the two rows of its
    first convolution's output that the next call's second convolution reads again, where
    `RowStream` computes them again: with 3-row calls, 40 % of that convolution's work."""

    def __init__(self, block: BasicBlock, grid_in, grid_out, min_rows: int):
        super().__init__(block, grid_in, grid_out, min_rows)
        self.hidden: Tensor | None = None  # rows done - 1 and done of the first convolution

    def hidden_rows(self, out: Windows) -> Windows:
        """The first convolution's rows that `out` needs and this call computes, a column of
        zeros beyond each side."""
        top = out.tops[0] - 1 if self.hidden is None else out.tops[0] + 1
        height = out.tops[0] + out.height + 1 - top
        return Windows((top, top), (-1, -1), height, self.grid_out[1] + 2, self.grid_out)

    def window(self, out: Windows) -> Windows:
        conv1 = self.hidden_rows(out).needed_by(3, self.stride, self.grid_in)
        top = min(conv1.tops[0], self.first_read(out.tops[0]))  # the shortcut's first row
        bottom = conv1.tops[0] + conv1.height
        return Windows((top, top), conv1.lefts, bottom - top, conv1.width, self.grid_in)

    def compute(self, patch: Tensor, reads: Windows, out: Windows) -> Tensor:
        block, hidden_rows = self.unit, self.hidden_rows(out)
        conv1 = hidden_rows.needed_by(3, self.stride, self.grid_in)
        start = conv1.tops[0] - reads.tops[0]
        hidden = first_convolution(block, patch[:, :, start : start + conv1.height], hidden_rows)
        if self.hidden is not None:
            hidden = torch.cat([self.hidden, hidden], dim=2)
        y = block.bn2(conv_valid(block.conv2, hidden))
        self.hidden = hidden[:, :, -2:].clone()
        del hidden
        return with_shortcut(block, y, patch, reads, out)

    def first_read(self, done: int) -> int:
        return self.stride * done  # the shortcut's; the first convolution reads from below


def row_stream(unit: nn.Module, grid_in, grid_out, min_rows: int) -> RowStream:
    kind = BlockStream if isinstance(unit, BasicBlock) else RowStream
    return kind(unit, grid_in, grid_out, min_rows)


# Pixel rows per band of the first pass; rows of the stride-16 map per band of the second.
PIXEL_BAND_ROWS = 16
MAP_BAND_ROWS = 8

# The stride-8 and stride-16 maps are kept in half precision: at 1024×2048 they are 11 MiB in
# float32, most of the head's peak (`docs/memory.md`); each level reads them back to float32
# a chunk of sites at a time, and the masks are unchanged (mIoU to two decimals).
KEPT_DTYPE = torch.float16


def stream_units(
    units: list[nn.Module],
    grids: list[tuple[int, int]],
    bands,
    keep: dict[int, Tensor],
    min_rows: int,
) -> None:
    """Runs `units` over a map that arrives as `bands` (an iterable of (B, C, rows, width)
    tensors, top to bottom) and fills `keep[i]`, a whole map (any dtype), with unit i's
    output rows as they come: no other map is ever whole. Each unit computes at least
    `min_rows` output rows per call (fewer, larger calls against a smaller working set)."""
    streams = [row_stream(u, grids[i], grids[i + 1], min_rows) for i, u in enumerate(units)]
    written = dict.fromkeys(keep, 0)
    for rows in itertools.chain(bands, [None]):  # lazily: one band at a time
        cancellation.check()
        ended = rows is None
        for index, stream in enumerate(streams):
            rows = stream.push(rows, ended)
            if rows is None and not ended:
                break
            if index in keep and rows is not None:
                keep[index][:, :, written[index] : written[index] + rows.shape[2]] = rows
                written[index] += rows.shape[2]


def empty_map(batch: int, channels: int, grid: tuple[int, int], dtype, device) -> Tensor:
    return torch.empty(
        (batch, channels, *grid), dtype=dtype, device=device, memory_format=torch.channels_last
    )


def stream_encoder(
    encoder: nn.Module,
    pixels: Tensor,
    stages: int,
    keep: tuple[int, ...],
    min_rows: int,
    dtype: torch.dtype = torch.float32,
) -> dict[int, Tensor]:
    """Runs the stem and `stages` stages over (B, H, W, 3) uint8 pixels, PIXEL_BAND_ROWS rows
    at a time, and returns whole only the maps of the strides in `keep`, in `dtype`."""
    units = units_of(encoder, stages)
    grids = grids_of(units, padded_grid(pixels))
    # A stride's map is the output of the last unit at that stride.
    stride_of = [grids[0][0] // grids[i + 1][0] for i in range(len(units))]
    ends = {max(i for i, s in enumerate(stride_of) if s == stride): stride for stride in keep}
    maps = {
        index: empty_map(
            pixels.shape[0],
            encoder.out_channels[encoder.strides.index(stride)],
            grids[index + 1],
            dtype,
            pixels.device,
        )
        for index, stride in ends.items()
    }

    def bands():
        for top in range(0, grids[0][0], PIXEL_BAND_ROWS):
            height = min(PIXEL_BAND_ROWS, grids[0][0] - top)
            arrival.wait_for_rows(min(top + height, pixels.shape[1]))
            yield pixel_patches(pixels, Windows.band(top, height, grids[0]))

    stream_units(units, grids, bands(), maps, min_rows)
    return {ends[index]: tensor for index, tensor in maps.items()}


def stream_stage(stage: nn.Module, source: Tensor, channels: int, min_rows: int) -> Tensor:
    """One encoder stage over a whole kept map (any dtype), read MAP_BAND_ROWS rows at a time
    as float32: its float32 copy is never whole. Returns the stage's output map."""
    units = list(stage)
    grids = grids_of(units, tuple(source.shape[2:]))
    out = empty_map(source.shape[0], channels, grids[-1], torch.float32, source.device)
    rows = source.shape[2]
    bands = (
        source[:, :, top : top + MAP_BAND_ROWS].float() for top in range(0, rows, MAP_BAND_ROWS)
    )
    stream_units(units, grids, bands, {len(units) - 1: out}, min_rows)
    return out


class SkipSource:
    """Where a decoder level reads its skip features: `at(coords)` gives (N, C) floats for
    (N, 3) (batch, row, col) sites."""

    def at(self, coords: Tensor) -> Tensor:
        raise NotImplementedError

    def release(self) -> None:
        """Drops what the source holds: its level has read its sites."""

    def add_projected_(self, features: Tensor, coords: Tensor, weight: Tensor) -> Tensor:
        """`features += at(coords) @ weight.T`, in place: a level's skip, projected."""
        return features.addmm_(self.at(coords), weight.t())


class DenseSkip(SkipSource):
    """A whole kept map (strides 8 and 16). Released once read, it is freed before its
    level's convolutions run: at 1024×2048 the stride-8 map's 8 MiB no longer sit under
    level 2, which set the peak of scenes with many boundaries."""

    def __init__(self, features: Tensor):
        self.features: Tensor | None = features

    def at(self, coords: Tensor) -> Tensor:
        return self.features[coords[:, 0], :, coords[:, 1], coords[:, 2]].float()

    def add_projected_(self, features: Tensor, coords: Tensor, weight: Tensor) -> Tensor:
        """At inference a chunk of sites at a time: the map is still whole, and its values at
        every site beside it (a third tensor of the level's sites) set the peak of level 2 at
        1024×2048 on scenes with many boundaries."""
        rows = gather_chunk_rows(self.features.shape[1], self.features.shape[1])
        if records_autograd(features, self.features) or len(coords) <= rows:
            return super().add_projected_(features, coords, weight)
        for start in range(0, len(coords), rows):
            chunk = features[start : start + rows]
            chunk.addmm_(self.at(coords[start : start + rows]), weight.t())
        return features

    def release(self) -> None:
        self.features = None


class PixelSkip(SkipSource):
    """Level 5 reads the image itself, normalised at its sites."""

    def __init__(self, pixels: Tensor):
        self.pixels = pixels

    def at(self, coords: Tensor) -> Tensor:
        return normalise(self.pixels[coords[:, 0], coords[:, 1], coords[:, 2]])


# Sites are recomputed in square tiles of this many map positions a side, this many pixels
# of tile input at most in one go (a few MiB of working maps).
TILE_SIDE = 8
CHUNK_PIXELS = 1 << 16


class SitesFromPixels(SkipSource):
    """The encoder map after `stages` stages, computed only in the tiles that hold the
    requested sites, from the pixels: memory and work follow the sites, not the image."""

    def __init__(self, encoder: nn.Module, pixels: Tensor, stages: int):
        self.units = units_of(encoder, stages)
        self.pixels = pixels
        self.grids = grids_of(self.units, padded_grid(pixels))
        self.grid = self.grids[-1]
        self.channels = encoder.out_channels[stages]
        # Every tile's windows have one tile's sizes: computed once, without tensors.
        one_tile = Windows((0, 0), (0, 0), TILE_SIDE, TILE_SIDE, self.grid)
        self.tile_sizes = plan_windows(self.units, one_tile, self.grids)
        patch = self.tile_sizes[0]
        self.tiles_per_chunk = max(1, CHUNK_PIXELS // (patch.height * patch.width))

    def chunk_bytes(self) -> int:
        """An upper bound of the working bytes of one chunk of tiles: the uint8 and float
        pixel patches, then per unit its input and output, and for a residual block its
        first convolution's output (one row and column wider each side) and a strided
        shortcut's."""
        windows = self.tile_sizes
        area = [w.height * w.width for w in windows]
        worst = (3 + 4 * 3) * area[0]
        channels = 3
        for unit, before, after in zip(self.units, area[:-1], windows[1:], strict=True):
            block = isinstance(unit, BasicBlock)
            out = (unit.conv2 if block else unit[0]).out_channels
            live = channels * before + out * after.height * after.width
            if block:
                live += out * (after.height + 2) * (after.width + 2)
                live += out * after.height * after.width * isinstance(unit.shortcut, nn.Sequential)
            worst, channels = max(worst, 4 * live), out
        return worst * self.tiles_per_chunk

    def at(self, coords: Tensor) -> Tensor:
        out = torch.empty((len(coords), self.channels), device=coords.device)
        if len(coords) == 0:
            return out
        # Tiles as one integer key each, in (batch, row, col) order: `unique` of rows
        # (dim=0) sorts them lexicographically, several times slower (8 % of `pc`). In the
        # coordinates' int32: a 40-megapixel image has under 2^18 tiles at any level.
        across = -(-self.grid[1] // TILE_SIDE)
        down = -(-self.grid[0] // TILE_SIDE) * across
        batch, row, col = coords.unbind(dim=1)
        keys, tile_of = torch.unique(
            batch * down + row // TILE_SIDE * across + col // TILE_SIDE, return_inverse=True
        )
        tiles = torch.stack([keys // down, keys % down // across, keys % across], 1)
        # The sites grouped by tile, so that each chunk's sites are one slice.
        by_tile = torch.argsort(tile_of)
        ends = [0, *torch.bincount(tile_of, minlength=len(tiles)).cumsum(0).tolist()]
        scale = torch.tensor([1, TILE_SIDE, TILE_SIDE], device=tiles.device)
        for first in range(0, len(tiles), self.tiles_per_chunk):
            cancellation.check()
            last = min(first + self.tiles_per_chunk, len(tiles))
            tile = Windows.tiles(tiles[first:last] * scale, TILE_SIDE, self.grid)
            features = run_units(
                self.units, self.pixels, plan_windows(self.units, tile, self.grids)
            )
            here = by_tile[ends[first] : ends[last]]
            site = coords[here]
            out[here] = features[
                tile_of[here] - first, :, site[:, 1] % TILE_SIDE, site[:, 2] % TILE_SIDE
            ]
            del features
        return out


def recompute_costs(encoder: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per decoder level (0 to 5), the working bytes of recomputing its skip at its sites,
    one whole chunk of tiles, and the tiles in a chunk: levels 1 to 4 read strides 16 to 2."""
    pixels = torch.zeros((1, 32, 32, 3), dtype=torch.uint8)
    sources = [SitesFromPixels(encoder, pixels, stages) for stages in range(3, -1, -1)]
    chunk = (0, *(source.chunk_bytes() for source in sources), 0)
    tiles = (1, *(source.tiles_per_chunk for source in sources), 1)
    return chunk, tiles


# Output rows per call of each streamed unit: fewer rows, less memory held in bands, more
# calls. The held stream alone on a val scene, one thread: 3 rows 3.84 / 10.40 MiB at
# 512×1024 / 1024×2048 in 51 / 161 ms, 4 rows 4.00 / 10.66 in the same time, 8 rows 5.75 /
# 14.18 in 43 / 144 ms.
STREAM_ROWS = 3


def encoder_from_pixels(
    encoder: nn.Module, pixels: Tensor, hold_skips: bool = True, probe=None
) -> tuple[Tensor, list[SkipSource]]:
    """From (B, H, W, 3) uint8 pixels: the stride-32 map, and where levels 1 to 5 read their
    skips. The maps at strides 4 and 2 are recomputed at the sites of levels 3 and 4 only,
    and level 5 reads the pixels. Those at strides 8 and 16 are small and kept whole (in
    KEPT_DTYPE) when `hold_skips` (fast); otherwise they too are recomputed at their levels'
    sites (the least memory, and more work per site). With `hold_skips` the last stage runs
    over the kept stride-16 map in a pass of its own, a phase of `probe` of its own
    ("encoder_stages"): streamed with the others, its buffers would sit beside theirs."""
    held: dict[int, Tensor] = {}  # level -> the whole map it reads
    if hold_skips:
        maps = stream_encoder(encoder, pixels, 3, (8, 16), STREAM_ROWS, KEPT_DTYPE)
        if probe is not None:
            probe.begin_phase("encoder_stages")
        deepest = stream_stage(encoder.stages[3], maps[16], encoder.out_channels[4], STREAM_ROWS)
        held.update({1: maps[16], 2: maps[8]})
        del maps
    else:
        stages = len(encoder.stages)
        deepest = stream_encoder(encoder, pixels, stages, (32,), STREAM_ROWS)[32]
    skips: list[SkipSource] = [
        SitesFromPixels(encoder, pixels, 4 - level)  # level l reads stride 2^(5 - l)
        if recomputes(level, hold_skips)
        else DenseSkip(held[level])
        for level in range(1, 5)
    ]
    return deepest, [*skips, PixelSkip(pixels)]


def recomputes(level: int, held: bool) -> bool:
    """Whether decoder level `level` reads its skip recomputed at its sites: levels 3 and 4
    always, 1 and 2 when the encoder did not keep their maps (`held`)."""
    return level in (3, 4) or (level in (1, 2) and not held)
