"""A detector's drift reference and window: the boxes it answers (per label count and best score), never its anchors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radflow.data.dataset import Dataset
from radflow.errors import DataError
from radflow.export import Int8RefusedError, export_model, int8_path
from radflow.inference import ServeSettings
from radflow.monitor.reference import Reference, output_feature_values, output_features, reference_path
from radflow.runtime import RadflowModel
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


def test_int8_of_a_detector_is_refused_naming_why(exported: tuple[Path, Path, Path]) -> None:
    out, checkpoint, _ = exported
    target = out.with_name("int8-try.onnx")
    with pytest.raises(Int8RefusedError, match=r"detection model is not checked.*mAP50.*--force") as refused:
        export_model(str(checkpoint), target, int8=True, parity_n=2, reference_images=0)
    assert refused.value.status_code < 500 and not int8_path(target).exists() and target.is_file()
