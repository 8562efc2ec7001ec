"""`qgn eval` on tiny weights: every scheme setting scored, the table and the plot written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from model.evaluate import THRESHOLDS, Tally, check_targets, knob_violations
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


def _row(setting: str, peak_mib: float, miou: float) -> dict:
    return {"setting": setting, "scheme": setting.split()[0], "peak_mib": peak_mib, "miou": miou}


def test_knob_violations_find_memory_that_buys_nothing():
    table = {"rows": [_row("pc", 18.0, 0.75), _row("all", 240.0, 0.76), _row("oracle", 18, 0.9)]}
    assert knob_violations(table) == []
    table["rows"].append(_row("budget 40", 30.0, 0.744))  # 1.67× pc's memory, 0.6 points less
    found = knob_violations(table)
    assert len(found) == 1 and found[0].startswith("budget 40") and "below pc" in found[0]
    table["rows"][-1] = _row("budget 40", 19.0, 0.70)  # under 1.1× pc's memory: no verdict
    assert knob_violations(table) == []


def _table(miou: dict[str, float], peak: dict[str, float]) -> dict:
    settings = ["none", "all", "pc", "oracle", *(f"threshold {t}" for t in THRESHOLDS)]
    return {
        "rows": [
            {
                "setting": name,
                "scheme": name.split()[0],
                "miou": miou.get(name, 0.70),
                "peak_mib": peak.get(name, 5.0),
                "decoder_mib": 1.0,
                "active_sites": [1] * 6,
            }
            for name in settings
        ]
    }


def test_targets_hold_the_fine_threshold_to_all_and_full_resolution_to_half():
    fine = {"all": 0.76, "threshold 0.1": 0.755, "pc": 0.74, "oracle": 0.75}
    small = _table(fine, {"all": 240.0, "threshold 0.1": 11.0})
    near = check_targets(
        {"512x1024": small, "1024x2048": _table({**fine, "pc": 0.731}, {"all": 960.0})}
    )
    assert near["threshold_0.1_within_1_point_of_all_at_0.05_its_peak_at_512x1024"]
    assert near["pc_at_1024x2048_within_1_point_of_512x1024"]
    far = check_targets(
        {
            "512x1024": _table({**fine, "threshold 0.1": 0.745}, {"all": 240.0}),
            "1024x2048": _table({**fine, "pc": 0.729}, {"all": 960.0, "threshold 0.1": 49.0}),
        }
    )
    assert not far["threshold_0.1_within_1_point_of_all_at_0.05_its_peak_at_512x1024"]
    assert not far["threshold_0.1_within_1_point_of_all_at_0.05_its_peak_at_1024x2048"]
    assert not far["pc_at_1024x2048_within_1_point_of_512x1024"]


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
    assert set(result["tables"]) == {"64x128", "128x256"}
    for size, table in result["tables"].items():
        settings = [row["setting"] for row in table["rows"]]
        assert settings[:3] == ["none", "all", "pc"] and settings[-1] == "oracle"
        assert sum(s.startswith("threshold") for s in settings) == 5
        assert sum(s.startswith("budget") for s in settings) == 3
        for row in table["rows"]:
            assert 0.0 <= row["miou"] <= 1.0 and row["peak_mib"] > 0
            assert len(row["active_sites"]) == 6
        assert f"all_at_least_pc_plus_1.5_at_{size}" in result["targets"]
    assert "pc_at_128x256_within_1_point_of_64x128" in result["targets"]
    assert (out / "tradeoff.png").stat().st_size > 1000
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["evaluation"]["tables"] == result["tables"]
    assert "target " in done.stdout and "oracle" in done.stdout
