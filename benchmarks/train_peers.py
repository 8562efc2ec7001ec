"""Trains the dense peers of issue 26 on exactly QGN's training data, from random init.

Why: untrained peers only tell what a dense model costs; to say what the quadtree buys in
accuracy the peers must see the same data (the synthetic street generator through
`model.train.ScenePool`: same classes, scene sizes, scale / crop / flip), the same ignore
label (255, as `quadtree_loss`) and at least the training pixels of the shipped QGN weights
over their whole chain (`qgn_training_pixels`; the cosine schedule spans `--steps`, and past it
the peer trains on at the schedule's last rate until it has seen as many), then train on while
validation mIoU still rises. Nothing pretrained can be downloaded, so every model starts from
random init.

Peers (torchvision, so this runs in the peers venv, not beside the project's torch):
- `dense-twin`: QGN's own encoder (qgn_small's ResNetEncoder) with its last two stages
  dilated to output stride 8 as torchvision's `replace_stride_with_dilation` does, and
  DeepLabv3's head (`DeepLabHead`: ASPP 12/24/36); the same backbone without the quadtree;
- `lraspp`: `lraspp_mobilenet_v3_large`, the small dense model a low-memory user would pick.

    sh benchmarks/peers_venv.sh
    .venv-peers/bin/python -m benchmarks.train_peers --peer lraspp [--resume]

(spconv only because `model.train`, which holds the data pipeline, imports the QGN model.)
Checkpoints (every `--checkpoint-minutes` of wall time), the curve and the final state dict
go to runs/peers/<peer>/; `--resume` continues the same schedule from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.data import CLASSES, build_dataset
from model.encoder import ResNetEncoder
from model.evaluate import class_iou, confusion, mean_iou
from model.qgn import MODELS, to_batch
from model.quadtree import IGNORE
from model.train import ScenePool, TrainConfig, learning_rate
from model.weights import DEFAULT_WEIGHTS, load_card

NUM_CLASSES = len(CLASSES)


def qgn_training_pixels(card: dict) -> int:
    """Pixels a QGN's weights trained on over their whole chain of runs, following
    `training.initialised_from` back to the first run: each run's counted `pixels`, or for
    runs before the count, steps × batch × crop."""
    total, run = 0, card["training"]
    while run:
        if "pixels" in run:
            total += run["pixels"]
        else:
            total += run["steps"] * run["batch_size"] * run["crop"][0] * run["crop"][1]
        run = run.get("initialised_from")
    return total


QGN_TRAINING_PIXELS = qgn_training_pixels(load_card(DEFAULT_WEIGHTS))


class DenseTwin(nn.Module):
    """qgn_small's encoder at output stride 8 with DeepLabv3's ASPP head, logits upsampled.

    Dilation follows torchvision's ResNet: in each of the last two stages the stride-2
    convolution (and its shortcut) runs at stride 1 with the stage's previous dilation, and
    every later 3×3 convolution at the new one (2 at stride 16, 4 at stride 32).
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        config = MODELS["qgn_small"](num_classes=num_classes).config
        self.encoder = ResNetEncoder(config.encoder_widths, config.encoder_depths)
        dilation = 1
        for stage in self.encoder.stages[2:]:
            previous, dilation = dilation, dilation * 2
            for index, block in enumerate(stage):
                _dilate(block.conv1, previous if index == 0 else dilation)
                _dilate(block.conv2, dilation)
                if isinstance(block.shortcut, nn.Sequential):
                    block.shortcut[0].stride = (1, 1)
        self.head = DeepLabHead(config.encoder_widths[-1], num_classes)

    def forward(self, images: Tensor) -> Tensor:
        features = self.encoder(images)[-1]
        logits = self.head(features)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _dilate(conv: nn.Conv2d, dilation: int) -> None:
    conv.stride, conv.dilation, conv.padding = (1, 1), (dilation, dilation), (dilation, dilation)


class LRASPP(nn.Module):
    """torchvision's `lraspp_mobilenet_v3_large`, untrained, returning the logits tensor."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.net = lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)["out"]


PEERS: dict[str, type[nn.Module]] = {"dense-twin": DenseTwin, "lraspp": LRASPP}


def build_peer(name: str) -> nn.Module:
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; valid: {sorted(PEERS)}")
    torch.manual_seed(0)
    return PEERS[name]()


def validation_scenes(count: int, height: int, width: int) -> list[tuple[Tensor, np.ndarray]]:
    """The first `count` scenes of the validation split, drawn once (as `qgn eval` draws)."""
    data = build_dataset("synthetic", "val", height=height, width=width)
    return [(to_batch(image), label) for image, label in (data[i] for i in range(count))]


@torch.inference_mode()
def validate(model: nn.Module, scenes: list[tuple[Tensor, np.ndarray]]) -> dict:
    """mIoU over one confusion matrix of all scenes, as `model.evaluate` scores QGN."""
    was_training = model.training
    model.eval()
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for image, label in scenes:
        mask = model(image)[0].argmax(dim=0).numpy()
        matrix += confusion(mask, label, NUM_CLASSES)
    model.train(was_training)
    iou = class_iou(matrix)
    return {
        "val_miou": mean_iou(matrix),
        "val_pixel_acc": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "val_per_class_iou": [None if np.isnan(v) else round(float(v), 4) for v in iou],
    }


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, file=sys.stderr, flush=True)


def _save_atomic(state: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _write_curve(path: Path, peer: str, args: argparse.Namespace, points: list[dict]) -> None:
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "out")}
    curve = {
        "peer": peer,
        "settings": settings,
        "qgn_training_pixels": QGN_TRAINING_PIXELS,
        "torch": torch.__version__,
        "points": points,
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(curve, indent=1) + "\n")
    os.replace(temporary, path)


def train(args: argparse.Namespace) -> Path:
    """Trains one peer; returns the path of its final state dict."""
    torch.set_num_threads(args.threads)
    out = args.out / args.peer
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path, curve_path = out / "checkpoint.pt", out / "curve.json"
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        crop=tuple(args.crop),
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        cache_scenes=args.cache_scenes,
        seed=args.seed,
        classes=list(CLASSES),
    )
    pixels_per_step = config.batch_size * config.crop[0] * config.crop[1]
    model = build_peer(args.peer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    step, elapsed, next_scene, points = 0, 0.0, 0, []
    pool_rng_state = None
    if args.resume:
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
        state = torch.load(checkpoint_path, weights_only=False)
        if state["config"] != asdict(config):
            _log(f"note: the checkpoint was made with {state['config']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, points = state["step"], state["elapsed_s"], state["curve"]
        next_scene, pool_rng_state = state["next_scene"], state["pool_rng"]
        torch.set_rng_state(state["torch_rng"])
        _log(f"resumed from {checkpoint_path} at step {step}")
    # The pool holds the `cache_scenes` scenes drawn last (at a fresh start: the first ones).
    pool = ScenePool(replace(config, cache_scenes=0), rank=0, world=1)
    pool.next_index = max(0, next_scene - config.cache_scenes)
    for _ in range(config.cache_scenes):
        pool.pool.append(pool._fresh())
    if pool_rng_state is not None:
        pool.rng.bit_generator.state = pool_rng_state
    val = validation_scenes(args.val_scenes, *args.val_size)
    _log(
        f"{args.peer}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{config.steps} steps × {pixels_per_step} px = {config.steps * pixels_per_step / 1e9:.2f}"
        f" Gpx (QGN: {QGN_TRAINING_PIXELS / 1e9:.2f}), {len(pool.pool)} scenes in the pool"
    )

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed_s": time.perf_counter() - start,
            "next_scene": pool.next_index,
            "pool_rng": pool.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "curve": points,
            "config": asdict(config),
        }
        _save_atomic(state, checkpoint_path)

    def plateaued() -> bool:
        """Past the schedule: stop once the last `--patience` validations beat no earlier one."""
        if sum(p["step"] > config.steps for p in points) < args.patience:
            return False
        recent, earlier = points[-args.patience :], points[: -args.patience]
        best_earlier = max((p["val_miou"] or 0.0 for p in earlier), default=0.0)
        return max(p["val_miou"] or 0.0 for p in recent) <= best_earlier

    model.train()
    start = time.perf_counter() - elapsed
    last_checkpoint = time.perf_counter()
    losses: list[float] = []
    running_loss, window_start, window_steps = None, time.perf_counter(), 0

    def trained_enough() -> bool:
        return step >= config.steps and step * pixels_per_step >= QGN_TRAINING_PIXELS

    while not trained_enough() or (args.until_plateau and not plateaued()):
        images, labels = pool.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, min(step, config.steps))
        logits = model(images)
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        window_steps += 1
        losses.append(loss.item())
        running_loss = losses[-1] if running_loss is None else 0.9 * running_loss + 0.1 * losses[-1]
        if step % args.log_every == 0:
            seconds_per_step = (time.perf_counter() - window_start) / window_steps
            _log(
                f"step {step}/{config.steps}  loss {running_loss:.4f}  "
                f"px {step * pixels_per_step / 1e9:.3f} Gpx  {seconds_per_step:.2f} s/step  "
                f"lr {learning_rate(config, min(step, config.steps)):.2e}  "
                f"ETA {max(0, config.steps - step) * seconds_per_step / 3600:.2f} h"
            )
            window_start, window_steps = time.perf_counter(), 0
        if step % args.val_every == 0 or step == config.steps:
            began = time.perf_counter()
            scores = validate(model, val)
            points.append(
                {
                    "step": step,
                    "pixels_seen": step * pixels_per_step,
                    "train_loss": float(np.mean(losses)) if losses else None,
                    **scores,
                    "wall_s": round(time.perf_counter() - start, 1),
                }
            )
            losses = []
            _write_curve(curve_path, args.peer, args, points)
            _log(
                f"validation at step {step}: mIoU {scores['val_miou']:.4f}  "
                f"pixel acc {scores['val_pixel_acc']:.4f}  ({time.perf_counter() - began:.0f} s)"
            )
            window_start, window_steps = time.perf_counter(), 0
        if time.perf_counter() - last_checkpoint > args.checkpoint_minutes * 60:
            save_checkpoint()
            last_checkpoint = time.perf_counter()
            _log(f"checkpoint at step {step}")
    save_checkpoint()
    weights = out / f"{args.peer}.pt"
    torch.save(model.state_dict(), weights)
    _log(f"wrote {weights} after {step} steps, {(time.perf_counter() - start) / 3600:.2f} h")
    return weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--steps", type=int, default=3968, help="cosine length (4.16 Gpx)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--cache-scenes", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-scenes", type=int, default=32)
    parser.add_argument("--val-size", type=int, nargs=2, default=[512, 1024])
    parser.add_argument(
        "--until-plateau",
        action="store_true",
        help="after --steps, go on at the final lr until --patience validations bring no new best",
    )
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint-minutes", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/peers"))
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
