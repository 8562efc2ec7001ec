import pytest
import torch
from spconv.pytorch import ops as spconv_ops
from spconv.pytorch.core import ConvAlgo
from torch.nn import functional as F

from model import sparse
from model.memory import MemoryProbe
from model.sparse import (
    PAIR_SEARCH_CHUNK_BYTES,
    PAIR_SEARCH_ROWS,
    RULEBOOK_BYTES_PER_SITE,
    ActiveSites,
    SubmanifoldConv2d,
    _current_stream,
    gather_chunk_bytes,
    neighbour_pairs,
)


def _random_sites(height=13, width=17, density=0.45, seed=0):
    generator = torch.Generator().manual_seed(seed)
    active = torch.rand(height, width, generator=generator) < density
    rows_cols = active.nonzero()  # non-contiguous int64: the trap spconv falls into
    coords = torch.cat([torch.zeros(len(rows_cols), 1, dtype=torch.long), rows_cols], dim=1)
    return coords, active


def _dense(features, coords, height, width):
    grid = torch.zeros(1, height, width, features.shape[1], dtype=features.dtype)
    grid = grid.index_put((coords[:, 0], coords[:, 1], coords[:, 2]), features)
    return grid.permute(0, 3, 1, 2)


def test_submanifold_conv_equals_dense_conv_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    coords, _ = _random_sites()
    assert not coords[:, 1:].is_contiguous()
    conv = SubmanifoldConv2d(8, 16, "k", bias=True)
    features = torch.randn(len(coords), 8, requires_grad=True)
    out = conv(features, ActiveSites(coords[:, :], (13, 17), 1, "k"))
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()

    ref_features = features.detach().clone().requires_grad_()
    weight = conv.dense_weight().detach().clone().requires_grad_()
    dense = F.conv2d(_dense(ref_features, coords, 13, 17), weight, conv.bias, padding=1)
    ref = dense[0].permute(1, 2, 0)[coords[:, 1], coords[:, 2]]
    (ref * upstream).sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.grad, ref_features.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        conv.conv.weight.grad.permute(0, 3, 1, 2), weight.grad, atol=1e-4, rtol=1e-4
    )


def test_an_offset_taken_in_chunks_gives_the_same_result(monkeypatch):
    """Chunks of 5 rows against one chunk per offset: the same sums in the same order (a
    matrix product of fewer rows may round its last bit differently)."""
    torch.manual_seed(0)
    coords, _ = _random_sites(40, 50)
    conv = SubmanifoldConv2d(8, 16, "k", bias=True)
    features = torch.randn(len(coords), 8)
    results = []
    for chunk_bytes in (4 * 16 * 5, 1 << 30):
        monkeypatch.setattr(sparse, "GATHER_CHUNK_BYTES", chunk_bytes)
        with torch.inference_mode():
            results.append(conv(features, ActiveSites(coords, (40, 50), 1, "k")))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-6)


def test_only_inference_takes_an_offset_in_chunks(monkeypatch):
    """While autograd records, every chunk's inputs are kept for the backward anyway: one
    scatter per offset there, many under inference."""
    coords, _ = _random_sites(40, 50)
    conv = SubmanifoldConv2d(8, 8, "k")
    sites = ActiveSites(coords, (40, 50), 1, "k")
    monkeypatch.setattr(sparse, "GATHER_CHUNK_BYTES", 4 * 8 * 5)
    scatters = []
    index_add_ = torch.Tensor.index_add_
    monkeypatch.setattr(
        torch.Tensor, "index_add_", lambda *a, **k: scatters.append(1) or index_add_(*a, **k)
    )
    conv(torch.randn(len(coords), 8), sites).sum().backward()
    assert len(scatters) == 8
    scatters.clear()
    with torch.inference_mode():
        conv(torch.randn(len(coords), 8), sites)
    assert len(scatters) > 8 * 10


def test_a_convolution_holds_its_output_and_one_chunk_not_the_whole_gather():
    """What model.cost counts for a convolution beyond its input: the output, one chunk."""
    channels, side = 32, 128
    coords, _ = _random_sites(side, side, density=1.0)
    conv = SubmanifoldConv2d(channels, channels, "k").eval()
    sites = ActiveSites(coords, (side, side), 1, "k")
    sites.rulebook()
    features = torch.randn(len(coords), channels)
    with torch.inference_mode(), MemoryProbe() as probe:
        conv(features, sites)
    output = 4 * channels * len(coords)
    assert output < probe.peak_bytes <= output + gather_chunk_bytes(channels, channels)


def test_non_contiguous_and_int64_coords_give_the_contiguous_result():
    coords, _ = _random_sites(seed=1)
    conv = SubmanifoldConv2d(8, 8, "k")
    features = torch.randn(len(coords), 8)
    strided = torch.zeros(len(coords), 6, dtype=torch.int64)
    strided[:, ::2] = coords
    strided = strided[:, ::2]
    assert not strided.is_contiguous()
    with torch.no_grad():
        a = conv(features, ActiveSites(strided, (13, 17), 1, "k"))
        b = conv(features, ActiveSites(coords.int().contiguous(), (13, 17), 1, "k"))
    torch.testing.assert_close(a, b)


def test_empty_active_set_never_reaches_spconv():
    conv = SubmanifoldConv2d(8, 16, "k")
    features = torch.zeros(0, 8, requires_grad=True)
    out = conv(features, ActiveSites(torch.zeros(0, 3, dtype=torch.long), (4, 4), 1, "k"))
    assert out.shape == (0, 16)
    out.sum().backward()


def test_rulebook_is_built_once_per_level_and_keys_cannot_mix():
    coords, _ = _random_sites()
    sites = ActiveSites(coords, (13, 17), 1, "l3")
    first, second = SubmanifoldConv2d(8, 8, "l3"), SubmanifoldConv2d(8, 8, "l3")
    with torch.no_grad():
        first(torch.randn(len(coords), 8), sites)
        rulebook = sites.rulebook()
        second(torch.randn(len(coords), 8), sites)
    assert sites.rulebook() is rulebook
    assert len(rulebook) == 8  # the centre offset is the identity pairing
    with pytest.raises(ValueError, match="l3"):
        SubmanifoldConv2d(8, 8, "l4")(torch.randn(len(coords), 8), sites)


def test_exact_on_every_run_with_several_threads():
    """spconv's own CPU scatter-add races with more than one torch thread; ours must not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        coords = torch.stack(
            torch.meshgrid(
                torch.zeros(1, dtype=torch.long), torch.arange(32), torch.arange(48), indexing="ij"
            ),
            dim=-1,
        ).reshape(-1, 3)
        conv = SubmanifoldConv2d(8, 8, "k")
        for _ in range(30):
            features = torch.randn(len(coords), 8)
            with torch.no_grad():
                out = conv(features, ActiveSites(coords, (32, 48), 1, "k"))
                dense = F.conv2d(_dense(features, coords, 32, 48), conv.dense_weight(), padding=1)
            torch.testing.assert_close(out, dense[0].permute(1, 2, 0).reshape(-1, 8))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only stream fallback")
def test_stream_lookup_is_safe_without_cuda():
    assert _current_stream() == 0


def _sites_of_a_batch(images: int, height: int, width: int, count: int, seed: int):
    """`count` distinct sites in a random order (fewer where a huge grid drew a site twice)."""
    generator = torch.Generator().manual_seed(seed)
    positions = images * height * width
    if positions <= 1 << 24:
        flat = torch.randperm(positions, generator=generator)[:count]
    else:
        flat = torch.randint(0, positions, (count,), generator=generator).unique()
        flat = flat[torch.randperm(len(flat), generator=generator)]
    rows = flat % (height * width)
    return torch.stack([flat // (height * width), rows // width, rows % width], 1).int()


def _pairs_by_lookup(indices, shape, images):
    """Each offset's pairs by a dictionary of the sites: the definition, slowly."""
    place = {tuple(site): i for i, site in enumerate(indices.tolist())}
    pairs = []
    for k in (0, 1, 2, 3, 5, 6, 7, 8):
        dy, dx = k // 3 - 1, k % 3 - 1
        found = [
            (place.get((b, r + dy, c + dx)), o) for o, (b, r, c) in enumerate(indices.tolist())
        ]
        pairs.append(
            tuple(
                torch.tensor(side, dtype=torch.int32)
                for side in zip(*[f for f in found if f[0] is not None], strict=True)
            )
            if any(f[0] is not None for f in found)
            else (torch.zeros(0, dtype=torch.int32),) * 2
        )
    return pairs


def _spconv_pairs(indices, shape, images):
    """spconv's own CPU rulebook, as pairs per offset: the reference."""
    _, pairs, counts = spconv_ops.get_indice_pairs(
        indices, images, shape, ConvAlgo.Native, [3, 3], [1, 1], [1, 1], [1, 1], [0, 0], True
    )
    counts = counts.tolist()
    return [
        (pairs[0, k, : counts[min(k, 8 - k)]], pairs[1, k, : counts[min(k, 8 - k)]])
        for k in range(9)
        if k != 4
    ]


@pytest.mark.parametrize(
    ("images", "height", "width", "count"),
    [(2, 13, 17, 200), (3, 5, 5, 75), (1, 40, 3, 90), (1, 1 << 16, 1 << 16, 3000)],
)
def test_the_rulebook_pairs_the_sites_spconv_pairs(images, height, width, count):
    """Shuffled sites over several images, a full grid, a thin one, and a grid of 2^32
    positions (int64 keys); search chunks split the largest."""
    indices = _sites_of_a_batch(images, height, width, count, seed=count)
    if height == 1 << 16:  # neighbours too, not only scattered sites
        indices = torch.cat([indices, indices + torch.tensor([0, 1, 1], dtype=torch.int32)])
        indices = indices[(indices[:, 1] < height) & (indices[:, 2] < width)].contiguous()
    ours = neighbour_pairs(indices, [height, width])
    references = [_pairs_by_lookup(indices, [height, width], images)]
    if height * width < 1 << 20:  # spconv's CPU rulebook takes a dense table of the grid
        references.append(_spconv_pairs(indices, [height, width], images))
    assert len(ours) == 8
    assert sum(len(inputs) for inputs, _ in ours) > 0
    for theirs in references:
        for (ours_in, ours_out), (their_in, their_out) in zip(ours, theirs, strict=True):
            assert ours_in.dtype == ours_out.dtype == torch.int32
            assert set(zip(ours_in.tolist(), ours_out.tolist(), strict=True)) == set(
                zip(their_in.tolist(), their_out.tolist(), strict=True)
            )


def test_the_rulebook_holds_at_most_32_bytes_a_site_and_48_while_built():
    """A full grid (every site has its eight neighbours, the most pairs), over several
    search chunks."""
    side = 256
    indices = _sites_of_a_batch(1, side, side, side * side, seed=1)
    assert len(indices) > 2 * PAIR_SEARCH_ROWS
    with torch.inference_mode(), MemoryProbe() as probe:
        pairs = neighbour_pairs(indices, [side, side])
        held = probe.live_bytes()
    # each offset pairs every site with the one beside it: 4 axial, 4 diagonal offsets
    assert sum(len(inputs) for inputs, _ in pairs) == 4 * side * (side - 1) + 4 * (side - 1) ** 2
    assert held <= 32 * len(indices)
    assert probe.peak_bytes <= RULEBOOK_BYTES_PER_SITE * len(indices) + PAIR_SEARCH_CHUNK_BYTES
