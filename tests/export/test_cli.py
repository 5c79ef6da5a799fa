from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.export.onnx import read_metadata
from radflow.monitor.reference import REFERENCE_TAG, fetch_reference, load_reference
from radflow.runtime import ONNX_TAG, MissingOnnxError, RadflowModel
from tests.export.checkpoints import make_checkpoint, png_bytes


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint, dataset, onnx) made through `radflow export --json`."""
    root = tmp_path_factory.mktemp("cli")
    checkpoint, dataset = make_checkpoint(root, thresholds={"Cardiomegaly": 0.0})
    out = root / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["onnx"] == str(out) and report["parity"]["max_abs_diff"] <= 1e-4
    assert report["metadata"]["labels"] == Dataset.open(dataset).labels and report["mlflow"] is None
    return checkpoint, dataset, out


def test_export_int8_refusal_exits_2_with_the_reason(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    checkpoint, _, _ = exported
    out = tmp_path / "m.onnx"
    args = ["export", str(checkpoint), "--out", str(out), "--int8", "--int8-tolerance", "-1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "lowers val macro AUROC" in message and "--force" in message
    assert not (tmp_path / "m.int8.onnx").exists()
    result = CliRunner().invoke(app, [*args, "--force", "--triton-repo", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert "INT8" in result.output and (tmp_path / "repo" / "m" / "1" / "model.onnx").is_file()
    assert RadflowModel.load(tmp_path / "repo" / "m" / "1" / "model.onnx").meta.quantization == "int8-static-qdq"
    said = "".join(result.output.split())  # a long temporary path may be folded anywhere, even mid-word
    assert (
        "".join(f"serves the INT8 model {tmp_path / 'm.int8.onnx'} (default, although INT8 was kept by --force".split())
        in said
    )
    assert "--triton-modelfp32fortheother" in said


def test_predict_prints_findings_and_reports_bad_files(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, onnx_path = exported
    good = tmp_path / "chest.png"
    good.write_bytes(png_bytes(np.full((50, 40), 90, np.uint8)))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    result = CliRunner().invoke(
        app, ["predict", str(onnx_path), str(good), str(bad), "--json", "--heatmaps", str(tmp_path / "maps")]
    )
    assert result.exit_code == 2
    answers = json.loads(result.stdout)
    assert answers[0]["image"] == str(good)
    assert answers[0]["findings"][0]["label"] == "Cardiomegaly"
    assert answers[0]["findings"][0]["positive"] is True  # threshold 0.0 from the checkpoint
    positives = [f["label"].replace(" ", "_") for f in answers[0]["findings"] if f["positive"]]
    assert answers[0]["heatmaps"] == [str(tmp_path / "maps" / f"chest-{label}.png") for label in positives]
    assert Path(answers[0]["heatmaps"][0]).read_bytes().startswith(b"\x89PNG")
    assert "not a PNG, JPEG or DICOM" in answers[1]["error"]

    human = CliRunner().invoke(app, ["predict", str(onnx_path), str(good)])
    assert human.exit_code == 0 and "Cardiomegaly" in human.output and "yes" in human.output


def test_predict_runs_a_checkpoint_through_a_temporary_export(
    exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    checkpoint, _, _ = exported
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(np.full((32, 32), 90, np.uint8)))
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(image), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[0]["findings"]) == 3


def test_score_writes_parquet_matching_the_runtime(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, dataset, onnx_path = exported
    out = tmp_path / "scores.parquet"
    args = ["score", str(onnx_path), str(dataset), "--out", str(out), "--split", "val", "--batch-size", "4", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = Dataset.open(dataset)
    rows = ds.indices("val")
    assert json.loads(result.stdout)["images"] == len(rows)
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["image_id", *ds.labels]
    assert frame["image_id"].tolist() == ds.manifest["image_id"].iloc[rows].tolist()
    expected = RadflowModel.load(onnx_path).run(ds.images(rows))[0]
    np.testing.assert_allclose(frame[ds.labels].to_numpy(), expected, rtol=1e-5, atol=1e-6)

    bad = CliRunner().invoke(app, ["score", str(onnx_path), str(dataset), "--out", str(out), "--split", "vall"])
    assert bad.exit_code == 2 and "Did you mean 'val'" in " ".join(bad.output.split())


def test_export_from_the_registry_logs_and_tags_the_onnx(
    exported: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radflow.tracking import client as make_client

    checkpoint, _, _ = exported
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = make_client(uri, create=True)
    experiment = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(checkpoint.rename(checkpoint.with_name("best.pt"))), "checkpoint")
    client.set_terminated(run_id)
    client.create_registered_model("chest")
    version = client.create_model_version("chest", f"runs:/{run_id}/checkpoint", run_id=run_id)
    client.set_registered_model_alias("chest", "champion", version.version)

    with pytest.raises(MissingOnnxError, match="radflow export"):
        RadflowModel.load("models:/chest@champion")
    result = CliRunner().invoke(app, ["export", "models:/chest@champion", "--out", str(tmp_path / "c.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    logged = json.loads(result.stdout)["mlflow"]
    assert logged["run_id"] == run_id and logged["versions"] == ["chest/1"]
    assert client.get_model_version("chest", "1").tags[ONNX_TAG] == "onnx/c.onnx"
    assert client.get_model_version("chest", "1").tags[REFERENCE_TAG] == "onnx/reference.json"
    assert [a.path for a in client.list_artifacts(run_id, "onnx")] == ["onnx/c.onnx", "onnx/reference.json"]
    model = RadflowModel.load("models:/chest@champion")
    assert model.labels == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
    # The registered name travels in the file: a server given only c.onnx reports "chest", not "model".
    assert read_metadata(tmp_path / "c.onnx").name == "chest"
    # The server gets the drift reference from the same run as the downloaded ONNX file.
    assert load_reference(model.source, model.labels)[0] is None
    assert fetch_reference(model.source, [run_id])
    assert load_reference(model.source, model.labels)[0] is not None
    assert RadflowModel.load(run_id).meta == model.meta
