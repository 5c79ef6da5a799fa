"""The evaluation report on tiny datasets: JSON content, figures, the table and the CLI.

The end-to-end run (train -> evaluate_and_log -> register) is in tests/test_registry.py, which has a store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import EvaluateConfig
from radflow.data.dataset import SPLITS, Dataset
from radflow.errors import DataError
from radflow.evaluate.report import evaluate_checkpoint, render_evaluation
from radflow.train.checkpoint import ModelMeta, save_checkpoint
from radflow.train.models import create_model
from tests.fixtures import make_dataset

FAST = EvaluateConfig(n_bootstrap=100, pdf=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(dataset, untrained checkpoint) per task: evaluation does not need a good model to be checked."""
    root = tmp_path_factory.mktemp("report")
    out = {}
    for task in ("multilabel", "multiclass", "regression"):
        ds_path = make_dataset(root / task, task=task, n=90, size=32)
        ds = Dataset.open(ds_path)
        extra = ["sex"] if task == "regression" else []
        meta = ModelMeta(
            arch="small_cnn",
            task=task,
            labels=ds.labels,
            num_outputs=len(ds.labels),
            extra_inputs=extra,
            preprocess=ds.spec.to_dict(),
            dataset_version=ds.version,
            dataset_path=str(ds_path),
            target_unit="months" if task == "regression" else None,
            target_mean=110.0 if task == "regression" else None,
            target_std=60.0 if task == "regression" else None,
        )
        model = create_model("small_cnn", len(ds.labels), num_extra=len(extra))
        out[task] = (ds_path, save_checkpoint(root / f"{task}.pt", model, meta))
    return out


def test_multilabel_report_holds_everything(models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    ds_path, checkpoint = models["multilabel"]
    result = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, tmp_path)
    ds = Dataset.open(ds_path)
    assert result["dataset"] == {
        "path": str(ds_path.resolve()),
        "version": ds.version,
        "split": "test",
        "n": len(ds.indices("test")),
        "source_format": "fixture",
        "patients": ds.manifest["patient_id"].nunique(),
        "splits": {s: {"images": len(ds.indices(s)), "patients": 6 * (3 if s == "train" else 1)} for s in SPLITS},
        "train_prevalence": ds.info["prevalence"]["train"],
    }
    assert result["thresholds"]["chosen_on"] == "val" and result["thresholds"]["method"] == "youden"
    per_label = result["metrics"]["per_label"]
    for label in ds.labels:
        assert result["thresholds"]["per_label"][label]["source"] == "val (youden)"
        assert per_label[label]["threshold"] == result["thresholds"]["per_label"][label]["threshold"]
        assert {"auroc", "auroc_ci", "auprc", "sensitivity", "specificity", "ece"} <= set(per_label[label])
    assert set(result["subgroups"]) == {"sex", "age_band", "projection"}
    assert result["calibration"]["ece_pooled"] is not None
    assert result["headline"]["test_macro_auroc"] == result["metrics"]["macro"]["auroc"]
    assert "test_auroc_Pleural_Effusion" in result["headline"]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["metrics"]["macro"] == result["metrics"]["macro"]
    assert sorted(result["plots"]) == ["calibration.png", "confusion.png", "pr.png", "roc.png"]
    assert (tmp_path / "report.html").stat().st_size > 10_000 and not (tmp_path / "report.pdf").exists()
    assert all((tmp_path / name).stat().st_size > 2000 for name in result["plots"])


def test_target_sensitivity_method_is_recorded(models: dict[str, tuple[Path, Path]]) -> None:
    ds_path, checkpoint = models["multilabel"]
    params = EvaluateConfig(n_bootstrap=0, threshold_method="sensitivity", target_sensitivity=0.8)
    result = evaluate_checkpoint(checkpoint, ds_path, "test", params)
    assert result["thresholds"]["target_sensitivity"] == 0.8
    for entry in result["thresholds"]["per_label"].values():
        assert entry["val_sensitivity"] >= 0.8


def test_multiclass_and_regression_reports(models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    ds_path, checkpoint = models["multiclass"]
    mc = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, tmp_path / "mc")
    n_classes = len(mc["labels"])
    assert np.asarray(mc["metrics"]["confusion"]).shape == (n_classes, n_classes)
    assert np.asarray(mc["metrics"]["confusion"]).sum() == mc["n"]
    assert "test_accuracy" in mc["headline"] and "confusion.png" in mc["plots"]

    ds_path, checkpoint = models["regression"]
    reg = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, tmp_path / "reg")
    m = reg["metrics"]
    # Bone-age bands default to months when the config does not set them.
    assert list(m["by_band"]) == ["0-60", "60-120", "120-180", "180-240"]
    assert sum(b["n"] for b in m["by_band"].values()) == m["n"] == reg["n"]
    assert m["mae_ci"][0] <= m["mae"] <= m["mae_ci"][1]
    assert reg["headline"]["test_mae"] == m["mae"] and reg["unit"] == "months"
    assert sorted(reg["plots"]) == ["error_by_band.png", "scatter.png"]


def test_table_shows_every_label(models: dict[str, tuple[Path, Path]]) -> None:
    ds_path, checkpoint = models["multilabel"]
    result = evaluate_checkpoint(checkpoint, ds_path, "test", FAST)
    console = Console(record=True, width=200)
    render_evaluation(result, console)
    text = console.export_text()
    for header in ("label", "prevalence", "AUROC [95% CI]", "AUPRC", "sens", "spec", "threshold"):
        assert header in text
    for label in result["labels"]:
        assert label in text
    assert "macro" in text and "ECE" in text


def test_mismatched_dataset_is_refused(models: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    _, checkpoint = models["multilabel"]
    other = make_dataset(tmp_path / "other", n=30, size=32, labels=("Edema", "Atelectasis"))
    with pytest.raises(DataError, match="lacks the model's label"):
        evaluate_checkpoint(checkpoint, other, "test", FAST)
    bigger = make_dataset(tmp_path / "bigger", n=30, size=48)
    with pytest.raises(DataError, match="--size 32"):
        evaluate_checkpoint(checkpoint, bigger, "test", FAST)
    with pytest.raises(DataError, match="model predicts a multilabel task"):
        evaluate_checkpoint(checkpoint, models["regression"][0], "test", FAST)


def test_cli_evaluates_a_checkpoint_on_its_training_dataset(
    models: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    _, checkpoint = models["multilabel"]
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app, ["evaluate", str(checkpoint), "--out", str(out), "--n-bootstrap", "50", "--split", "val", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["split"] == "val" and (out / "evaluation.json").is_file()
    assert any("optimistic" in w for w in data["warnings"])
    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "not a checkpoint file" in missing.output


def test_report_writes_per_image_predictions_for_the_paired_champion_comparison(
    models: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from radflow.registry.comparison import PREDICTIONS_FILE, align_predictions, read_predictions

    ds_path, checkpoint = models["multilabel"]
    result = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, tmp_path)
    ds = Dataset.open(ds_path)
    frame, labels = read_predictions(tmp_path / PREDICTIONS_FILE)
    test_rows = ds.manifest.iloc[ds.indices("test")]
    assert labels == ds.labels and len(frame) == result["n"] == len(test_rows)
    assert list(frame.index) == list(test_rows["image_id"].astype(str))
    assert list(frame["patient_id"]) == list(test_rows["patient_id"].astype(str))  # pseudonyms, as in the manifest
    paired, why = align_predictions(tmp_path / PREDICTIONS_FILE, tmp_path / PREDICTIONS_FILE)
    assert why is None and paired is not None and paired.candidate.shape == (result["n"], len(labels))
    np.testing.assert_array_equal(paired.candidate, paired.champion)
    # Every label had positives in train: none is untrained; the labels hold no "No Finding".
    assert result["untrained_labels"] == [] and result["contradictions"] is None


@pytest.fixture(scope="module")
def segmentation_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, checkpoint) of a small UNet trained a few steps on the train masks of 16 images of 32 px."""
    import torch

    from radflow.train.data import ShardBatches
    from radflow.train.losses import make_loss

    root = tmp_path_factory.mktemp("seg")
    ds_path = make_dataset(root / "ds", task="segmentation", n=16, size=32, patients=16)
    ds = Dataset.open(ds_path)
    rows = ds.indices("train")
    x, y, _ = ShardBatches(ds, rows, ds.spec, ds.targets(rows), masks=True)[list(range(len(rows)))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared CI core more threads only wait for each other
    torch.manual_seed(0)
    model = create_model("small_unet", len(ds.labels))
    loss_fn = make_loss(None, "segmentation")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(6):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    meta = ModelMeta(
        arch="small_unet",
        task="segmentation",
        labels=ds.labels,
        num_outputs=len(ds.labels),
        preprocess=ds.spec.to_dict(),
        dataset_version=ds.version,
        dataset_path=str(ds_path),
    )
    return ds_path, save_checkpoint(root / "seg.pt", model, meta)


def test_segmentation_report_is_metrics_segmentation_on_the_split_masks(
    segmentation_model: tuple[Path, Path], tmp_path: Path
) -> None:
    from radflow.data.masks import unpack
    from radflow.metrics.segmentation import segmentation_report
    from radflow.registry.comparison import PREDICTIONS_FILE
    from radflow.tasks.segmentation import dice_per_image, overlap_counts
    from radflow.train.checkpoint import load_model
    from radflow.train.predict import predict_dataset

    ds_path, checkpoint = segmentation_model
    result = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, tmp_path, batch_size=2)
    ds = Dataset.open(ds_path)
    rows = ds.indices("test")
    # The same numbers as metrics.segmentation on the masks, predicted here in one piece (the report: 2 at a time).
    model, meta = load_model(checkpoint)
    pred = predict_dataset(model, meta, ds, "test") >= 0.5
    truth = unpack(ds.masks(rows), len(ds.labels))
    pids = ds.manifest["patient_id"].astype(str).to_numpy()[rows]
    expected = segmentation_report(pred, truth, ds.labels, pids, n_bootstrap=FAST.n_bootstrap)
    assert result["n"] == len(rows) > 2 and result["metrics"]["unit"] == "px"
    assert result["metrics"]["per_structure"] == expected["per_structure"]
    assert result["metrics"]["macro"] == expected["macro"]
    assert 0 < expected["macro"]["dice"] <= 1  # a few steps already find some structure
    assert result["headline"]["test_mean_dice"] == expected["macro"]["dice"]
    assert result["headline"]["test_dice_Left_Lung"] == expected["per_structure"]["Left Lung"]["dice"]
    assert set(result["subgroups"]) >= {"sex"}
    assert result["plots"] == ["worst_cases.png"] and (tmp_path / "worst_cases.png").stat().st_size > 2000
    assert json.loads((tmp_path / "evaluation.json").read_text())["metrics"]["macro"] == expected["macro"]
    # One row per test image with each structure's Dice and emptiness; no classifier score columns.
    frame = pd.read_parquet(tmp_path / PREDICTIONS_FILE)
    columns = [f"{kind}:{s}" for s in ds.labels for kind in ("dice", "truth_empty", "pred_empty")]
    assert sorted(frame.columns) == sorted(["image_id", "patient_id", *columns])
    assert list(frame["image_id"]) == list(ds.manifest["image_id"].astype(str).to_numpy()[rows])
    dice = dice_per_image(overlap_counts(pred, truth))
    for j, s in enumerate(ds.labels):
        np.testing.assert_array_equal(frame[f"dice:{s}"].to_numpy(), dice[:, j])
        np.testing.assert_array_equal(frame[f"truth_empty:{s}"].to_numpy(), ~truth[:, j].any(axis=(1, 2)))
        np.testing.assert_array_equal(frame[f"pred_empty:{s}"].to_numpy(), ~pred[:, j].any(axis=(1, 2)))
    console = Console(record=True, width=200)
    render_evaluation(result, console)
    text = console.export_text()
    assert "Dice [95% CI]" in text and "figures: worst_cases.png" in text


def test_segmentation_distances_are_in_mm_when_every_test_image_has_a_pixel_spacing(
    segmentation_model: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    ds_path, checkpoint = segmentation_model
    in_px = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, tmp_path / "px", batch_size=2)
    copy = tmp_path / "ds-mm"
    shutil.copytree(ds_path, copy)
    manifest = pd.read_parquet(copy / "manifest.parquet")
    manifest["spacing_row_mm"] = manifest["spacing_col_mm"] = 0.5  # what ingest records from PixelSpacing
    manifest.to_parquet(copy / "manifest.parquet")
    in_mm = evaluate_checkpoint(checkpoint, copy, "test", FAST, tmp_path / "mm", batch_size=2)
    assert (in_px["metrics"]["unit"], in_mm["metrics"]["unit"]) == ("px", "mm")
    compared = 0
    for structure, px in in_px["metrics"]["per_structure"].items():
        mm = in_mm["metrics"]["per_structure"][structure]
        assert mm["dice"] == px["dice"]
        for metric in ("hd95", "msd"):
            if px[metric] is not None and np.isfinite(px[metric]):
                assert mm[metric] == pytest.approx(0.5 * px[metric])
                compared += 1
    assert compared > 0


def test_the_report_module_draws_with_matplotlib_only_when_a_figure_is_drawn() -> None:
    # `radflow stage register` reads the module for log_gated_report and draws nothing: importing matplotlib and
    # scikit-learn there cost every register stage ~1.7 s of its ~6 s. The plotter is found on the first figure.
    code = (
        "import sys; import radflow.evaluate.report as r; "
        "print('matplotlib' in sys.modules, 'sklearn' in sys.modules, r._plotter('scatter').__name__, "
        "'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "regression_scatter", "True"]
