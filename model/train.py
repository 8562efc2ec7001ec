"""Training a QGN: quadtree losses at every level, with ground-truth-driven propagation.

Propagation follows the ground-truth composites (teacher forcing), so training memory is
sparse too. On top of them the decoder refines the sites it predicts as composite and a random
share of the rest whose size is drawn per step, from none to every site (`draw_density`), and
every computed site is scored against its true target at its level, interiors included (the
reference ignores children of uniform parents). A scheme chosen at inference (`all`, any
threshold, any budget) then meets the densities and the sites it was trained on, and the
finest level learns every pixel, which the reading rule of `QGNOutput.leaves` relies on.

Runs on one process, or data-parallel under `torchrun` (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor

from model.data import build_dataset
from model.loss import quadtree_loss
from model.qgn import MODELS, QGN, to_batch
from model.quadtree import COMPOSITE, IGNORE, dense_to_levels, leaves_to_dense
from model.schemes import LevelView, Scheme
from model.weights import load_weights, save_weights


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    root: str | None = None
    model: str = "qgn_small"
    steps: int = 2000
    batch_size: int = 8
    crop: tuple[int, int] = (256, 512)
    # Scenes are drawn (or resized) to this size, then scaled: 0.4-1.2 of 1024×2048 covers
    # both served sizes, 512×1024 (0.5) and 1024×2048 (1.0).
    base_size: tuple[int, int] = (1024, 2048)
    scale: tuple[float, float] = (0.4, 1.2)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    dense_share: float = 0.2  # steps that refine every site; the others draw a density
    # Crops cut from a scene as drawn, not resampled: half from base-size scenes, half (on
    # synthetic data) from scenes drawn at half the base size. Trained on resampled scenes
    # only, the model scored 3 points less on scenes as drawn at either served size.
    native_share: float = 0.0
    # The share of steps that take one whole scene instead of `batch_size` crops (whole
    # scenes differ in size): the dense head's pyramid pooling then learns from the whole
    # image it sees when served, not a quarter of it.
    whole_share: float = 0.0
    init: str | None = None  # start from these weights (a .safetensors with its card)
    cache_scenes: int = 128
    refresh_every: int = 2  # steps per freshly drawn scene (a 1024×2048 scene takes ~1.4 s)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    out: str = "runs/train"
    weights: str | None = None  # where the final .safetensors goes; default out/qgn.safetensors
    classes: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)


def draw_density(share_dense: float, generator: torch.Generator) -> float:
    """The share of the remaining sites one training step refines: 1 (every site, as under
    `all`) for a `share_dense` of the steps, else uniform in [0, 1).

    Why this mix: a dense step at 256×512 costs ~4× a sparse one here, and the density
    compounds over levels (an interior site reaches level l with probability d^l), so only
    dense steps teach the finest level the region interiors that `all` reads, while the
    uniform draws cover the thresholds and budgets in between. A fifth of dense steps spends
    about half of the compute on them.
    """
    if float(torch.rand((), generator=generator)) < share_dense:
        return 1.0
    return float(torch.rand((), generator=generator))


class TeacherForcing(Scheme):
    """Refines the ground-truth composites, the predicted ones, and a random share
    (`density`) of the rest, so every site kind the schemes can produce gets trained."""

    name = "teacher_forcing"

    def __init__(self, targets: list[Tensor], density: float, generator: torch.Generator):
        self.targets = targets
        self.density = density
        self.generator = generator

    def select(self, view: LevelView) -> Tensor:
        b, r, c = view.coords.unbind(dim=1)
        chosen = self.targets[view.level][b, r, c] == COMPOSITE
        chosen |= view.logits.argmax(dim=1) == COMPOSITE
        if self.density >= 1.0:
            return torch.ones_like(chosen)
        if self.density > 0:
            draw = torch.rand(len(chosen), generator=self.generator)
            chosen |= draw.to(chosen.device) < self.density
        return chosen


def random_scale_crop_flip(
    image: np.ndarray,
    label: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    native: bool = False,
    whole: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale (bilinear image, nearest label) unless `native`, random crop padded with
    ignore unless `whole`, and a random horizontal flip."""
    if not native:
        scale = rng.uniform(*config.scale)
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    if not whole:
        image, label = _padded_crop(image, label, config.crop, rng)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _padded_crop(
    image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random `crop`-sized window, the scene padded with ignore where it is smaller."""
    crop_h, crop_w = crop
    pad_h, pad_w = max(0, crop_h - image.shape[0]), max(0, crop_w - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
    top = int(rng.integers(0, image.shape[0] - crop_h + 1))
    left = int(rng.integers(0, image.shape[1] - crop_w + 1))
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    return image[window], label[window]


class ScenePool:
    """Training scenes held in memory and refreshed a few per step.

    Drawing a synthetic 1024×2048 scene takes ~1.4 s, so a batch of fresh scenes would cost
    more than the step itself; a pool of `cache_scenes` that replaces one scene every
    `refresh_every` steps keeps the data endless at a fixed cost. Real datasets are read on
    demand instead.
    """

    def __init__(self, config: TrainConfig, rank: int, world: int):
        height, width = config.base_size
        self.synthetic = config.dataset == "synthetic"
        self.dataset = build_dataset(
            config.dataset, "train", root=config.root, height=height, width=width
        )
        # Native crops at half the base size come from scenes drawn at that size, fresh.
        self.half_size = None
        if self.synthetic and config.native_share > 0:
            self.half_size = build_dataset(
                "synthetic", "train", height=height // 2, width=width // 2
            )
        self.config = config
        self.rng = np.random.default_rng([config.seed, rank])
        self.next_index = rank
        self.stride = world
        self.pool: list[tuple[np.ndarray, np.ndarray]] = []
        if self.synthetic:
            for i in range(config.cache_scenes):
                self.pool.append(self._fresh())
                if rank == 0 and (i + 1) % 32 == 0:
                    _log(f"drawing scenes {i + 1}/{config.cache_scenes}")

    def _fresh(self) -> tuple[np.ndarray, np.ndarray]:
        index = self.next_index % len(self.dataset)
        self.next_index += self.stride
        return self.dataset[index]

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        # Whole or cropped is decided per step alike on every process (the same seed and
        # step), so that data-parallel processes run the same kind of step.
        share = self.config.whole_share
        whole = share > 0 and np.random.default_rng([self.config.seed, step]).random() < share
        count = 1 if whole else self.config.batch_size
        if self.synthetic:
            if step % self.config.refresh_every == 0:
                self.pool[int(self.rng.integers(len(self.pool)))] = self._fresh()
            picks = [self.pool[int(self.rng.integers(len(self.pool)))] for _ in range(count)]
        else:
            picks = [self.dataset[int(self.rng.integers(len(self.dataset)))] for _ in range(count)]
        crops = []
        for image, label in picks:
            native = self.config.native_share > 0 and self.rng.random() < self.config.native_share
            if native and self.half_size is not None and self.rng.random() < 0.5:
                index = self.next_index % len(self.half_size)
                self.next_index += self.stride
                image, label = self.half_size[index]
            crops.append(random_scale_crop_flip(image, label, self.config, self.rng, native, whole))
        images = torch.cat([to_batch(image) for image, _ in crops])
        labels = torch.stack([torch.from_numpy(label.astype(np.int64)) for _, label in crops])
        return images, labels


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def pixel_accuracy(model_output, labels: Tensor) -> tuple[int, int]:
    """Correct and scored pixels of the masks the training pass composed."""
    correct = scored = 0
    height, width = labels.shape[-2:]
    for b in range(labels.shape[0]):
        mask = leaves_to_dense(model_output.leaves(b), height, width)
        valid = labels[b] != IGNORE
        correct += int((mask[valid] == labels[b][valid]).sum())
        scored += int(valid.sum())
    return correct, scored


def count_pixels(images: Tensor, world: int) -> int:
    """The pixels of one step, over every process (their whole scenes differ in size)."""
    count = torch.tensor(images.shape[0] * images.shape[2] * images.shape[3], device=images.device)
    if world > 1:
        dist.all_reduce(count)
    return int(count)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def start_from_weights(model: QGN, path: Path, device: torch.device) -> list[str]:
    """Loads `path` into `model`, which may add context blocks or pyramid pooling to the
    dense head (they start as the identity, see `DenseHead`); anything else missing or left
    over is an error. Returns the added parts' names."""
    start_from, _ = load_weights(path, device, fold_batchnorms=False)
    try:
        missing, unexpected = model.load_state_dict(start_from.state_dict(), strict=False)
    except RuntimeError as error:  # tensors of other shapes
        raise ValueError(f"--init {path} does not fit the model: {error}") from error
    added = [key for key in missing if key.startswith(("head.context.", "head.pyramid."))]
    if unexpected or len(added) != len(missing):
        raise ValueError(
            f"--init {path} does not fit the model: missing {sorted(set(missing) - set(added))}, "
            f"unexpected {unexpected}"
        )
    return sorted({".".join(key.split(".")[: 3 if ".context." in key else 2]) for key in added})


def train(config: TrainConfig, resume: bool = False, command: str = "") -> Path | None:
    """Trains, checkpoints every `checkpoint_every` steps, and writes the final weights and
    model card (rank 0). Returns the weights path on rank 0."""
    rank, world = _distributed()
    torch.manual_seed(config.seed)
    device = torch.device(
        f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    num_classes = len(config.classes)
    model: QGN = MODELS[config.model](num_classes=num_classes).to(device)
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    step, elapsed, pixels = 0, 0.0, 0
    checkpoint = out / "checkpoint.pt"
    if config.init and not resume:
        added = start_from_weights(model, Path(config.init), device)
        if rank == 0:
            _log(f"starting from the weights {config.init}")
            if added:
                _log(f"not in them, starting as the identity: {', '.join(added)}")
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        pixels = int(state.get("pixels", 0))
        if rank == 0:
            _log(f"resumed from {checkpoint} at step {step}")
    pool = ScenePool(config, rank, world)
    pool.rng = np.random.default_rng([config.seed, rank, step])
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank * 100_003 + step)
    model.train()
    running_loss, correct, scored = 0.0, 0, 0
    start = time.perf_counter() - elapsed
    while step < config.steps:
        images, labels = pool.batch(step)
        images = images.to(device)
        pixels += count_pixels(images, world)
        targets = [
            torch.stack(t).to(device)
            for t in zip(*(dense_to_levels(lbl, prune=False) for lbl in labels), strict=True)
        ]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        density = draw_density(config.dense_share, generator)
        output = wrapped(images, TeacherForcing(targets, density, generator))
        loss, _ = quadtree_loss(output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        value = loss.item()
        running_loss = 0.9 * running_loss + 0.1 * value if step > 1 else value
        ok, n = pixel_accuracy(output, labels)
        correct, scored = correct + ok, scored + n
        if rank == 0 and (step % config.log_every == 0 or step == config.steps):
            spent = time.perf_counter() - start
            eta = spent / step * (config.steps - step) if step else 0
            _log(
                f"step {step}/{config.steps}  loss {running_loss:.4f}  "
                f"pixel acc {correct / max(scored, 1):.4f}  lr {learning_rate(config, step):.2e}  "
                f"{spent / 60:.1f} min, ETA {eta / 60:.1f} min"
            )
            correct = scored = 0
        if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps):
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "elapsed_s": time.perf_counter() - start,
                "pixels": pixels,
                "config": json.dumps(asdict(config)),
            }
            torch.save(state, out / "checkpoint.tmp")
            os.replace(out / "checkpoint.tmp", checkpoint)
    if world > 1:
        for buffer in model.buffers():  # BatchNorm statistics: rank 0's are the model's
            dist.broadcast(buffer, src=0)
    model.eval()
    if os.environ.get("QGN_DUMP_RANK_WEIGHTS"):
        save_weights(model, out / f"rank{rank}.safetensors", _card(config, 0.0, command, pixels))
    weights = None
    if rank == 0:
        weights = Path(config.weights or out / "qgn.safetensors")
        save_weights(model, weights, _card(config, time.perf_counter() - start, command, pixels))
        _log(f"wrote {weights} and {weights.with_suffix('.json')}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return weights


def _card(config: TrainConfig, seconds: float, command: str, pixels: int) -> dict:
    return {
        "name": "qgn-serve",
        "version": "0.1.0",
        "model": config.model,
        "classes": list(config.classes),
        "palette": [list(c) for c in config.palette],
        "dataset": config.dataset,
        "training": {
            **asdict(config),
            "command": command,
            "wall_time_s": round(seconds, 1),
            "pixels": pixels,  # trained on, all processes together (crops or whole scenes)
            "machine": f"{os.cpu_count()} CPU cores"
            + (", CUDA" if torch.cuda.is_available() else ""),
            "torch": torch.__version__,
        },
    }
