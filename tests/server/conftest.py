"""Server fixtures: tiny random weights written as a real model card, and a started app."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from model.qgn import qgn_tiny
from model.weights import save_weights
from server.app import create_app
from server.settings import Settings

CLASSES = [f"class{i}" for i in range(12)]
PALETTE = [[(37 * i) % 256, (91 * i) % 256, (173 * i) % 256] for i in range(12)]


def tiny_row(setting: str, miou: float, latency_ms: float) -> dict:
    scheme = setting.split(" ")[0]
    return {"setting": setting, "scheme": scheme, "miou": miou, "latency_ms_median": latency_ms}


# What a card's evaluation holds, for scheme=auto to rank: `all` best, then τ 0.1, pc, τ 0.9.
TINY_TABLES = {
    "96x160": {
        "images": 1,
        "rows": [
            tiny_row("none", 0.40, 5.0),
            tiny_row("all", 0.80, 40.0),
            tiny_row("pc", 0.70, 10.0),
            tiny_row("threshold 0.1", 0.75, 20.0),
            tiny_row("threshold 0.9", 0.60, 8.0),
            tiny_row("oracle", 0.90, 10.0),
        ],
    }
}


def write_tiny_weights(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = qgn_tiny(len(CLASSES)).eval()
    # Lean the composite logit so that `pc` refines some sites, like a trained model does.
    for stage in model.stages[:-1]:
        stage.classifier.bias.data[0] += 0.2
    model.head.classifier.bias.data[0] += 0.2
    path = folder / "tiny.safetensors"
    card = {
        "name": "qgn-test",
        "version": "0.0.1",
        "classes": CLASSES,
        "palette": PALETTE,
        "evaluation": {
            "note": "random weights; made-up figures that rank the settings",
            "tables": TINY_TABLES,
        },
    }
    save_weights(model, path, card)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def wait_ready(client: TestClient, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the app did not become ready")


@contextmanager
def started(settings: Settings) -> Iterator[TestClient]:
    """A TestClient with its lifespan running and the model warm."""
    app = create_app(settings, CollectorRegistry())
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(tiny_weights):
    settings = Settings(weights=tiny_weights, device="cpu", max_upload_mb=2, max_pixels=5_000_000)
    with started(settings) as c:
        yield c


def scene_image(height: int = 96, width: int = 160, seed: int = 0) -> np.ndarray:
    """Large uniform regions: a few flat rectangles."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = (60, 120, 200)
    for _ in range(4):
        r0, c0 = rng.integers(0, height), rng.integers(0, width)
        image[r0 : r0 + height // 3, c0 : c0 + width // 3] = rng.integers(0, 256, 3)
    return image


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk; `crc` overrides the checksum (to write a broken one)."""
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` RGB pixels but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )
