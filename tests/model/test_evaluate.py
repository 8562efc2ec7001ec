"""`qgn eval` on tiny weights: every scheme setting scored, the table and the plot written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from model.evaluate import Tally
from tests.server.conftest import write_tiny_weights

QGN = str(Path(sys.executable).with_name("qgn"))


def test_tally_scores_a_known_confusion():
    pred = SimpleNamespace(
        mask=torch.tensor([[0, 0, 1, 1]], dtype=torch.uint8),
        active_sites=[1, 0, 0, 0, 0, 0],
        decoder_bytes=[0] * 6,
        peak_bytes=10,
        latency_s=0.5,
    )
    tally = Tally(num_classes=3)
    tally.add(pred, np.array([[0, 1, 1, 255]], dtype=np.uint8))
    summary = tally.summary()
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 1, union 2 -> 0.5; class 2 absent
    assert summary["miou"] == 0.5 and summary["per_class_iou"] == [0.5, 0.5, None]
    assert summary["pixel_acc"] == 2 / 3


def test_eval_writes_every_setting_and_updates_the_card(tmp_path):
    weights = write_tiny_weights(tmp_path)
    out = tmp_path / "eval"
    done = subprocess.run(
        [
            QGN,
            "eval",
            "--weights",
            str(weights),
            "--num-images",
            "2",
            "--height",
            "64",
            "--width",
            "128",
            "--big-images",
            "1",
            "--out",
            str(out),
            "--update-card",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "eval.json").read_text())
    settings = [row["setting"] for row in result["table"]["rows"]]
    assert settings[:2] == ["all", "pc"] and settings[-1] == "oracle"
    assert sum(s.startswith("threshold") for s in settings) == 5
    assert sum(s.startswith("budget") for s in settings) == 3
    for row in result["table"]["rows"]:
        assert 0.0 <= row["miou"] <= 1.0 and row["peak_mib"] > 0 and len(row["active_sites"]) == 6
    assert set(result["memory_128x256"]) == {"all", "pc", "oracle"}
    assert "pc_peak_at_most_0.5_of_all_at_128x256" in result["targets"]
    assert (out / "tradeoff.png").stat().st_size > 1000
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["evaluation"]["table"] == result["table"]
    assert "target " in done.stdout and "oracle" in done.stdout
