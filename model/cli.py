"""The model's part of the `qgn` command: train, eval and demo (`server.cli` is the entry
point and adds serve and segment)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from model.weights import DEFAULT_WEIGHTS


def _classes(dataset: str) -> tuple[list[str], list[list[int]]]:
    """Class names and display colours of a dataset, for the model card."""
    if dataset == "synthetic":
        from model.data import CLASSES, PALETTE

        return list(CLASSES), [list(c) for c in PALETTE]
    if dataset == "cityscapes":
        from model.data.cityscapes import CITYSCAPES_CLASSES

        colours = {label.name: list(label.color) for label in _cityscapes_labels()}
        return list(CITYSCAPES_CLASSES), [colours[name] for name in CITYSCAPES_CLASSES]
    from model.data.ade20k import ADE20K_CLASSES

    rng = __import__("numpy").random.default_rng(150)
    palette = rng.integers(0, 256, (len(ADE20K_CLASSES), 3)).tolist()
    return list(ADE20K_CLASSES), palette


def _cityscapes_labels():
    from cityscapesscripts.helpers.labels import labels

    return labels


def _train(args: argparse.Namespace) -> int:
    from model.train import TrainConfig, train

    classes, palette = _classes(args.dataset)
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(TrainConfig)}}
    config = TrainConfig(
        **{
            **given,
            "crop": tuple(args.crop),
            "base_size": tuple(args.base_size),
            "scale": tuple(args.scale),
            "classes": classes,
            "palette": palette,
        }
    )
    command = "qgn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    train(config, resume=args.resume, command=command)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Segments a generated street scene with each scheme and writes a side-by-side PNG."""
    import numpy as np
    import torch
    from PIL import Image

    from model.data import CLASSES, PALETTE, VAL_SEEDS, make_scene
    from model.qgn import qgn_small
    from model.schemes import make_scheme

    weights = Path(args.weights)
    if weights.is_file():
        from model.weights import load_weights

        model, card = load_weights(weights)
        palette = card["palette"]
        print(f"weights: {weights}")
    else:
        torch.manual_seed(0)
        model, palette = qgn_small(len(CLASSES)).eval(), PALETTE
        print(f"no weights at {weights}: random weights (masks will be noise)")
    image, _ = make_scene(VAL_SEEDS[0], args.height, args.width)
    colours = np.asarray(palette, dtype=np.uint8)
    panels = [image]
    for name in ("all", "pc"):
        pred = model.predict(image, make_scheme(name))
        panels.append(colours[pred.mask.numpy()])
        print(
            f"{name:>4}: peak {pred.peak_bytes / 2**20:7.1f} MiB"
            f"  latency {pred.latency_s * 1e3:7.1f} ms"
            f"  active sites per level {pred.active_sites}  leaves {len(pred.leaves)}"
        )
    Image.fromarray(np.concatenate(panels, axis=0)).save(args.out)
    print(f"wrote {args.out} (image, then the `all` and `pc` masks)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Evaluates every scheme setting; writes eval.json, tradeoff.png, optionally the card."""
    import json

    from model.cost import calibrate
    from model.evaluate import evaluate_sizes, format_tables, write_report
    from model.weights import card_path, load_weights

    model, card = load_weights(args.weights)
    model.cost = calibrate(model, "cpu")
    sizes = [(args.height, args.width, args.num_images)]
    if args.big_images > 0:
        sizes.append((2 * args.height, 2 * args.width, args.big_images))
    result = evaluate_sizes(model, card, args.dataset, args.split, sizes, root=args.root)
    result["command"] = "qgn " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_report(result, Path(args.out))
    print(format_tables(result))
    print(f"wrote {args.out}/eval.json and {args.out}/tradeoff.png")
    if args.update_card:
        card["evaluation"] = result
        card_path(Path(args.weights)).write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote the evaluation into {card_path(Path(args.weights))}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The model's commands: train, eval, demo (the server adds serve and segment)."""
    train = commands.add_parser("train", help="train a QGN (torchrun for several processes)")
    train.add_argument(
        "--dataset", default="synthetic", choices=["synthetic", "cityscapes", "ade20k"]
    )
    train.add_argument("--root", default=None, help="dataset folder (real datasets)")
    train.add_argument("--model", default="qgn_small")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--crop", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    sizes = "scenes are drawn (or resized) to H W, then scaled by MIN..MAX, cropped and flipped"
    train.add_argument(
        "--base-size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"), help=sizes
    )
    train.add_argument(
        "--scale", type=float, nargs=2, default=[0.4, 1.2], metavar=("MIN", "MAX"), help=sizes
    )
    train.add_argument(
        "--dense-share", type=float, default=0.2, help="share of steps that refine every site"
    )
    train.add_argument(
        "--native-share",
        type=float,
        default=0.0,
        help="share of crops cut from scenes as drawn (not resampled), at the base size or half",
    )
    train.add_argument(
        "--whole-share",
        type=float,
        default=0.0,
        help="share of steps that take one whole scene (scaled or as drawn) instead of crops",
    )
    train.add_argument("--init", default=None, help="start from these weights (fine-tuning)")
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=100)
    train.add_argument("--cache-scenes", type=int, default=128)
    train.add_argument("--out", default="runs/train")
    train.add_argument("--weights", default=None, help="final .safetensors path")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.set_defaults(run=_train)

    evaluation = commands.add_parser("eval", help="mIoU, memory and latency per scheme")
    evaluation.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    evaluation.add_argument(
        "--dataset", default="synthetic", choices=["synthetic", "cityscapes", "ade20k"]
    )
    evaluation.add_argument("--root", default=None)
    evaluation.add_argument("--split", default="val")
    evaluation.add_argument("--num-images", type=int, default=200)
    evaluation.add_argument("--height", type=int, default=512)
    evaluation.add_argument("--width", type=int, default=1024)
    evaluation.add_argument(
        "--big-images", type=int, default=20, help="images at twice the size, every setting"
    )
    evaluation.add_argument("--out", default="runs/eval")
    evaluation.add_argument(
        "--update-card", action="store_true", help="store the table in the model card"
    )
    evaluation.set_defaults(run=_eval)

    demo = commands.add_parser("demo", help="segment a generated scene, write demo.png")
    demo.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    demo.add_argument("--height", type=int, default=512)
    demo.add_argument("--width", type=int, default=1024)
    demo.add_argument("--out", default="demo.png")
    demo.set_defaults(run=_demo)
