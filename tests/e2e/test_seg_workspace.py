"""A tiny segmentation workspace run end to end: ``radflow init --task segmentation`` -> ``radflow run``.

Phantom chest radiographs with their exact masks (synth --masks) are ingested as a mask dataset, split,
trained with small_unet for one epoch at 32 px, evaluated by Dice, exported and registered; the registered
model answers ``structures``. The pipeline's stages are real (DVC, MLflow, ONNX Runtime); only the sizes
are tiny (as in tests/pipeline/tiny.py for the classifier's workspace).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.pipeline import run_pipeline
from radflow.pipeline.dvc_yaml import METRICS, REGISTRATION, ROC, SPLIT_DATASET, SYNTH_DIR
from radflow.pipeline.workspace import SEGMENTATION_MODEL_NAME
from radflow.runtime import RadflowModel
from radflow.tracking import resolve_tracking_uri

pytestmark = pytest.mark.slow

TINY = (
    "data.synth.n=30",
    "data.synth.size=64",
    "data.size=32",
    "data.labels=[Right Lung, Left Lung, Heart]",
    "train.epochs=1",
    "train.num_workers=0",
    "evaluate.n_bootstrap=20",
    "evaluate.pdf=false",  # the PDF copy is tested in tests/evaluate; here it was two Chromium prints
    "gates.min_mean_dice=0",  # one epoch on 20 images: the gate must pass for the version to be served
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seg") / "ws"
    args = ["init", str(root), "--source", "synthetic", "--task", "segmentation"]
    for item in TINY:
        args += ["-S", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root


def test_init_writes_a_segmentation_pipeline(ws: Path) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["data"]["synth"]["masks"] is True
    assert params["train"]["arch"] == "small_unet"
    assert params["registry"]["name"] == SEGMENTATION_MODEL_NAME
    assert next(iter(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])) == "synth"


def test_the_pipeline_trains_evaluates_and_registers_a_model_that_answers_structures(ws: Path) -> None:
    result = run_pipeline(ws)
    assert result["ran"] == ["synth", "ingest", "split", "train", "evaluate", "export", "register"]
    assert (ws / SYNTH_DIR / "train-rle.csv").is_file()  # synth wrote the masks ingest read
    ds = Dataset.open(ws / SPLIT_DATASET)
    assert ds.task == "segmentation" and list(ds.structures) == ["Right Lung", "Left Lung", "Heart"]
    metrics = json.loads((ws / METRICS).read_text())
    assert 0 <= metrics["test_mean_dice"] <= 1 and "test_macro_auroc" not in metrics
    assert json.loads((ws / ROC).read_text()) == {"roc": []}  # no ROC curve for masks
    registration = json.loads((ws / REGISTRATION).read_text())
    assert registration["passed"] is True and registration["name"] == SEGMENTATION_MODEL_NAME
    model = RadflowModel.load(
        f"models:/{SEGMENTATION_MODEL_NAME}@challenger", tracking_uri=resolve_tracking_uri(workspace=ws)
    )
    image = next((ws / SYNTH_DIR / "train").rglob("*.png")).read_bytes()
    answer = model.predict_bytes(image).to_dict()
    assert [s["structure"] for s in answer["structures"]] == ["Right Lung", "Left Lung", "Heart"]


def test_init_refuses_segmentation_of_a_source_without_masks(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", str(tmp_path / "w"), "--source", "nih", "--task", "segmentation"])
    assert result.exit_code == 2 and "--task segmentation needs masks" in result.output
    result = CliRunner().invoke(app, ["init", str(tmp_path / "w"), "--task", "segmentaton"])
    assert result.exit_code == 2 and "segmentation" in result.output
