"""Detection end to end through the CLI: phantom boxes -> dataset -> FCOS -> evaluation -> gates -> ONNX -> boxes.

``radflow synth chest --boxes`` writes phantom radiographs with COCO boxes of their drawn findings,
``ingest --format coco-boxes`` and ``split`` make a detection dataset, ``train --arch fcos_small``
takes two steps and ends with its test evaluation (mAP50, FROC CPM, the FROC figure and each image's
boxes for the paired comparison), ``register`` gates it (``gates.min_map50=0``: two steps on 12
images find nothing), once promoted a second version is compared with it on the same test images, and the
exported model answers boxes through the runtime. Real components throughout; only the sizes are tiny.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.runtime import RadflowModel
from radflow.tracking import client as mlflow_client
from tests.export.checkpoints import png_bytes

pytestmark = pytest.mark.slow

TINY = ("-S", "train.max_steps=2", "-S", "evaluate.n_bootstrap=10", "-S", "evaluate.pdf=false")


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_phantom_boxes_train_evaluate_register_export_and_answer_boxes(tmp_path: Path) -> None:
    src, ds, uri = tmp_path / "src", tmp_path / "ds", f"sqlite:///{tmp_path / 'mlflow.db'}"
    synth = _cli("synth", "chest", str(src), "--n", "24", "--size", "64", "--boxes", "--workers", "1")
    assert synth["boxes"]["file"] == "annotations.json" and sum(synth["boxes"]["counts"].values()) > 0
    ingested = _cli("ingest", str(src), "--format", "coco-boxes", "--out", str(ds), "--size", "64", "--workers", "1")
    assert ingested["task"] == "detection"
    _cli("split", str(ds), "--val", "0.25", "--test", "0.25")
    labels = Dataset.open(ds).labels

    args = ("train", str(ds), "--arch", "fcos_small", "--epochs", "1", "--batch-size", "4", "--loader-workers", "0")
    first = _cli(*args, "--tracking-uri", uri, "--out-dir", str(tmp_path / "ck"), *TINY)
    evaluation = first["evaluation"]
    headline = evaluation["headline"]
    for key in ("test_map50", "test_map", "test_froc_cpm", "test_image_auroc"):
        assert headline[key] is not None and 0 <= headline[key] <= 1, key
    assert {f"test_ap50_{label.replace(' ', '_')}" for label in labels} <= set(headline)
    assert "froc.png" in evaluation["plots"]

    gate = ("-S", "gates.min_map50=0")
    v1 = _cli("register", first["run_id"], "--name", "det", "--tracking-uri", uri, *gate)
    assert v1["passed"], v1["failures"]
    tags = mlflow_client(uri).get_model_version("det", "1").tags  # the headline copied onto the version
    assert {"test_map50", "test_map", "test_froc_cpm", "test_image_auroc"} <= set(tags)
    _cli("promote", "det", "1", "--tracking-uri", uri)
    # The champion comparison reads both runs' per-image boxes (here the same run registered again, so no
    # second training): a paired mAP50 test on the same test images, whose difference is exactly 0.
    v2 = _cli("register", first["run_id"], "--name", "det", "--tracking-uri", uri, *gate)
    paired = [c for c in v2["checks"] if c["gate"] == "max_map_drop"]
    assert paired and "on the same" in paired[0]["message"], (v2["checks"], v2["notes"])
    assert paired[0]["comparison"]["diff"] == 0 and v2["passed"]

    out = tmp_path / "model.onnx"
    exported = _cli("export", "models:/det/1", "--out", str(out), "--tracking-uri", uri)
    assert exported["metadata"]["task"] == "detection" and exported["reference"] is not None
    image = Dataset.open(ds).images([0])[0]
    answer = RadflowModel.load(out, threads=1).predict_bytes(png_bytes(image)).to_dict()
    assert "boxes" in answer and all(box["label"] in labels for box in answer["boxes"])
