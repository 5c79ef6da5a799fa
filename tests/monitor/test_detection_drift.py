"""A detector's drift reference and window: the boxes it answers (per label count and best score), never its anchors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radflow.data.dataset import Dataset
from radflow.errors import DataError
from radflow.export import Int8RefusedError, export_model, int8_path
from radflow.export.quantize import quantize_model
from radflow.inference import ServeSettings
from radflow.monitor.reference import Reference, output_feature_values, output_features, reference_path
from radflow.runtime import RadflowModel
from radflow.tasks import get_task
from radflow.tasks.detection import detection_features, select_detections
from radflow.train.checkpoint import ModelMeta, save_checkpoint
from radflow.train.models import create_model
from tests.export.checkpoints import png_bytes
from tests.serve.harness import AppHarness
from tests.train.detection_fixtures import make_detection_dataset

WIDTHS = {"widths": [8, 8, 16, 16]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(onnx, checkpoint, dataset) of a random-init detector exported with its reference."""
    root = tmp_path_factory.mktemp("det-drift")
    ds_path = make_detection_dataset(root, n=18)
    ds = Dataset.open(ds_path)
    torch.manual_seed(0)
    meta = ModelMeta(
        arch="fcos_small",
        task="detection",
        labels=ds.labels,
        num_outputs=len(ds.labels),
        preprocess=ds.spec.to_dict(),
        dataset_version=ds.version,
        dataset_path=str(ds_path),
        model_kwargs=WIDTHS,
    )
    checkpoint = save_checkpoint(root / "det.pt", create_model("fcos_small", len(ds.labels), **WIDTHS), meta)
    out = root / "models" / "model.onnx"
    report = export_model(str(checkpoint), out, parity_n=4, reference_images=8)
    assert report["reference"]["path"] == str(reference_path(out))
    return out, checkpoint, ds_path


def test_the_reference_profiles_the_kept_boxes_per_label(exported: tuple[Path, Path, Path]) -> None:
    out, _, ds_path = exported
    ds = Dataset.open(ds_path)
    ref = Reference.load(reference_path(out))
    features = output_features(ds.labels, "detection")
    assert {name for name, group in ref.groups.items() if group == "output"} == set(features)
    assert ref.model["task"] == "detection" and ref.embedding is None
    rows = ds.indices("val")
    anchors = RadflowModel.load(out).run(ds.images(rows))[0]
    assert anchors.ndim == 3 and anchors.shape[2] == 4 + len(ds.labels)
    kept = [detection_features(select_detections(a), ds.labels) for a in anchors]
    for name in features:
        assert ref.numeric[name].mean == pytest.approx(np.mean([k[name] for k in kept]), rel=1e-5)
        assert ref.numeric[name].n == len(rows)
    with pytest.raises(DataError, match=r"needs activated anchors \(N, A, 5\)"):
        output_feature_values(np.zeros((2, 5)), ds.labels, features)


def test_a_served_image_feeds_the_window_its_boxes_features(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, _, ds_path = exported
    ds = Dataset.open(ds_path)
    image = ds.images(ds.indices("test")[:1])[0]
    settings = ServeSettings(model=str(out), store_url=f"sqlite:///{tmp_path / 'serving.db'}", threads=1)
    harness = AppHarness(settings)
    try:
        answer = harness.request("POST", "/v1/predict", content=png_bytes(image))
        assert answer.status_code == 200, answer.text
        assert "boxes" in answer.json()
        assert harness.service.drift is not None
        (monitor,) = list(harness.service.drift.monitors())
        assert monitor.reference is not None and monitor.observed == 1
        window = monitor._snapshot()[0]
        anchors = RadflowModel.load(out).run(image[None])[0][0]
        expected = detection_features(select_detections(anchors), ds.labels)
        served = dict(zip(monitor.outputs, window[0, -len(monitor.outputs) :], strict=True))
        assert served == pytest.approx({name: expected[name] for name in monitor.outputs}, abs=1e-5)
    finally:
        harness.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(onnx, checkpoint, dataset) of a detector trained until it finds the squares (val mAP50 well above 0)."""
    from radflow.config import Params
    from radflow.train.loop import train

    root = tmp_path_factory.mktemp("det-int8")
    ds_path = make_detection_dataset(root, n=24)
    overrides = {"train.epochs": 5, "train.batch_size": 4, "train.num_workers": 0, "train.threads": 1}
    params = Params().with_overrides({**overrides, "train.early_stopping_patience": 0, "train.lr": 3e-3})
    result = train(
        ds_path, params, tracking_uri=f"sqlite:///{root / 'mlflow.db'}", out_dir=root / "ckpt", progress=False
    )
    out = root / "model.onnx"
    export_model(str(result.checkpoint_path), out, parity_n=2, reference_images=0)
    return out, result.checkpoint_path, ds_path


def test_int8_of_a_detector_is_judged_by_val_map50(trained: tuple[Path, Path, Path]) -> None:
    from radflow.evaluate.report import predict_boxes
    from radflow.train.checkpoint import load_model

    out, checkpoint, ds_path = trained
    ds = Dataset.open(ds_path)
    target = int8_path(out)
    kept = quantize_model(out, target, ds, map_tolerance=1.0, latency_time=0.05)
    metric = kept["metric"]
    assert metric["name"] == "map50" and metric["split"] == "val" and target.is_file()
    assert metric["change"] == pytest.approx(metric["int8"] - metric["fp32"])
    # FP32's number is the evaluation's: the PyTorch model's kept boxes against the same truth
    model, meta = load_model(checkpoint)
    boxes, truth = predict_boxes(model, meta, ds, ds.indices("val"), "cpu", 4)
    expected = get_task(meta.task).quality_metric(meta.labels, boxes, truth)[1]
    assert expected is not None and expected > 0.3 and metric["fp32"] == pytest.approx(expected, abs=1e-3)
    # a tolerance below any possible change: refused with both numbers and the setting, the file removed
    with pytest.raises(Int8RefusedError, match=r"lowers val mAP50 by .*\(export\.max_int8_map_drop\)") as refused:
        quantize_model(out, target, ds, map_tolerance=-1.0, latency_time=0.05)
    assert refused.value.status_code < 500 and not target.exists()
    # export's own --int8 passes it through (export.max_int8_map_drop in a workspace)
    with pytest.raises(Int8RefusedError, match="tolerance -1"):
        export_model(str(checkpoint), out.with_name("again.onnx"), int8=True, map_tolerance=-1.0, reference_images=0)
