from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radflow.data.dataset import Dataset
from radflow.export import Int8RefusedError, export_model, int8_path, quantize_model, read_metadata
from radflow.runtime import RadflowModel
from tests.export.checkpoints import make_checkpoint


def test_int8_refused_beyond_tolerance_unless_forced(tmp_path: Path) -> None:
    checkpoint, dataset = make_checkpoint(tmp_path, n=90)
    out = tmp_path / "model.onnx"
    with pytest.raises(Int8RefusedError, match=r"lowers val macro AUROC by .* tolerance -1.*--force") as refused:
        export_model(str(checkpoint), out, int8=True, tolerance=-1.0, latency_time=0.05)
    assert out.is_file() and not int8_path(out).exists()
    assert str(out) in str(refused.value) and refused.value.status_code < 500

    report = export_model(str(checkpoint), out, int8=True, tolerance=-1.0, force=True, latency_time=0.05)["int8"]
    int8 = int8_path(out)
    assert report["forced"] and report["path"] == str(int8) and int8.is_file()
    assert report["method"] == "int8-static-qdq" and report["calibration_images"] > 0
    assert report["size_bytes"]["int8"] < report["size_bytes"]["fp32"] / 2
    assert set(report["latency_ms_per_image"]["int8"]) == {"1", "8"} and report["speedup"]["8"] > 0
    assert report["metric"]["name"] == "macro_auroc" and report["metric"]["split"] == "val"
    assert read_metadata(int8).quantization == "int8-static-qdq"

    # The INT8 model is a usable runtime model whose probabilities stay close to FP32.
    pixels = Dataset.open(dataset).images(np.arange(8))
    fp32_scores = RadflowModel.load(out).run(pixels)[0]
    int8_scores = RadflowModel.load(int8).run(pixels)[0]
    assert np.max(np.abs(fp32_scores - int8_scores)) < 0.05


def test_int8_accepted_within_tolerance_and_says_when_it_buys_little(tmp_path: Path) -> None:
    checkpoint, _ = make_checkpoint(tmp_path, task="regression")
    out = tmp_path / "model.onnx"
    report = export_model(str(checkpoint), out, int8=True, mae_tolerance=50.0, latency_time=0.05)["int8"]
    assert not report["forced"] and report["metric"]["name"] == "mae"
    assert abs(report["metric"]["change"]) < 50.0
    little = [n for n in report["notes"] if "INT8 buys little" in n]
    assert bool(little) == (report["speedup"]["8"] < 1.2)


def test_dynamic_quantization_without_calibration_data_needs_force(tmp_path: Path) -> None:
    checkpoint, _ = make_checkpoint(tmp_path)
    out = export_model(str(checkpoint), tmp_path / "model.onnx")["onnx"]
    target = tmp_path / "dyn.onnx"
    with pytest.raises(Int8RefusedError, match="could not be measured"):
        quantize_model(Path(out), target, None, latency_time=0.05)
    assert not target.exists()
    report = quantize_model(Path(out), target, None, force=True, latency_time=0.05)
    assert report["method"] == "int8-dynamic" and report["metric"] is None
    assert any("dynamic quantization" in n for n in report["notes"])
    assert RadflowModel.load(target).run(np.zeros((2, 32, 32), np.uint8))[0].shape == (2, 3)


def test_int8_of_a_segmentation_model_is_judged_by_val_mean_dice(tmp_path: Path) -> None:
    checkpoint, dataset = make_checkpoint(tmp_path, task="segmentation", n=24)
    out = tmp_path / "seg.onnx"
    export_model(str(checkpoint), out, reference_images=0)
    assert read_metadata(out).output == "probability_maps"
    ds, target = Dataset.open(dataset), int8_path(out)
    kept = quantize_model(out, target, ds, dice_tolerance=1.0, latency_time=0.05)
    metric = kept["metric"]
    assert metric["name"] == "mean_dice" and metric["split"] == "val" and 0 < metric["fp32"] <= 1
    assert metric["change"] == pytest.approx(metric["int8"] - metric["fp32"])
    maps = RadflowModel.load(target).run(np.zeros((2, 32, 32), np.uint8))[0]
    assert maps.shape[:2] == (2, len(ds.structures))
    # a tolerance below any possible change: refused, with both numbers, and the INT8 file removed
    with pytest.raises(Int8RefusedError, match=r"lowers val mean Dice by .* \(0\.\d{4} -> 0\.\d{4}\).*tolerance -1"):
        quantize_model(out, target, ds, dice_tolerance=-1.0, latency_time=0.05)
    assert not target.exists()
    # export's own --int8 passes its Dice tolerance through (export.max_int8_dice_drop in a workspace)
    with pytest.raises(Int8RefusedError, match="tolerance -1"):
        export_model(str(checkpoint), out, int8=True, dice_tolerance=-1.0, reference_images=0, latency_time=0.05)
