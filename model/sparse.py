"""Every spconv detail of the project, in one place.

spconv 2.3.8 has three traps on the CPU that this module closes once:
- its backward (and some forward paths) ask `torch.cuda.current_stream()`, which raises on a
  CPU-only torch; we point spconv's stream lookup at stream 0 when CUDA is unavailable;
- it silently computes garbage from non-contiguous or non-int32 indices (`nonzero()` output
  is not contiguous); `ActiveSites` always hands it contiguous int32 indices;
- its CPU scatter-add (`SpconvOps.scatter_add_cpu`) races when torch runs more than one
  thread: a few output sites per call come out wrong, differently each run
  (tests/model/test_sparse.py shows it). On the CPU we therefore do the gather, matrix
  product and scatter with torch ops, which are exact, differentiable and visible to the
  memory tracker, over a rulebook of our own (`neighbour_pairs`: spconv's CPU rulebook held
  72 bytes a site and a hash table the tracker never saw). On CUDA spconv's own kernels run.
An empty active set makes spconv raise, so `SubmanifoldConv2d` returns an empty result
without calling it.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.pytorch import cppcore as _cppcore
from spconv.pytorch import hash as _hash
from spconv.pytorch import ops as _ops
from spconv.pytorch import utils as _utils
from torch import Tensor, nn

from model import cancellation

# Inference takes an offset's gathered inputs and their product this many bytes at a time:
# whole, they were two more (sites, channels) tensors at a level's peak (they set pc's peak at
# 512×1024); in chunks they are a fixed cost, and the sums are the same.
GATHER_CHUNK_BYTES = 1 << 18


def gather_chunk_rows(in_channels: int, out_channels: int) -> int:
    return GATHER_CHUNK_BYTES // (4 * max(in_channels, out_channels))


def gather_chunk_bytes(in_channels: int, out_channels: int) -> int:
    """The most one chunk holds at once on the CPU: its gathered inputs, their product and
    their indices widened to int64."""
    return gather_chunk_rows(in_channels, out_channels) * (4 * (in_channels + out_channels) + 16)


def records_autograd(*tensors: Tensor) -> bool:
    """Whether autograd records an operation on `tensors`: then the memory-saving inference
    paths (chunked gathers, adding into an input in place) must not run."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _current_stream() -> int:
    """spconv's stream lookup, safe on a CPU-only torch (stream 0 = no stream)."""
    if torch.cuda.is_available():
        return torch.cuda.current_stream().cuda_stream
    return 0


for _module in (_cppcore, _ops, _hash, _utils):
    if hasattr(_module, "get_current_stream"):
        _module.get_current_stream = _current_stream


class ActiveSites:
    """The active sites of one quadtree level: where the sparse decoder computes.

    `coords` is (N, 3) as (batch, row, col); `spatial_shape` is the level's (padded) grid.
    The rulebook spconv builds for the first convolution is kept in `indice_dict` and reused
    by every later convolution on the same sites (same `key`), as spconv's `indice_key` does.
    """

    def __init__(self, coords: Tensor, spatial_shape: tuple[int, int], batch_size: int, key: str):
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(
                f"coords must be (N, 3) as (batch, row, col), got {tuple(coords.shape)}"
            )
        self.coords = coords
        self.indices = coords.to(torch.int32).contiguous()
        self.spatial_shape = [int(spatial_shape[0]), int(spatial_shape[1])]
        self.batch_size = int(batch_size)
        self.key = key
        self.indice_dict: dict = {}
        self._rulebook: list[tuple[Tensor, Tensor]] | None = None

    def __len__(self) -> int:
        return self.coords.shape[0]

    def sparse_tensor(self, features: Tensor) -> spconv.SparseConvTensor:
        if features.shape[0] != len(self):
            raise ValueError(f"{features.shape[0]} feature rows for {len(self)} active sites")
        tensor = spconv.SparseConvTensor(
            features.contiguous(), self.indices, self.spatial_shape, self.batch_size
        )
        tensor.indice_dict = self.indice_dict
        return tensor

    def rulebook(self) -> list[tuple[Tensor, Tensor]]:
        """Per 3×3 offset (row-major, centre excluded), the (input, output) site pairs that
        it connects, built once and reused by every layer of the level (`neighbour_pairs`)."""
        if self._rulebook is None:
            self._rulebook = neighbour_pairs(self.indices, self.spatial_shape)
        return self._rulebook


# The rulebook is searched this many sites at a time: its temporaries stay a fixed size.
PAIR_SEARCH_ROWS = 1 << 14
# At most, while a rulebook is built, a site holds its sorted key and its place (int32), its
# pairs (int32 input and output at four offsets) and the offset being joined (8 bytes).
RULEBOOK_BYTES_PER_SITE = 4 + 4 + 4 * 8 + 8
# One chunk's search: target keys, where they fall (int64) and masks.
PAIR_SEARCH_CHUNK_BYTES = PAIR_SEARCH_ROWS * (4 + 8 + 3 + 8)


def neighbour_pairs(indices: Tensor, spatial_shape: list[int]) -> list[tuple[Tensor, Tensor]]:
    """For offsets k = 3 ky + kx other than the centre, the int32 (input, output) pairs of
    sites where the input sits at the output + (ky - 1, kx - 1): what a submanifold 3×3
    convolution sums. Offset 8 - k is offset k with the roles swapped, so only the first four
    are searched and stored, the last four are the same tensors: int32 pairs of the sites
    that have each neighbour, 32 bytes a site at most, where spconv's CPU rulebook holds
    72 (a (2, 9, N) table) and builds it with a hash table outside torch's allocators. Found
    by binary search over the sorted site keys, a chunk of sites at a time."""
    height, width = spatial_shape
    count = len(indices)
    if count == 0:
        none = indices.new_zeros(0)
        return [(none, none)] * 8
    images = int(indices[:, 0].max()) + 1
    key_type = torch.int32 if images * height * width < 2**31 else torch.int64
    batch, row, col = indices.to(key_type).unbind(dim=1)
    keys = (batch * height + row) * width + col
    sorted_keys, order = torch.sort(keys)
    del keys
    order = order.to(torch.int32)
    pairs = []
    for k in range(4):
        dy, dx = k // 3 - 1, k % 3 - 1
        inputs, outputs = [], []
        for start in range(0, count, PAIR_SEARCH_ROWS):
            stop = min(start + PAIR_SEARCH_ROWS, count)
            r, c = row[start:stop], col[start:stop]
            target = (batch[start:stop] * height + r + dy) * width + c + dx
            inside = (r + dy >= 0) & (c + dx >= 0) & (c + dx < width)
            slot = torch.searchsorted(sorted_keys, target).clamp_(max=count - 1)
            found = inside & (sorted_keys[slot] == target)
            inputs.append(order[slot[found]])
            outputs.append(torch.nonzero(found).view(-1).to(torch.int32).add_(start))
        pairs.append((torch.cat(inputs), torch.cat(outputs)))
    return [*pairs, *[(outputs, inputs) for inputs, outputs in reversed(pairs)]]


class SubmanifoldConv2d(nn.Module):
    """A submanifold 3×3 convolution: outputs only at the active sites, from active neighbours.

    Equal to a dense `conv2d` (padding 1) over a map that is zero off the active sites, read
    back at the active sites.
    """

    def __init__(self, in_channels: int, out_channels: int, key: str, bias: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = spconv.SubMConv2d(
            in_channels, out_channels, 3, padding=1, bias=bias, indice_key=key
        )

    def forward(self, features: Tensor, sites: ActiveSites) -> Tensor:
        if len(sites) == 0:  # spconv raises on an empty set; keep the autograd graph intact
            return features @ self.dense_weight()[:, :, 1, 1].t()
        if sites.key != self.conv.indice_key:
            raise ValueError(
                f"sites of level {sites.key!r} given to a {self.conv.indice_key!r} layer"
            )
        if features.is_cuda:
            out = self.conv(sites.sparse_tensor(features))
            sites.indice_dict = out.indice_dict  # spconv copies the dict: keep the new rulebook
            return out.features
        return self._gather_matmul_scatter(features, sites)

    def _gather_matmul_scatter(self, features: Tensor, sites: ActiveSites) -> Tensor:
        weight = self.conv.weight.reshape(self.out_channels, 9, self.in_channels)
        out = features @ weight[:, 4].t()
        # While autograd records it keeps every chunk's gathered inputs for the backward, so
        # chunks would save nothing, and their many small steps made training 3.7× slower.
        rows = (
            len(features)
            if records_autograd(features, weight)
            else gather_chunk_rows(self.in_channels, self.out_channels)
        )
        out = self._add_neighbours(out, features, sites, weight, rows)
        if self.conv.bias is not None:
            out = out + self.conv.bias
        return out

    def add_into_(
        self, out: Tensor, features: Tensor, sites: ActiveSites, scale: Tensor, shift: Tensor
    ) -> Tensor:
        """`out += scale * conv(features) + shift` per output channel, in place and a chunk of
        rows at a time: a residual block's second convolution at inference, its BatchNorm
        folded in, adds into the block's input instead of holding an output of its own (the
        third (sites, channels) tensor of a block: a fifth of a sparse level's bytes a site).
        Inference on the CPU only."""
        if features.is_cuda or records_autograd(out, features):
            raise RuntimeError("add_into_ is for inference on the CPU")
        weight = (self.conv.weight * scale[:, None, None, None]).reshape(
            self.out_channels, 9, self.in_channels
        )
        bias = self.conv.bias
        out.add_(shift if bias is None else shift + scale * bias)
        rows = gather_chunk_rows(self.in_channels, self.out_channels)
        for start in range(0, len(features), rows):
            out[start : start + rows].addmm_(features[start : start + rows], weight[:, 4].t())
        if len(sites) == 0:
            return out
        return self._add_neighbours(out, features, sites, weight, rows)

    @staticmethod
    def _add_neighbours(
        out: Tensor, features: Tensor, sites: ActiveSites, weight: Tensor, rows: int
    ) -> Tensor:
        """Adds each off-centre offset's products into `out`, `rows` pairs at a time."""
        offsets = [k for k in range(9) if k != 4]
        for k, (inputs, outputs) in zip(offsets, sites.rulebook(), strict=True):
            cancellation.check()  # an offset of a level of millions of sites takes a second
            for start in range(0, len(inputs), rows):
                gathered = features[inputs[start : start + rows].long()]
                out = out.index_add_(
                    0, outputs[start : start + rows].long(), gathered @ weight[:, k].t()
                )
                del gathered
        return out

    def dense_weight(self) -> Tensor:
        """The weight as `conv2d` wants it, (out, in, 3, 3); spconv stores (out, 3, 3, in)."""
        return self.conv.weight.permute(0, 3, 1, 2)

    @property
    def bias(self) -> Tensor | None:
        return self.conv.bias
