import dataclasses
import json

import pytest
import torch

from model.cost import MemoryCost, calibrate
from model.decoder import RefinementStage, SparseBasicBlock
from model.loss import quadtree_loss
from model.memory import MemoryProbe
from model.qgn import MODELS, QGN, QGNConfig, qgn_tiny, to_batch, to_pixels
from model.quadtree import COMPOSITE, canonical_leaves, dense_to_levels, leaves_to_dense
from model.regions import DenseSkip
from model.schemes import (
    RING_LEVELS,
    All,
    Budget,
    Oracle,
    PredictedComposite,
    Threshold,
    make_scheme,
    with_ring,
)
from model.sparse import ActiveSites, gather_chunk_bytes
from tests.model.dense_reference import dense_logits_all
from tests.model.test_schemes import grid_sites


def randomised(model: QGN, seed: int = 0) -> QGN:
    """Random BatchNorm statistics, so that no normalisation is an identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


def scene(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An image of large uniform regions and its label: a few coloured rectangles."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.zeros(height, width, dtype=torch.int64)
    image = torch.zeros(height, width, 3, dtype=torch.uint8)
    image[:] = torch.tensor([40, 90, 200], dtype=torch.uint8)
    colours = torch.randint(0, 256, (6, 3), generator=generator, dtype=torch.uint8)
    for cls in range(1, 6):
        r0 = int(torch.randint(0, height - 1, (1,), generator=generator))
        c0 = int(torch.randint(0, width - 1, (1,), generator=generator))
        r1 = r0 + int(torch.randint(1, max(2, height // 2), (1,), generator=generator))
        c1 = c0 + int(torch.randint(1, max(2, width // 2), (1,), generator=generator))
        label[r0:r1, c0:c1] = cls
        image[r0:r1, c0:c1] = colours[cls]
    return image, label


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_builds_runs_and_trains(name):
    model = MODELS[name](num_classes=6)
    image, label = scene(64, 96)
    targets = [t.unsqueeze(0) for t in dense_to_levels(label)]
    model.train()
    output = model(to_batch(image), Oracle(targets))
    assert [lvl.logits.shape[1] for lvl in output.levels] == [7] * 6
    assert output.active_sites()[0] == 2 * 3
    assert all(torch.isfinite(lvl.logits).all() for lvl in output.levels)
    loss, per_level = quadtree_loss(output, targets)
    loss.backward()
    assert torch.isfinite(loss) and len(per_level) == 6
    for stage in model.stages:
        assert stage.blocks[0].conv1.conv.weight.grad is not None
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("height", "width"), [(64, 96), (50, 70), (33, 1), (1, 40)])
def test_sparse_decoder_under_all_equals_the_dense_decoder(height, width):
    torch.manual_seed(0)
    model = randomised(qgn_tiny(num_classes=4))
    image = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8)
    batch = to_batch(image)
    with torch.inference_mode():
        output = model(batch, All())
    dense = dense_logits_all(model, batch)
    for level, (sparse, reference) in enumerate(zip(output.levels, dense, strict=True)):
        b, r, c = sparse.coords.unbind(dim=1)
        expected = reference.permute(0, 2, 3, 1)[b, r, c]
        rows, cols = -(-height // 2 ** (5 - level)), -(-width // 2 ** (5 - level))
        assert len(sparse.coords) == rows * cols, f"level {level} must be fully active"
        torch.testing.assert_close(sparse.logits, expected, atol=1e-4, rtol=1e-4)


STEM_BLOCKS = QGNConfig(
    num_classes=4,
    encoder_widths=(8, 8, 16, 16, 16),
    encoder_depths=(1, 1, 1, 1, 1),
    decoder_widths=(16, 16, 8, 8, 8, 8),
    decoder_depths=(0, 1, 1, 1, 1, 1),
)


# The tiny model with dilated context blocks in its dense head, as the served model has.
TINY_WITH_CONTEXT = QGNConfig(
    num_classes=4,
    encoder_widths=(8, 8, 16, 16, 16),
    decoder_widths=(16, 16, 8, 8, 8, 8),
    decoder_depths=(0, 1, 1, 1, 1, 1),
    head_dilations=(2, 4),
)


def test_context_blocks_start_as_the_identity_and_widen_what_level_0_sees():
    torch.manual_seed(3)
    plain = randomised(QGN(dataclasses.replace(TINY_WITH_CONTEXT, head_dilations=())), seed=4)
    widened = QGN(TINY_WITH_CONTEXT).eval()
    missing, unexpected = widened.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("head.context.") for k in missing)
    image, _ = scene(128, 256, seed=5)
    with torch.inference_mode():
        before = plain(to_batch(image), All()).levels
        after = widened(to_batch(image), All()).levels
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a.logits, b.logits)
    # Once trained (here: random), a level-0 site sees farther: a change 5 cells away (160
    # pixels) moves its logits with the context blocks and not without them.
    randomised(widened, seed=6)
    changed = image.clone()
    changed[:32, 160:192] = 255 - changed[:32, 160:192]
    for model, sees in ((plain, False), (widened, True)):
        with torch.inference_mode():
            a = model(to_batch(image), All()).levels[0].logits[0]
            b = model(to_batch(changed), All()).levels[0].logits[0]
        assert (not torch.allclose(a, b)) == sees


def test_pyramid_pooling_starts_as_the_identity_and_lets_level_0_see_the_whole_image():
    pooled_config = dataclasses.replace(TINY_WITH_CONTEXT, head_pool_grids=((1, 2), (2, 4)))
    plain = randomised(QGN(TINY_WITH_CONTEXT), seed=4)
    pooled = QGN(pooled_config).eval()
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("head.pyramid.") for k in missing)
    image, _ = scene(256, 512, seed=5)
    with torch.inference_mode():
        for a, b in zip(
            plain(to_batch(image), All()).levels, pooled(to_batch(image), All()).levels, strict=True
        ):
            assert torch.equal(a.logits, b.logits)
    # Once trained (here: random), the top-left site sees a change 14 cells away (448
    # pixels), beyond the dilated blocks' reach, with the pyramid and not without it.
    for parameter in pooled.head.pyramid.parameters():
        torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(7))
    changed = image.clone()
    changed[224:, 448:] = 255 - changed[224:, 448:]
    for model, sees in ((plain, False), (pooled, True)):
        with torch.inference_mode():
            a = model(to_batch(image), All()).levels[0].logits[0]
            b = model(to_batch(changed), All()).levels[0].logits[0]
        assert (not torch.allclose(a, b)) == sees
    # The card keeps the grids as JSON lists; the config reads them back as tuples.
    as_json = json.loads(json.dumps(pooled_config.to_dict()))
    assert QGNConfig.from_dict(as_json) == pooled_config


def test_the_dense_head_frees_its_input_and_each_blocks_input():
    """The head sets the request's peak at 1024×2048: a chain of calls would hold the
    stride-32 map and the projected map while the last block runs, two maps more."""
    head = randomised(QGN(TINY_WITH_CONTEXT), seed=16).fold_batchnorms().head
    shape = (1, TINY_WITH_CONTEXT.encoder_widths[-1], 16, 32)
    map_bytes = 4 * TINY_WITH_CONTEXT.decoder_widths[0] * 16 * 32
    with torch.inference_mode():
        with MemoryProbe() as owned:
            features, logits = head(
                [torch.randn(shape, generator=torch.Generator().manual_seed(1))]
            )
            del features, logits
        with MemoryProbe() as chained:
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            chain = head.context(head.blocks(head.project(x)))
            chain_logits = head.classifier(chain)
        again = head([x.clone()])
    assert torch.equal(again[0], chain) and torch.equal(again[1], chain_logits)
    assert owned.peak_bytes <= chained.peak_bytes - 2 * map_bytes


def test_folded_batchnorms_give_the_same_logits():
    model = randomised(QGN(TINY_WITH_CONTEXT), seed=14)
    image, _ = scene(96, 128, seed=15)
    before = model.predict(image, All())
    with torch.inference_mode():
        logits = model(to_batch(image), All()).levels
    model.fold_batchnorms()
    after = model.predict(image, All())
    with torch.inference_mode():
        folded = model(to_batch(image), All()).levels
    for a, b in zip(logits, folded, strict=True):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(before.mask, after.mask)
    assert after.peak_bytes <= before.peak_bytes
    dense_parts = [*model.encoder.modules(), *model.head.modules()]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in dense_parts)
    with pytest.raises(RuntimeError, match="folded"):
        model.train()


def test_threshold_zero_is_all_and_a_high_threshold_refines_less():
    model = randomised(qgn_tiny(num_classes=4), seed=1)
    image, _ = scene(96, 128, seed=2)
    full = model.predict(image, All())
    zero = model.predict(image, Threshold(0.0))
    assert zero.active_sites == full.active_sites
    assert torch.equal(zero.mask, full.mask)
    assert model.predict(image, Threshold(1.0)).active_sites[1:] == [0] * 5


def test_active_sites_do_not_grow_with_tau():
    """Exact at level 1 (its parents are dense); summed over a few scenes for the rest."""
    model = randomised(qgn_tiny(num_classes=4), seed=3)
    taus = [0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
    totals = [0] * len(taus)
    for seed in range(3):
        image, _ = scene(96, 160, seed=seed)
        level1 = []
        for i, tau in enumerate(taus):
            sites = model.predict(image, Threshold(tau)).active_sites
            level1.append(sites[1])
            totals[i] += sum(sites)
        assert level1 == sorted(level1, reverse=True)
    assert totals == sorted(totals, reverse=True)
    assert totals[0] > totals[-1]


def test_oracle_propagates_the_ground_truth_composites_and_pcs_ring():
    """pc's upper bound: the truth where pc has its prediction, the same ring around it."""
    model = randomised(qgn_tiny(num_classes=6), seed=4)
    height, width = 80, 112
    image, label = scene(height, width, seed=5)
    targets = [t.unsqueeze(0) for t in dense_to_levels(label)]
    with torch.inference_mode():
        output = model(to_batch(image), Oracle(targets))
    for level, computed in enumerate(output.levels[:-1]):
        b, r, c = computed.coords.unbind(dim=1)
        composite = targets[level][b, r, c] == COMPOSITE
        expected = with_ring(composite, computed.coords) if level in RING_LEVELS else composite
        assert torch.equal(computed.propagate, expected)
        # The next level computes exactly the in-image children of those sites.
        parents = computed.coords[expected].long()
        offsets = torch.tensor([[0, dr, dc] for dr in (0, 1) for dc in (0, 1)])
        children = (parents * torch.tensor([1, 2, 2])).unsqueeze(1) + offsets
        children = children.reshape(-1, 3)
        size = 2 ** (5 - level - 1)
        children = children[(children[:, 1] * size < height) & (children[:, 2] * size < width)]
        computed_children = output.levels[level + 1].coords.long()
        assert len(computed_children) == len(children)
        assert torch.equal(torch.unique(computed_children, dim=0), torch.unique(children, dim=0))


def test_prediction_is_consistent_mask_and_canonical_leaves():
    model = randomised(qgn_tiny(num_classes=6), seed=6)
    image, _ = scene(70, 90, seed=7)
    pred = model.predict(image, PredictedComposite())
    assert pred.mask.shape == (70, 90) and pred.mask.dtype == torch.uint8
    assert int(pred.mask.max()) < 6
    assert torch.equal(pred.leaves, canonical_leaves(pred.mask))
    assert torch.equal(leaves_to_dense(pred.leaves, 70, 90, dtype=torch.uint8), pred.mask)
    assert pred.in_image_sites == [9, 30, 108, 414, 1575, 6300]
    assert all(0.0 <= f <= 1.0 for f in pred.active_fraction)


def test_budget_never_exceeds_its_budget_and_fills_it():
    model = randomised(qgn_tiny(num_classes=4), seed=8)
    model.cost = calibrate(model, "cpu")
    image, _ = scene(128, 192, seed=9)
    full = model.predict(image, All())
    floor = model.cost.min_budget_bytes(128, 192)
    assert model.predict(image, Budget(1)).peak_bytes <= floor
    previous = 0
    for fraction in (0.2, 0.4, 0.6, 0.8, 1.0):
        budget = int(floor + fraction * (full.peak_bytes - floor))
        pred = model.predict(image, Budget(budget))
        assert pred.peak_bytes <= budget, (fraction, pred.peak_bytes, budget)
        assert sum(pred.active_sites) >= previous
        previous = sum(pred.active_sites)
    assert previous > sum(model.predict(image, Budget(1)).active_sites)


def test_pc_costs_less_than_all_on_large_uniform_regions():
    """A model that knows where the boundaries are (here: the truth, via the oracle) spends
    less; `pc` uses the same path with predicted composites."""
    model = randomised(qgn_tiny(num_classes=6), seed=10)
    image, label = scene(256, 256, seed=11)
    label[:] = 0
    label[100:150, 60:200] = 3
    targets = [t.unsqueeze(0) for t in dense_to_levels(label)]
    full = model.predict(image, All())
    oracle = model.predict(image, Oracle(targets))
    assert oracle.peak_bytes < 0.6 * full.peak_bytes
    assert sum(oracle.decoder_bytes) < 0.3 * sum(full.decoder_bytes)


def test_tracker_agrees_with_the_analytic_stage_cost_within_10_percent():
    """The analytic cost of a sparse stage (model.cost) against the allocation tracker."""
    for channels, skip_channels in ((16, 3), (32, 16), (64, 32)):
        stage = RefinementStage(channels, skip_channels, channels, 13, 1, "k").eval()
        analytic = MemoryCost.analytic((channels,) * 6, (8,) * 5)
        side = 64
        parents = grid_sites(1, side, side)
        skip = torch.randn(1, skip_channels, 2 * side, 2 * side)
        grid = (2 * side, 2 * side)
        with torch.inference_mode(), MemoryProbe() as probe:
            # The stage owns the parents' features, as the decoder hands them over.
            stage([torch.randn(side * side, channels)], parents, DenseSkip(skip), grid, grid, 1)
        children = 4 * side * side
        # Level 5's terms: the same widths, and a skip read from a map, not recomputed.
        predicted = analytic.stage_bytes[5] + analytic.site_bytes[5] * children
        assert abs(probe.peak_bytes - predicted) <= 0.1 * probe.peak_bytes, (
            channels,
            probe.peak_bytes,
            predicted,
        )


def test_a_residual_block_at_inference_adds_into_its_input_and_holds_two_tensors():
    """The second convolution, its BatchNorm folded, adds into the block's input: the output
    of convolution, norm and sum done apart, with one (sites, channels) tensor fewer."""
    channels, side = 32, 64
    block = randomised(SparseBasicBlock(channels, "k"), seed=3)
    coords = grid_sites(1, side, side)
    sites = ActiveSites(coords, (side, side), 1, "k")
    sites.rulebook()
    x = torch.randn(len(coords), channels)
    expected = block(x.clone().requires_grad_(), sites).detach()  # recording: apart
    with torch.inference_mode(), MemoryProbe() as probe:
        out = block(x, sites)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.data_ptr() == x.data_ptr()
    one_tensor = 4 * channels * len(coords)
    filters = 2 * 9 * channels * channels * 4  # as model.cost counts a stage's filter copies
    # The first convolution's output and a chunk; apart, the second's output joined them.
    assert probe.peak_bytes <= one_tensor + gather_chunk_bytes(channels, channels) + filters


class KeptSkip(DenseSkip):
    """A kept map that is never released, as before levels released theirs."""

    def release(self) -> None:
        pass


def test_a_level_frees_its_kept_map_once_read():
    """At 1024×2048 the stride-8 map (8 MiB) sat under level 2's convolutions and set the
    peak of scenes with many boundaries; read at the sites, it is no longer needed."""
    channels, skip_channels, side = 16, 32, 32
    stage = RefinementStage(channels, skip_channels, channels, 13, 2, "k").eval()
    parents = grid_sites(1, side, side)
    grid = (2 * side, 2 * side)
    map_bytes = 4 * skip_channels * grid[0] * grid[1]
    runs = {}
    for source in (DenseSkip, KeptSkip):
        generator = torch.Generator().manual_seed(3)
        with torch.inference_mode(), MemoryProbe() as probe:
            skip = source(torch.randn(1, skip_channels, *grid, generator=generator))
            parent_features = [torch.randn(side * side, channels, generator=generator)]
            runs[source] = (stage(parent_features, parents, skip, grid, grid, 1), probe)
            del skip
    (released, released_probe), (kept, kept_probe) = runs[DenseSkip], runs[KeptSkip]
    assert all(torch.equal(a, b) for a, b in zip(released, kept, strict=True))
    assert released_probe.peak_bytes <= kept_probe.peak_bytes - map_bytes // 2


def test_a_stage_frees_its_parents_features_once_upsampled():
    """The parents' floats (a fifth of level 4's bytes a site) no longer sit under the
    level's convolutions: the stage empties the list it is given and peaks lower than a run
    whose caller still holds them."""
    channels, side = 16, 64
    stage = RefinementStage(channels, 3, channels, 13, 1, "k").eval()
    parents = grid_sites(1, side, side)
    grid = (2 * side, 2 * side)
    skip = torch.randn(1, 3, *grid)
    parent_bytes = 4 * channels * side * side
    with torch.inference_mode():
        with MemoryProbe() as held:
            features = torch.randn(side * side, channels)
            from_held = stage([features], parents, DenseSkip(skip), grid, grid, 1)
        with MemoryProbe() as freed:
            handed = [features.clone()]
            from_handed = stage(handed, parents, DenseSkip(skip), grid, grid, 1)
    assert handed == []
    assert all(torch.equal(a, b) for a, b in zip(from_held, from_handed, strict=True))
    assert freed.peak_bytes <= held.peak_bytes - parent_bytes // 2


def test_a_levels_coordinates_are_one_int32_copy_that_spconv_reads_too():
    """int64 coordinates beside spconv's int32 indices were 24 bytes a site of every level."""
    model = randomised(qgn_tiny(num_classes=4), seed=14)
    image, _ = scene(64, 96, seed=15)
    with torch.inference_mode():
        output = model(to_batch(image), All())
    assert all(level.coords.dtype == torch.int32 for level in output.levels)
    coords = output.levels[3].coords
    assert ActiveSites(coords, (16, 24), 1, "k").indices.data_ptr() == coords.data_ptr()


def test_same_input_same_result_and_same_peak():
    model = randomised(qgn_tiny(num_classes=4), seed=12)
    image, _ = scene(64, 64, seed=13)
    a, b = model.predict(image, PredictedComposite()), model.predict(image, PredictedComposite())
    assert torch.equal(a.mask, b.mask) and a.peak_bytes == b.peak_bytes > 0


def test_bad_inputs_and_names_are_refused_clearly():
    model = qgn_tiny().eval()
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        model.predict(torch.zeros(3, 8, 8, dtype=torch.uint8), All())
    with pytest.raises(ValueError, match="valid schemes: all, pc, threshold, budget, auto, oracle"):
        make_scheme("dense")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_scheme("threshold", threshold=1.5)
    with pytest.raises(ValueError, match="> 0"):
        make_scheme("budget", budget_mb=0)
    with pytest.raises(ValueError, match="6 decoder widths"):
        QGNConfig(num_classes=3, decoder_widths=(8, 8))
    with pytest.raises(RuntimeError, match="eval"):
        qgn_tiny().train().predict(torch.zeros(8, 8, 3, dtype=torch.uint8), All())


def _level(coords: list[list[int]], logits: list[list[float]], propagate: list[bool]):
    from model.qgn import LevelOutput

    return LevelOutput(
        torch.tensor(coords, dtype=torch.int64).reshape(-1, 3),
        torch.tensor(logits).reshape(-1, 3),
        torch.tensor(propagate, dtype=torch.bool),
    )


@pytest.mark.parametrize("scheme", [All(), PredictedComposite()])
def test_reading_rule_lets_computed_children_correct_a_wrongly_uniform_parent(scheme):
    """A 2×2 image, two levels: level 0 calls its block class 0 (wrongly: one pixel is class
    1). Under `all` its children are computed and read; under `pc` the block is a leaf."""
    from model.qgn import QGNOutput
    from model.schemes import LevelView

    parent_logits = [[0.0, 4.0, 1.0]]  # composite, class 0, class 1
    view = LevelView(0, torch.tensor(parent_logits), torch.tensor([[0, 0, 0]]), 0, 1, 0)
    propagate = bool(scheme.select(view)[0])
    levels = [_level([[0, 0, 0]], parent_logits, [propagate])]
    if propagate:
        children = [[0, r, c] for r in range(2) for c in range(2)]
        child_logits = [[0.0, 3.0, 0.0]] * 3 + [[0.0, 0.0, 3.0]]
        levels.append(_level(children, child_logits, [False] * 4))
    else:
        levels.append(_level([], [], []))
    leaves = QGNOutput(levels, 2, 2).leaves()
    mask = leaves_to_dense(leaves, 2, 2, levels=2)
    if isinstance(scheme, All):
        assert mask.tolist() == [[0, 0], [0, 1]] and leaves[:, 0].eq(1).all()
    else:
        assert mask.tolist() == [[0, 0], [0, 0]] and leaves.tolist() == [[0, 0, 0, 0]]


@pytest.mark.parametrize(("height", "width"), [(64, 96), (45, 70)])
def test_under_all_every_pixel_reads_the_finest_level(height, width):
    model = randomised(qgn_tiny(num_classes=5), seed=3)
    image, _ = scene(height, width, seed=4)
    with torch.inference_mode():
        output = model(to_pixels(image), All())
        finest = output.levels[-1]
        expected = torch.full((height, width), -1, dtype=torch.int64)
        expected[finest.coords[:, 1], finest.coords[:, 2]] = finest.logits[:, 1:].argmax(1)
    assert (expected >= 0).all()
    assert torch.equal(model.predict(image.numpy(), All()).mask.long(), expected)


def test_inference_holds_each_level_as_its_leaves_and_reads_the_same_quadtree():
    """With `leaves_only` a level keeps its leaves, not every site's coordinates and logits:
    the same leaves and site counts, and the last level starts at least the earlier levels'
    logits lower."""
    torch.manual_seed(0)
    model = randomised(qgn_tiny(num_classes=5))
    image, _ = scene(96, 160, seed=6)
    runs = {}
    for leaves_only in (False, True):
        with torch.inference_mode(), MemoryProbe() as probe:
            output = model(to_pixels(image), Threshold(0.1), probe, leaves_only=leaves_only)
        runs[leaves_only] = (output.leaves(), output.active_sites(), probe.phase_starts["level5"])
    (full_leaves, full_sites, full_start), (leaves, sites, start) = runs[False], runs[True]
    assert torch.equal(leaves, full_leaves) and sites == full_sites
    assert 0 < sites[5] < sites[4] * 4  # some of level 4 are leaves
    logits_bytes = 4 * 6 * sum(sites[:5])
    assert full_start - start >= logits_bytes, (full_start, start, logits_bytes)
