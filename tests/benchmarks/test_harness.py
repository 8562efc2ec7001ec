"""The benchmark harness end to end on tiny images, so that it cannot rot between runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import run
from benchmarks.analysis import growth_exponent
from benchmarks.measure import schedule
from model.cost import COST_TERMS
from model.data import CLASSES, PALETTE
from model.evaluate import confusion, mean_iou
from model.qgn import qgn_tiny
from model.weights import save_weights


def tiny_weights(folder):
    """qgn_tiny with its composite logits leaned up, so `pc` refines some sites as a trained
    model does, written with a real model card (the harness loads it like shipped weights)."""
    torch.manual_seed(0)
    model = qgn_tiny(len(CLASSES)).eval()
    for stage in model.stages[:-1]:
        stage.classifier.bias.data[0] += 0.2
    model.head.classifier.bias.data[0] += 0.2
    path = folder / "tiny.safetensors"
    card = {"name": "qgn-test", "classes": list(CLASSES), "palette": [list(c) for c in PALETTE]}
    save_weights(model, path, card)
    return path


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    weights = tiny_weights(folder)
    out = folder / "results"
    assert run.main(["--quick", "--weights", str(weights), "--out", str(out)]) == 0
    (report_file,) = out.glob("*.json")
    return json.loads(report_file.read_text()), out


def test_every_scheme_and_baseline_is_measured_with_positive_peaks(quick_run):
    report, _ = quick_run
    assert report["calibration"]["status"] == "ok"
    results = {(r["name"], f"{r['height']}x{r['width']}"): r for r in report["results"]}
    size = report["settings"]["sizes"][0]
    schemes = ["all", "pc", "threshold-0.5", "budget-50", "oracle"]
    for name in [*schemes, "dense", "dilated"]:
        result = results[(name, size)]
        assert result["status"] == "ok", result.get("reason")
        assert result["peak_bytes"] > 0
        assert result["max_rss_bytes"] > 0
        assert len(result["latency_s"]["runs"]) >= report["settings"]["runs"]
        assert result["latency_s"]["p90"] >= result["latency_s"]["median"] > 0
    for name in schemes:
        result = results[(name, size)]
        assert len(result["active_sites"]) == 6
        assert 0.0 <= result["miou"] <= 1.0
    assert 0.0 <= results[("dense", size)]["miou"] <= 1.0  # QGN's own weights, made dense
    assert results[("dilated", size)]["miou"] is None  # untrained
    for name in ("tv_deeplabv3_resnet50", "tv_lraspp_mobilenet_v3"):
        assert results[(name, size)]["status"] in {"ok", "skipped"}
    # pc also ran at the pc-only size.
    assert results[("pc", report["settings"]["pc_only_sizes"][0])]["status"] == "ok"


def test_the_schemes_order_memory_as_designed(quick_run):
    report, _ = quick_run
    size = report["settings"]["sizes"][0]
    at_size = {
        r["name"]: r
        for r in report["results"]
        if f"{r['height']}x{r['width']}" == size and r.get("status") == "ok"
    }
    assert at_size["pc"]["peak_bytes"] < at_size["all"]["peak_bytes"]
    assert at_size["oracle"]["peak_bytes"] < at_size["all"]["peak_bytes"]
    pc_sites = at_size["pc"]["active_sites"]
    assert sum(pc_sites) > pc_sites[0]  # the leaned weights make pc refine something
    assert at_size["all"]["active_sites"] == at_size["all"]["in_image_sites"]
    budget = next(r for r in report["results"] if r["name"] == "budget-50")
    assert budget["config"]["min_budget_bytes"] < budget["config"]["budget_bytes"]
    assert budget["config"]["budget_bytes"] < budget["config"]["all_peak_bytes"]
    assert size in report["calibration"]["min_budget_bytes"]


def test_fits_targets_markdown_and_plots_are_written(quick_run):
    report, out = quick_run
    assert report["fits"]["pc"]["sizes"] == ["64x128", "128x256"]
    assert report["fits"]["pc"]["peak"] > 0
    assert report["fits"]["pc"]["decoder"] is not None
    assert {t["met"] for t in report["targets"]} <= {True, False, None}
    assert len(report["targets"]) == 5
    markdown = next(out.glob("*.md")).read_text()
    assert "## Targets" in markdown and "| all |" in markdown and "| dilated |" in markdown
    assert "met" in markdown or "MISSED" in markdown
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TERMS = COST_TERMS


def test_the_profile_splits_the_cost_each_level_ran_with(quick_run):
    """The report's cost terms are the cost model's own: per sparse level they add up to the
    decoder bytes the run predicted, with the calibrated cost the child ran with."""
    report, _ = quick_run
    size = report["profile"]["size"]
    (all_,) = (
        r for r in report["results"] if r["name"] == "all" and f"{r['height']}x{r['width']}" == size
    )
    assert all_["cost"] == report["calibration"]["cost"]
    worst = max(all_["per_scene"], key=lambda scene: scene["peak_bytes"])
    rows = report["profile"]["cost_terms"]["all"]
    assert [row["sites"] for row in rows] == worst["active_sites"]
    for row, predicted in zip(rows[1:], all_["decoder_bytes_per_level"][1:], strict=True):
        assert sum(row[f"{term}_bytes"] for term in TERMS) == predicted


def test_cost_terms_are_the_analytic_terms_plus_what_calibration_added():
    from dataclasses import replace

    from model.cost import MemoryCost

    cost = MemoryCost.analytic((32, 32, 24, 16, 16, 8), (8, 16, 24, 32, 48))
    sites = [10, 40, 0, 300, 1000, 4000]
    rows = cost.terms(sites)
    assert rows[0] == {"level": 0, "sites": 10} and rows[2] == {"level": 2, "sites": 0}
    for row, predicted in zip(rows, cost.decoder_bytes(sites), strict=True):
        if "activations_bytes" in row:
            assert row["calibration_extra_bytes"] == 0
            assert sum(row[f"{term}_bytes"] for term in TERMS) == predicted
    measured = replace(cost, site_bytes=[b + 100 for b in cost.site_bytes])
    extra = [row.get("calibration_extra_bytes") for row in measured.terms(sites)]
    assert extra == [None, 100 * 40, None, 100 * 300, 100 * 1000, 100 * 4000]
    with pytest.raises(ValueError, match="decoder widths"):
        MemoryCost(cost.site_bytes, cost.stage_bytes, 1.0, 0).terms(sites)


def test_growth_exponent_recovers_known_powers():
    pixels = [1e5, 4e5, 1.6e6]
    assert growth_exponent(pixels, [3 * p for p in pixels]) == pytest.approx(1.0)
    assert growth_exponent(pixels, [7 * p**0.5 for p in pixels]) == pytest.approx(0.5)
    assert growth_exponent(pixels[:1], [1.0]) is None  # one size: nothing to fit
    assert growth_exponent(pixels, [1.0, 0.0, 2.0]) is None  # log of zero


def test_miou_and_schedule():
    import numpy as np

    label = np.array([[0, 0, 1, 255]], dtype=np.uint8)
    assert mean_iou(confusion(label.clip(0, 1), label, 2)) == 1.0
    wrong = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    assert mean_iou(confusion(wrong, label, 2)) == 0.0
    half = np.array([[0, 1, 1, 0]], dtype=np.uint8)
    assert math.isclose(mean_iou(confusion(half, label, 2)), (1 / 2 + 1 / 2) / 2)
    assert schedule(3, 5) == [0, 1, 2, 0, 1]
    assert schedule(4, 2) == [0, 1, 2, 3]  # every scene at least once


@pytest.mark.parametrize("folded", [False, True])
def test_dense_twin_computes_what_qgn_all_computes(folded):
    from benchmarks.baselines import DenseQGN, predict_dense
    from model.schemes import All

    torch.manual_seed(1)
    model = qgn_tiny(len(CLASSES)).eval()
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():  # no normalisation may be an identity
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
    if folded:
        if not hasattr(model, "fold_batchnorms"):
            pytest.skip("this QGN cannot fold its BatchNorms")
        model.fold_batchnorms()
    image = torch.randint(0, 256, (64, 128, 3), dtype=torch.uint8, generator=generator)
    sparse = model.predict(image, All()).mask
    dense = predict_dense(DenseQGN.from_qgn(model), image.numpy())
    assert dense["mask"].shape == sparse.shape
    assert (dense["mask"] == sparse).float().mean() > 0.999
    assert dense["peak_bytes"] > 0 and set(dense["phase_peaks"]) >= {"encoder", "level5"}
