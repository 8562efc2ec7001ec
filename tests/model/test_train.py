"""Training runs, resumes, and trains identically on two data-parallel CPU processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.data import CLASSES, PALETTE
from model.qgn import QGN as Network
from model.qgn import to_batch
from model.quadtree import COMPOSITE, IGNORE, dense_to_levels
from model.schemes import LevelView
from model.train import (
    ScenePool,
    TeacherForcing,
    TrainConfig,
    draw_density,
    learning_rate,
    random_scale_crop_flip,
    start_from_weights,
    train,
)
from model.weights import load_weights

QGN = str(Path(sys.executable).with_name("qgn"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY = [
    "--model",
    "qgn_tiny",
    "--batch-size",
    "2",
    "--crop",
    "64",
    "128",
    "--base-size",
    "64",
    "128",
    "--cache-scenes",
    "4",
    "--log-every",
    "1",
]


def tiny_config(out: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        model="qgn_tiny",
        steps=steps,
        batch_size=2,
        crop=(64, 128),
        base_size=(64, 128),
        cache_scenes=4,
        checkpoint_every=2,
        log_every=1,
        warmup_steps=2,
        out=str(out),
        classes=list(CLASSES),
        palette=[list(c) for c in PALETTE],
    )


def test_train_writes_loadable_weights_and_resumes(tmp_path):
    weights = train(tiny_config(tmp_path, steps=3), command="test")
    model, card = load_weights(weights)
    assert card["classes"] == list(CLASSES) and card["training"]["steps"] == 3
    assert card["training"]["pixels"] == 3 * 2 * 64 * 128  # steps × batch × crop
    assert card["training"]["command"] == "test" and card["dataset"] == "synthetic"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    train(tiny_config(tmp_path, steps=5), resume=True)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and state["pixels"] == 5 * 2 * 64 * 128  # counted across resumes
    resumed, _ = load_weights(weights)
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    assert changed
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(tmp_path / "empty", steps=1), resume=True)


def test_fine_tuning_adds_context_to_weights_trained_without_it(tmp_path):
    weights = train(tiny_config(tmp_path / "plain", steps=1))
    plain, _ = load_weights(weights, fold_batchnorms=False)
    widened = Network(
        dataclasses.replace(plain.config, head_dilations=(2,), head_pool_grids=((1, 2), (2, 4)))
    )
    added = start_from_weights(widened, weights, torch.device("cpu"))
    assert added == ["head.context.0", "head.pyramid"]
    for name, tensor in plain.state_dict().items():
        assert torch.equal(widened.state_dict()[name], tensor), name
    wider = Network(dataclasses.replace(plain.config, decoder_widths=(16, 16, 8, 8, 8, 16)))
    with pytest.raises(ValueError, match="does not fit"):
        start_from_weights(wider, weights, torch.device("cpu"))
    deeper = Network(dataclasses.replace(plain.config, decoder_depths=(0, 1, 1, 1, 1, 2)))
    with pytest.raises(ValueError, match=r"missing.*stages\.4\.blocks\.1"):
        start_from_weights(deeper, weights, torch.device("cpu"))


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "QGN_DUMP_RANK_WEIGHTS": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node",
            "2",
            QGN,
            "train",
            *TINY,
            "--steps",
            "3",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (
        load_file(str(tmp_path / "rank0.safetensors")),
        load_file(str(tmp_path / "rank1.safetensors")),
    )
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # ...and training changed them: the ranks did not merely both stay at the initial weights.
    torch.manual_seed(0)
    initial = __import__("model.qgn", fromlist=["qgn_tiny"]).qgn_tiny(len(CLASSES)).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0 if rank0[k].is_floating_point())
    assert "step 3/3" in run.stderr


def noise_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels and labels of 4 classes: every window and every resampling differs."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, rng.integers(0, 4, (height, width), dtype=np.uint8)


def test_scale_crop_flip_keeps_labels_and_sizes():
    rng = np.random.default_rng(0)
    image, label = noise_scene(rng, 50, 70)
    config = TrainConfig(crop=(64, 96), scale=(0.5, 1.5))
    for _ in range(10):
        crop_image, crop_label = random_scale_crop_flip(image, label, config, rng)
        assert crop_image.shape == (64, 96, 3) and crop_label.shape == (64, 96)
        assert set(np.unique(crop_label)) <= {0, 1, 2, 3, IGNORE}


def test_native_crops_are_the_scene_as_drawn():
    """A native crop is a window of the scene's own pixels and labels (flipped or not),
    never resampled: the model must see scenes as drawn at the sizes it serves."""
    rng = np.random.default_rng(1)
    image, label = noise_scene(rng, 64, 128)
    config = TrainConfig(crop=(32, 64), scale=(0.5, 1.5))
    windows = {
        image[top : top + 32, left : left + 64].tobytes(): (top, left)
        for top in range(33)
        for left in range(65)
    }
    for _ in range(10):
        crop_image, crop_label = random_scale_crop_flip(image, label, config, rng, native=True)
        for flip in (False, True):
            pixels = np.ascontiguousarray(crop_image[:, ::-1] if flip else crop_image)
            if pixels.tobytes() in windows:
                top, left = windows[pixels.tobytes()]
                expected = label[top : top + 32, left : left + 64]
                assert np.array_equal(crop_label, expected[:, ::-1] if flip else expected)
                break
        else:
            raise AssertionError("a native crop is not a window of the scene")
    resampled, _ = random_scale_crop_flip(image, label, config, rng)
    assert not any(
        np.ascontiguousarray(c).tobytes() in windows for c in (resampled, resampled[:, ::-1])
    )


def test_native_share_cuts_crops_from_half_size_scenes_as_drawn():
    config = dataclasses.replace(
        tiny_config(Path("unused"), 1), native_share=1.0, crop=(32, 64), batch_size=8
    )
    pool = ScenePool(config, rank=0, world=1)
    _, labels = pool.batch(1)  # an odd step: no pool refresh, every draw is a half-size scene
    drawn = [pool.half_size[k][1] for k in range(config.cache_scenes, pool.next_index)]
    assert drawn and all(scene.shape == (32, 64) for scene in drawn)
    as_drawn = {bytes(s.tobytes()) for scene in drawn for s in (scene, scene[:, ::-1].copy())}
    matches = sum(label.numpy().astype(np.uint8).tobytes() in as_drawn for label in labels)
    assert matches == len(drawn)


def test_whole_scenes_are_scaled_or_as_drawn_never_cropped():
    rng = np.random.default_rng(2)
    image, label = noise_scene(rng, 64, 128)
    config = TrainConfig(crop=(32, 64), scale=(0.5, 0.75))
    for _ in range(10):
        scaled, scaled_label = random_scale_crop_flip(image, label, config, rng, whole=True)
        assert 32 <= scaled.shape[0] <= 48 and scaled.shape[:2] == scaled_label.shape
        assert abs(scaled.shape[1] - 2 * scaled.shape[0]) <= 1  # the whole scene, not a window
        drawn, drawn_label = random_scale_crop_flip(image, label, config, rng, True, True)
        flipped = not np.array_equal(drawn, image)
        assert np.array_equal(drawn, image[:, ::-1] if flipped else image)
        assert np.array_equal(drawn_label, label[:, ::-1] if flipped else label)


def test_whole_share_is_the_share_of_steps_that_take_one_whole_scene():
    config = dataclasses.replace(
        tiny_config(Path("unused"), 1), crop=(32, 64), scale=(0.75, 0.75), whole_share=0.5
    )
    pool = ScenePool(config, rank=0, world=1)
    shapes = [tuple(pool.batch(step)[0].shape) for step in range(40)]
    whole, cropped = (1, 3, 48, 96), (config.batch_size, 3, 32, 64)
    assert set(shapes) == {whole, cropped}
    assert 10 <= shapes.count(whole) <= 30
    # ...decided by the step alone, as every data-parallel process decides it.
    other = ScenePool(config, rank=1, world=2)
    assert [other.batch(step)[0].shape[0] for step in range(40)] == [s[0] for s in shapes]


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    rates = [learning_rate(config, step) for step in range(100)]
    assert rates[0] < rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(rates[10:]))
    assert rates[-1] < 0.05


def test_teacher_forcing_refines_every_true_composite():
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[10:20, 30:50] = 2
    targets = [t.unsqueeze(0) for t in dense_to_levels(label, prune=False)]
    coords = torch.stack(
        torch.meshgrid(
            torch.zeros(1, dtype=torch.long), torch.arange(2), torch.arange(2), indexing="ij"
        ),
        -1,
    ).reshape(-1, 3)
    logits = torch.zeros(4, 5)
    logits[:, 1] = 5.0  # the network says "uniform" everywhere
    view = LevelView(0, logits, coords, 0, 1, 0)
    chosen = TeacherForcing(targets, 0.0, torch.Generator().manual_seed(0)).select(view)
    truth = targets[0][0, coords[:, 1], coords[:, 2]] == COMPOSITE
    assert torch.equal(chosen, truth) and truth.any()
    assert to_batch(np.zeros((8, 8, 3), dtype=np.uint8)).shape == (1, 3, 8, 8)


def test_density_sampler_covers_none_to_every_site():
    generator = torch.Generator().manual_seed(0)
    draws = np.array([draw_density(0.2, generator) for _ in range(2000)])
    dense = draws == 1.0
    assert 0.15 < dense.mean() < 0.25  # a fifth of the steps refine every site
    sparse = draws[~dense]
    assert sparse.min() < 0.02 and sparse.max() > 0.98
    assert np.histogram(sparse, bins=10, range=(0, 1))[0].min() > 0.05 * len(sparse)


@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_teacher_forcing_refines_the_truth_the_predictions_and_the_density(density):
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (1, 40, 40))
    logits = torch.randn(1600, 4, generator=generator)
    rows, cols = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    coords = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
    view = LevelView(0, logits, coords, 0, 1, 1)
    chosen = TeacherForcing([target], density, generator).select(view)
    forced = (target.reshape(-1) == COMPOSITE) | (logits.argmax(1) == COMPOSITE)
    assert chosen[forced].all()
    rest = chosen[~forced].float().mean()
    assert abs(float(rest) - density) < 0.08
