"""Reference profiles: the input summary, the exported embedding, reference.json written at export and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from radflow.data.dataset import Dataset
from radflow.errors import DataError
from radflow.export import export_model
from radflow.monitor.reference import (
    EMBEDDING_OUTPUT,
    INPUT_FEATURES,
    REFERENCE_FILE,
    SAMPLE_SIZE,
    Reference,
    compute_reference,
    embeddings_from,
    input_summary,
    load_reference,
    output_feature_values,
    output_features,
    reference_path,
)
from radflow.runtime import RadflowModel
from radflow.runtime.session import to_model_size
from radflow.train.checkpoint import load_model
from tests.export.checkpoints import make_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(onnx, checkpoint, dataset) of a tiny model exported with its reference."""
    root = tmp_path_factory.mktemp("reference")
    checkpoint, dataset = make_checkpoint(root, n=120, seed=1)
    out = root / "models" / "model.onnx"
    report = export_model(str(checkpoint), out, parity_n=4, reference_images=40)
    assert report["reference"]["path"] == str(out.parent / REFERENCE_FILE)
    return out, checkpoint, dataset


def test_input_summary_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    got = input_summary(img)
    x = img.astype(np.float64) / 255
    assert got[0] == pytest.approx(x.mean()) and got[1] == pytest.approx(x.std())
    for value, q in zip(got[2:], (5, 50, 95), strict=True):
        assert value == pytest.approx(np.percentile(x, q), abs=1.5 / 255)
    with pytest.raises(ValueError, match="uint8"):
        input_summary(x)


def test_export_writes_a_reference_of_the_models_own_data(exported: tuple[Path, Path, Path]) -> None:
    out, _, dataset = exported
    ref = Reference.load(reference_path(out))
    ds = Dataset.open(dataset)
    assert ref.model["labels"] == ds.labels and ref.model["dataset_version"] == ds.version
    assert ref.source["input_split"] == "train" and ref.source["input_images"] == 40
    assert ref.source["output_split"] == "val" and ref.source["output_images"] == min(40, len(ds.indices("val")))
    assert set(ref.numeric) == {*INPUT_FEATURES, *(f"score:{label}" for label in ds.labels)}
    assert ref.groups["intensity_mean"] == "input" and ref.groups[f"score:{ds.labels[0]}"] == "output"
    for prof in ref.numeric.values():
        assert sum(prof.probs) == pytest.approx(1.0)
        assert len(prof.sample) <= SAMPLE_SIZE
    assert ref.embedding is not None and ref.embedding.source == EMBEDDING_OUTPUT
    assert ref.embedding.dim == 128, "small_cnn's last feature map has 128 channels"
    assert json.loads(reference_path(out).read_text())["format"] == 1


def test_reference_input_statistics_are_those_of_the_train_pixels(exported: tuple[Path, Path, Path]) -> None:
    out, _, dataset = exported
    ds = Dataset.open(dataset)
    train = to_model_size(ds.images(ds.indices("train")), RadflowModel.load(out).spec.size)
    means = np.array([input_summary(p)[0] for p in train])
    ref = compute_reference(out, dataset, n_train=len(train), n_val=8)
    assert ref.numeric["intensity_mean"].mean == pytest.approx(means.mean())
    assert ref.numeric["intensity_mean"].n == len(train)


def test_embedding_output_is_the_pooled_last_feature_map(exported: tuple[Path, Path, Path]) -> None:
    out, checkpoint, dataset = exported
    net, _ = load_model(checkpoint)
    runtime = RadflowModel.load(out)
    ds = Dataset.open(dataset)
    pixels = ds.images(ds.indices("val")[:5])
    from radflow.data.preprocess import to_model_input

    x = to_model_input(pixels, runtime.spec)
    onnx_emb, cam = runtime.session.run([EMBEDDING_OUTPUT, "cam"], {"image": x})
    with torch.no_grad():
        features = net.eval().forward_features(torch.from_numpy(x))  # type: ignore[operator]
        want = features.mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(onnx_emb, want, atol=1e-4)
    assert embeddings_from(cam, "cam").shape == (5, len(ds.labels)), "older models: CAM averaged over space"


def test_load_reference_refuses_missing_or_foreign_profiles(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, _, _ = exported
    ref, reason = load_reference(tmp_path / "model.onnx", ["A"])
    assert ref is None and reason is not None and REFERENCE_FILE in reason
    ref, reason = load_reference(out, ["Other"])
    assert ref is None and reason is not None and "labels" in reason
    (tmp_path / REFERENCE_FILE).write_text("{not json")
    ref, reason = load_reference(tmp_path / "model.onnx", ["A"])
    assert ref is None and reason is not None and "cannot read" in reason
    labels = Reference.load(reference_path(out)).model["labels"]
    ref, reason = load_reference(out, labels)
    assert ref is not None and reason is None


def test_reference_round_trips_through_json(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, _, _ = exported
    ref = Reference.load(reference_path(out))
    again = Reference.load(ref.save(tmp_path / "copy.json"))
    assert again.to_dict() == ref.to_dict()


def test_export_without_reference_removes_a_stale_one(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, checkpoint, _ = exported
    out = tmp_path / "model.onnx"
    (tmp_path / REFERENCE_FILE).write_text("{}")
    report = export_model(str(checkpoint), out, parity_n=4, reference_images=0)
    assert report["reference"] is None
    assert not (tmp_path / REFERENCE_FILE).exists()


def test_output_feature_values_of_probability_maps() -> None:
    maps = np.zeros((2, 2, 4, 4), np.float32)
    maps[0, 0, :2, :2] = [[0.5, 0.7], [0.9, 0.1]]  # three pixels at >= 0.5, mean 0.7
    maps[1, 0] = 1.0
    maps[:, 1] = 0.49  # never predicted
    labels = ["Lung", "Lesion"]
    got = output_feature_values(maps, labels, ["area:Lung", "confidence:Lung", "area:Lesion", "confidence:Lesion"])
    np.testing.assert_allclose(got[:, :3], [[3 / 16, 0.7, 0.0], [1.0, 1.0, 0.0]], rtol=1e-6)
    assert np.isnan(got[:, 3]).all()
    assert output_features(labels, "segmentation") == [
        "area:Lung",
        "area:Lesion",
        "confidence:Lung",
        "confidence:Lesion",
    ]
    with pytest.raises(DataError, match="unknown output feature 'area:Heart'"):
        output_feature_values(maps, labels, ["area:Heart"])


def test_segmentation_reference_profiles_area_and_confidence_per_structure(tmp_path: Path) -> None:
    checkpoint, dataset = make_checkpoint(tmp_path, task="segmentation", n=30)
    out = tmp_path / "seg.onnx"
    export_model(str(checkpoint), out, parity_n=4, reference_images=16)
    ref = Reference.load(reference_path(out))
    ds = Dataset.open(dataset)
    model = RadflowModel.load(out)
    rows = ds.indices("val")[:16]
    maps = model.run(ds.images(rows))[0]
    assert maps.shape == (len(rows), len(ds.labels), 32, 32)

    assert ref.model["task"] == "segmentation" and ref.embedding is None
    outputs = {name for name, group in ref.groups.items() if group == "output"}
    predicted = (maps >= 0.5).any(axis=(0, 2, 3))
    assert outputs == {
        *(f"area:{s}" for s in ds.labels),
        *(f"confidence:{s}" for s, shown in zip(ds.labels, predicted, strict=True) if shown),
    }
    for j, structure in enumerate(ds.labels):
        area = (maps[:, j] >= 0.5).mean(axis=(1, 2))
        assert ref.numeric[f"area:{structure}"].mean == pytest.approx(area.mean())
        if predicted[j]:
            inside = [m[m >= 0.5].mean() for m in maps[:, j] if (m >= 0.5).any()]
            assert ref.numeric[f"confidence:{structure}"].mean == pytest.approx(np.mean(inside), rel=1e-5)
            assert ref.numeric[f"confidence:{structure}"].n == len(inside)
