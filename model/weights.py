"""Shipped weights: a safetensors file (no pickle) plus a JSON model card beside it.

The card holds the architecture config, class names and palette, how the weights were made,
their evaluation, and the file's sha256; loading refuses a file whose hash does not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.qgn import QGN, QGNConfig

# The weights this repository ships.
DEFAULT_WEIGHTS = (
    Path(__file__).resolve().parent.parent / "weights" / "qgn_small_synthetic.safetensors"
)


class WeightsError(RuntimeError):
    """The weights or their model card cannot be used; the message says why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: QGN, path: Path, card: dict) -> dict:
    """Writes `path` (.safetensors) and its card (.json); returns the card as written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))
    card = {**card, "config": model.config.to_dict(), "weights_file": path.name}
    card["weights_sha256"] = sha256_of(path)
    card_path(path).write_text(json.dumps(card, indent=2) + "\n")
    return card


def load_card(path: Path) -> dict:
    card_file = card_path(Path(path))
    if not card_file.is_file():
        raise WeightsError(f"model card {card_file} not found beside the weights {path}")
    try:
        card = json.loads(card_file.read_text())
    except json.JSONDecodeError as error:
        raise WeightsError(f"model card {card_file} is not valid JSON: {error}") from error
    for key in ("config", "weights_sha256", "classes", "palette"):
        if key not in card:
            raise WeightsError(f"model card {card_file} lacks the field {key!r}")
    return card


def load_weights(
    path: Path, device: torch.device | str = "cpu", fold_batchnorms: bool = True
) -> tuple[QGN, dict]:
    """Builds the model its card describes and loads the weights, in eval mode (with the
    dense BatchNorms folded into their convolutions unless `fold_batchnorms` is False).

    Raises WeightsError for a missing file, a hash mismatch, or tensors that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    card = load_card(path)
    actual = sha256_of(path)
    if actual != card["weights_sha256"]:
        raise WeightsError(
            f"weights file {path} has sha256 {actual}, but its card says "
            f"{card['weights_sha256']}: the file is corrupt or belongs to another card"
        )
    try:
        config = QGNConfig.from_dict(card["config"])
        model = QGN(config)
        tensors = load_file(str(path))
        model.load_state_dict(tensors, strict=True)
    except SafetensorError as error:
        raise WeightsError(f"weights file {path} is not a safetensors file: {error}") from error
    except (TypeError, ValueError, RuntimeError) as error:
        raise WeightsError(f"weights file {path} does not fit its card: {error}") from error
    if len(card["classes"]) != config.num_classes:
        raise WeightsError(
            f"card lists {len(card['classes'])} classes, the model has {config.num_classes}"
        )
    model = model.to(device).eval()
    return (model.fold_batchnorms() if fold_batchnorms else model), card
