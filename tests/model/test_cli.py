"""The `qgn` command on local files: segment, demo, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.server.conftest import PALETTE, encode, scene_image, write_tiny_weights

QGN = str(Path(sys.executable).with_name("qgn"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QGN, *args], capture_output=True, text=True, timeout=300)


def test_segment_writes_the_palette_mask_and_prints_its_cost(tmp_path):
    weights = write_tiny_weights(tmp_path)
    image = tmp_path / "street.jpg"
    image.write_bytes(encode(scene_image(70, 90), "JPEG"))
    out = tmp_path / "mask.png"
    done = run(
        "segment",
        str(image),
        "--weights",
        str(weights),
        "--scheme",
        "budget",
        "--budget-mb",
        "8",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert (stats["width"], stats["height"]) == (90, 70)
    assert 0 < stats["peak_memory_bytes"] <= 8 * 2**20
    mask = Image.open(out)
    assert mask.mode == "P" and mask.size == (90, 70)
    assert mask.getpalette()[:6] == [*PALETTE[0], *PALETTE[1]]
    assert int(np.asarray(mask).max()) < 12


def test_demo_and_errors(tmp_path):
    weights = write_tiny_weights(tmp_path)
    demo = run(
        "demo",
        "--weights",
        str(weights),
        "--height",
        "64",
        "--width",
        "128",
        "--out",
        str(tmp_path / "demo.png"),
    )
    assert demo.returncode == 0, demo.stderr
    assert Image.open(tmp_path / "demo.png").size == (128, 3 * 64)
    assert "pc: peak" in demo.stdout
    (tmp_path / "text.png").write_text("not an image")
    bad = run("segment", str(tmp_path / "text.png"), "--weights", str(weights))
    assert bad.returncode == 2 and "not an image" in bad.stderr
    missing = run(
        "segment", str(tmp_path / "text.png"), "--weights", str(tmp_path / "no.safetensors")
    )
    assert missing.returncode == 2 and "not found" in missing.stderr
