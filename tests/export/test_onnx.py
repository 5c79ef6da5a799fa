from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from radflow.data.dataset import Dataset
from radflow.data.preprocess import to_model_input
from radflow.errors import ConfigError
from radflow.export import ExportError, check_parity, export_model, export_onnx, read_metadata
from radflow.runtime import RadflowModel, sex_feature
from radflow.train.checkpoint import ModelMeta, load_model
from radflow.train.data import sex_feature as train_sex_feature
from radflow.train.models import create_model, list_models, model_network
from radflow.train.predict import outputs_to_predictions
from tests.export.checkpoints import make_checkpoint


@pytest.mark.parametrize("task", ["multilabel", "multiclass", "regression"])
def test_export_matches_pytorch_at_any_batch_size(tmp_path: Path, task: str) -> None:
    checkpoint, dataset = make_checkpoint(tmp_path, task)
    out = tmp_path / "model.onnx"
    report = export_model(str(checkpoint), out, parity_n=20)

    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert "val split" in report["parity"]["source"]
    session = ort.InferenceSession(str(out))
    image = session.get_inputs()[0]
    assert image.name == "image" and isinstance(image.shape[0], str) and image.shape[1:] == [1, 32, 32]
    net, meta = load_model(checkpoint)
    ds = Dataset.open(dataset)
    runtime = RadflowModel.load(out)
    for batch in (1, 5):
        rows = ds.indices("test")[:batch]
        pixels = ds.images(rows)
        extra = sex_feature(ds.manifest["sex"].to_numpy()[rows]) if task == "regression" else None
        with torch.no_grad():
            x = torch.from_numpy(to_model_input(pixels, ds.spec))
            expected = outputs_to_predictions(net(x, None if extra is None else torch.from_numpy(extra)), meta)
        got, cam = runtime.run(pixels, extra)
        assert got.shape == (batch, len(meta.labels))
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4 * (meta.target_std or 1.0))
        assert cam is not None and cam.shape == (batch, len(meta.labels), 1, 1)
    if task == "regression":
        assert runtime.meta.output == "value" and runtime.needs_sex
        assert runtime.predict_batch(pixels, extra)[0].unit == "months"
    if task == "multiclass":
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_broken_export_fails_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint, _ = make_checkpoint(tmp_path)
    net, meta = load_model(checkpoint)
    out = tmp_path / "model.onnx"
    export_onnx(net, meta, out)
    with torch.no_grad():
        net.fc.bias.add_(0.5)  # the PyTorch model no longer matches the file
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(net, meta, out, Dataset.open(meta.dataset_path).images(np.arange(8)))

    import radflow.export.pipeline as pipeline

    def export_wrong(model: torch.nn.Module, meta_: object, path: Path, opset: int = 17, name: str = "") -> Path:
        wrong = load_model(checkpoint)[0]
        with torch.no_grad():
            wrong.fc.bias.sub_(0.5)
        return export_onnx(wrong, meta, path, opset)

    monkeypatch.setattr(pipeline, "export_onnx", export_wrong)
    with pytest.raises(ExportError, match=r"differs from PyTorch by .* \(> 0.0001\)"):
        export_model(str(checkpoint), out)
    assert not out.exists()


def test_metadata_round_trip_and_thresholds_drive_positives(tmp_path: Path) -> None:
    thresholds = {"Cardiomegaly": 0.0, "Pleural Effusion": 1.01, "Pneumothorax": 0.3}
    checkpoint, dataset = make_checkpoint(tmp_path, thresholds=thresholds)
    out = export_model(str(checkpoint), tmp_path / "m.onnx")["onnx"]
    ds = Dataset.open(dataset)

    meta = read_metadata(Path(out))
    assert meta.labels == ds.labels and meta.task == "multilabel"
    assert meta.input_size == 32 and meta.preprocess == ds.spec.to_dict()
    assert meta.thresholds == thresholds and meta.dataset_version == ds.version
    assert meta.arch == "small_cnn" and meta.output == "probabilities" and meta.radflow_version
    runtime = RadflowModel.load(out)
    assert runtime.meta == meta
    predictions = runtime.predict_batch(ds.images(np.arange(6)))
    for p in predictions:
        assert p.positives[0] == "Cardiomegaly" and "Pleural Effusion" not in p.positives
        threshold = {f.label: f.threshold for f in p.findings or []}
        assert threshold == thresholds


def test_runtime_sex_encoding_is_the_training_one() -> None:
    values = np.array(["M", "F", "", "M"], dtype=object)
    np.testing.assert_array_equal(sex_feature(values), train_sex_feature(values))


TINY = {
    "small_unet": {"widths": (4, 8)},
    "monai_unet": {"channels": (4, 8), "strides": (2,), "num_res_units": 0},
    "monai_segresnet": {"init_filters": 8, "blocks_down": (1, 1), "blocks_up": (1,)},
}
"""Smallest widths and fewest levels of the dense networks, so each parity check stays well under a second."""


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_exports_with_parity(arch: str, tmp_path: Path) -> None:
    """A new architecture is checked the moment it is registered: 32 px images, random weights.

    Dense networks export as segmentation models: the probability maps (N, K, S, S) only, at any batch size.
    """
    torch.manual_seed(0)
    dense = model_network(arch) == "dense"
    model = create_model(arch, 2, **TINY.get(arch, {})).eval()
    task = {"dense": "segmentation", "detection": "detection"}.get(model_network(arch), "multilabel")
    meta = ModelMeta(arch=arch, task=task, labels=["a", "b"], num_outputs=2, preprocess={"size": 32})
    path = export_onnx(model, meta, tmp_path / f"{arch}.onnx")
    n = 3 if dense else 1
    pixels = np.random.default_rng(0).integers(0, 256, (n, 32, 32), dtype=np.uint8)
    report = check_parity(model, meta, path, pixels, batch_size=2)
    assert report["images"] == n and report["max_abs_diff"] <= 1e-4
    if dense:
        outputs = ort.InferenceSession(str(path)).get_outputs()
        assert [o.name for o in outputs] == ["probability_maps"]
        assert isinstance(outputs[0].shape[0], str) and outputs[0].shape[1:] == [2, 32, 32]
        assert read_metadata(path).output == "probability_maps" and read_metadata(path).labels == ["a", "b"]


def test_architecture_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    meta = ModelMeta(arch="small_unet", task="multilabel", labels=["a"], num_outputs=1, preprocess={"size": 32})
    with pytest.raises(ConfigError, match="'small_unet' is a dense network but task 'multilabel' needs a pooled one"):
        export_onnx(create_model("small_unet", 1, widths=(4, 8)), meta, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
