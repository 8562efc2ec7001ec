"""The encoder from uint8 pixels (`model.regions`) is the whole-map encoder, computed window by
window: the same logits (within 1e-4, with the kept stride-8 and -16 maps in half precision),
while no map at strides 2 and 4 is ever held whole and the memory of recomputing them follows
the sites."""

from __future__ import annotations

import pytest
import torch

from model.cost import calibrate
from model.memory import MemoryProbe
from model.qgn import QGN, qgn_tiny, to_batch, to_pixels
from model.regions import KEPT_DTYPE, DenseSkip, SitesFromPixels, encoder_from_pixels
from model.schemes import All, Budget, Nothing, PredictedComposite, Threshold
from tests.model.test_qgn import STEM_BLOCKS, randomised, scene

SIZES = [(300, 200), (97, 131), (33, 1), (1, 40), (64, 64)]
MODELS = {"tiny": lambda: qgn_tiny(4), "stem-with-blocks": lambda: QGN(STEM_BLOCKS)}


class HoldNothing(All):
    """`all`, but as a budget too small to keep the stride-8 and stride-16 maps would run."""

    def holds_skips(self, held_floor_bytes: int, kept_bytes: int) -> bool:
        return False


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("scheme", [All(), PredictedComposite(), HoldNothing()], ids=type)
def test_pixels_give_the_whole_map_logits(name, height, width, scheme):
    """Same sites, logits within 1e-4, same masks, under every way the skips are read."""
    model = randomised(MODELS[name](), seed=height + width)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    with torch.inference_mode():
        whole = model(to_batch(image), scheme)
        windowed = model(to_pixels(image), scheme)
    assert windowed.held_skips == (not isinstance(scheme, HoldNothing))
    for a, b in zip(whole.levels, windowed.levels, strict=True):
        assert torch.equal(a.coords, b.coords) and torch.equal(a.propagate, b.propagate)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=0)
    assert torch.equal(whole.leaves(), windowed.leaves())


@pytest.mark.parametrize("hold", [True, False])
@pytest.mark.parametrize(("height", "width"), [(129, 250), (40, 33)])
def test_every_skip_source_reads_the_whole_map(hold, height, width):
    """Recomputed sites and the pixels as they are; the kept stride-8 and -16 maps rounded to
    KEPT_DTYPE, and the stride-32 map made from the rounded stride-16 one."""
    model = randomised(qgn_tiny(4), seed=7)
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    with torch.inference_mode():
        batch = to_batch(image, pad_to=32)
        maps = model.encoder(batch)
        deepest, skips = encoder_from_pixels(model.encoder, to_pixels(image), hold)
        if hold:
            assert [skips[0].features.dtype, skips[1].features.dtype] == [KEPT_DTYPE] * 2
            maps = [*maps[:2], *(kept.to(KEPT_DTYPE).float() for kept in maps[2:4])]
            maps.append(model.encoder.stages[3](maps[3]))
        torch.testing.assert_close(deepest, maps[4], atol=1e-5, rtol=0)
        for source, whole in zip(skips, [*maps[3::-1], batch], strict=True):
            rows, cols = whole.shape[-2:]
            grid = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            coords = torch.stack([torch.zeros_like(grid[0]), *grid], -1).reshape(-1, 3)
            if source is skips[-1]:  # level 5 reads the image's own pixels, never the padding
                coords = coords[(coords[:, 1] < height) & (coords[:, 2] < width)]
            expected = whole[0, :, coords[:, 1], coords[:, 2]].t()
            # rounding to half precision may round a value computed in another order apart
            rtol = 2.0**-10 if isinstance(source, DenseSkip) else 0
            torch.testing.assert_close(source.at(coords), expected, atol=1e-5, rtol=rtol)


def test_recomputed_sites_cost_memory_by_the_site_not_by_the_image():
    """Three sites of the stride-2 and stride-4 maps of a 1024x2048 image cost a small
    fraction of either map."""
    model = randomised(qgn_tiny(4), seed=8)
    pixels = to_pixels(torch.randint(0, 256, (1024, 2048, 3), dtype=torch.uint8))
    for stages, channels, stride in [(0, 8, 2), (1, 8, 4)]:
        source = SitesFromPixels(model.encoder, pixels, stages)
        whole_map = 4 * channels * (1024 // stride) * (2048 // stride)
        few = torch.tensor([[0, 3, 5], [0, 100, 200], [0, 20, 400]])
        with torch.inference_mode(), MemoryProbe(torch.device("cpu")) as probe:
            source.at(few)
        assert probe.peak_bytes < whole_map / 20, (stride, probe.peak_bytes, whole_map)


def test_refine_nothing_under_a_small_budget_holds_no_map_and_costs_less():
    """At 1024x2048 a budget too small for the stride-8 map runs the lean encoder, which
    never holds that map; the calibrated cost model covers both floors."""
    model = randomised(qgn_tiny(4), seed=9)
    model.cost = calibrate(model, "cpu")
    image, _ = scene(1024, 2048, seed=10)
    lean = model.predict(image, Budget(1))
    held = model.predict(image, Nothing())
    held_maps = 2 * 16 * (128 * 256 + 64 * 128)  # stride 8 and 16, 16 half floats each
    assert held.phase_peaks["encoder"] >= held_maps
    assert lean.phase_peaks["encoder"] <= held.phase_peaks["encoder"] - held_maps / 2
    assert lean.peak_bytes <= model.cost.min_budget_bytes(1024, 2048)
    assert held.peak_bytes <= model.cost.held_floor_bytes(1024, 2048)
    assert torch.equal(lean.mask, held.mask)


def test_a_threshold_run_is_the_same_from_pixels_or_floats():
    model = randomised(qgn_tiny(4), seed=11)
    image, _ = scene(100, 150, seed=12)
    with torch.inference_mode():
        a = model(to_batch(image), Threshold(0.3)).leaves()
    assert torch.equal(a, model(to_pixels(image), Threshold(0.3)).leaves())


def test_pixels_are_for_inference_only():
    model = qgn_tiny(4).train()
    with pytest.raises(RuntimeError, match="inference"):
        model(to_pixels(torch.zeros(32, 32, 3, dtype=torch.uint8)), All())


def test_a_kept_map_is_read_and_projected_a_chunk_of_sites_at_a_time():
    """The map is whole while its level reads it; its values at every site beside it were a
    third (sites, channels) tensor at level 2's peak."""
    generator = torch.Generator().manual_seed(5)
    skip_channels, channels, side = 64, 32, 128
    kept = torch.randn(1, skip_channels, side, side, generator=generator)
    sites = 8192
    flat = torch.randperm(side * side, generator=generator)[:sites]
    coords = torch.stack([torch.zeros_like(flat), flat // side, flat % side], 1).to(torch.int32)
    weight = torch.randn(channels, skip_channels, generator=generator)
    features = torch.randn(sites, channels, generator=generator)
    whole = features + kept[0, :, coords[:, 1], coords[:, 2]].t() @ weight.t()
    with torch.inference_mode(), MemoryProbe() as probe:
        chunked = DenseSkip(kept).add_projected_(features, coords, weight)
    assert chunked is features  # in place
    assert torch.allclose(chunked, whole, atol=1e-4)
    assert probe.peak_bytes <= 4 * sites * skip_channels // 4  # a chunk, not all the sites
