"""`radflow init --workflow bone-age` + `radflow run`: segment the hand, cut it at its mask, regress the age, served.

A tiny workspace (12 hand phantoms at 32 px, one patient each: 6 train, 3 val, 3 test): the hand step (synth with
masks -> masks ingest -> split -> small_unet -> evaluate -> export -> register `boneage-hand`) and the age step
(the hand step's split cut at each hand's true mask, labelled with its bone age and sex -> split -> small_cnn
regression -> ... -> register `boneage-age`); the workflow stage judges the composition against the per-image
bone ages (``evaluation: values``: MAE) and promotes both. The spine test (test_workflow_workspace.py) proves the
mechanism (step pipelines, one store, no-op reruns, a refused root key); this one what bone age adds: crops by
mask, a regression taking the child's sex, the values evaluation, ``max_drop`` on an error (a rise of MAE), and
the served answer: a bone age in months from the regression on the crop the segmentation's mask gave.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.decode import decode_image
from radflow.inference import ServeSettings
from radflow.pipeline import run_pipeline
from radflow.runtime import RadflowModel, sex_feature
from radflow.tracking import client, resolve_tracking_uri
from tests.e2e.test_workflow_workspace import STEPS, held_out_files
from tests.serve.harness import AppHarness

pytestmark = pytest.mark.slow

TINY = [
    "hand.data.synth.n=12",  # the fewest that leave each split 3+ patients at 0.25/0.25
    "hand.data.synth.size=32",
    "hand.data.size=32",
    "age.data.size=32",
    "train.epochs=1",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.threads=1",
    "age.train.max_steps=2",
    # The hand must be found on every test image (the workflow's min_answered gate): ~40 steps of 2 images at
    # 32 px, a few seconds, give test Dice ~0.9; two steps find no hand at all.
    "hand.train.epochs=20",
    "hand.train.batch_size=2",
    "hand.train.lr=0.01",
    "evaluate.n_bootstrap=20",
    "evaluate.pdf=false",
    "gates.min_mean_dice=0",
    "gates.max_mae_increase=1000",  # two steps learn no age: a retrained regressor must still pass its gate ...
    "workflow_stage.max_drop.mae=1000",  # ... and the composition's: the rise is measured, the limit left open
    "split.val=0.25",
    "split.test=0.25",
    "export.opset=17",
]
RAW = "steps/hand/data/raw/boneage-phantom"


def test_the_bone_age_workspace_cuts_by_mask_regresses_with_sex_judges_mae_and_serves_months(tmp_path: Path) -> None:
    ws = tmp_path / "bone-age"
    args = ["init", str(ws), "--workflow", "bone-age", "--json"]
    for item in TINY:
        args += ["-S", item]
    made = CliRunner().invoke(app, args)
    assert made.exit_code == 0, made.output

    result = run_pipeline(ws)
    hand = [f"steps/hand/dvc.yaml:{s}" for s in STEPS]
    age = [f"steps/age/dvc.yaml:{s}" for s in ("crops", *STEPS[2:])]
    assert result["ran"] == [*hand, *age, "workflow"], result["ran"]
    judged = result["workflow"]
    versions = {"boneage-hand": "1", "boneage-age": "1"}
    assert judged["passed"] and judged["steps_passed"], judged
    assert judged["versions"] == versions and judged["promoted"] == versions

    # The age step's dataset: one crop per hand image, a regression on the table's bone age with the child's sex
    # (the `male` field), in its image's split.
    table = pd.read_csv(ws / RAW / "boneage-training-dataset.csv").set_index("id")
    ids = {hashlib.sha256(p.read_bytes()).hexdigest(): int(p.stem) for p in (ws / RAW).glob("boneage-*/*.png")}
    images = Dataset.open(ws / "steps/hand/data/split").manifest.set_index("image_id")
    crops = Dataset.open(ws / "steps/age/data/split")
    assert crops.task == "regression" and crops.labels == ["boneage"]
    source = pd.read_parquet(ws / "steps/age/data/split/crops.parquet").set_index("image_id")["source_image_id"]
    rows = crops.manifest.set_index("image_id")
    assert len(rows) == len(images)
    for crop, row in rows.iterrows():
        image = images.loc[source[crop]]
        truth = table.loc[ids[image["sha256"]]]
        assert row["boneage"] == truth["boneage"] and row["sex"] == ("M" if truth["male"] else "F")
        assert row["split"] == image["split"] and row["patient_id"] == image["patient_id"]

    # Judged end to end on the hand step's test split against the per-image ages: every hand found, the MAE
    # logged on the parent run, a child per step pinned to the version it judged.
    test = images[images["split"] == "test"]
    assert judged["counts"] == {"images": len(test), "patients": len(test), "answered": len(test), "skipped_images": 0}
    metrics = judged["metrics"]
    assert metrics["answered"] == 1.0 and metrics["mae"] > 0 and metrics["mae"] >= abs(metrics["bias"])
    uri = resolve_tracking_uri(workspace=ws)
    mlflow = client(uri)
    for name, version in versions.items():
        assert str(mlflow.get_model_version_by_alias(name, "champion").version) == version
    parent = mlflow.get_run(judged["parent_run_id"])
    assert parent.data.tags["radflow.workflow.verdict"] == "passed"
    assert parent.data.metrics["mae"] == pytest.approx(metrics["mae"])
    children = mlflow.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    pinned = {c.data.tags.get("radflow.workflow.model_name"): c.data.tags.get("radflow.workflow.model_version")
              for c in children if "radflow.workflow.model_name" in c.data.tags}  # fmt: skip
    assert pinned == versions

    # The age step retrained alone: the new regressor is judged with the champion hand model against the champion
    # composition on the same images, MAE compared as an error (its rise is the drop), and promoted alone.
    second = run_pipeline(ws, ["age.train.epochs=2"])
    assert second["ran"] == [*age[2:], "workflow"], second["ran"]
    rejudged = second["workflow"]
    assert rejudged["versions"] == {"boneage-hand": "1", "boneage-age": "2"}
    assert rejudged["champions_before"] == versions
    assert rejudged["champion_metrics"]["mae"] == pytest.approx(metrics["mae"])  # the champions, as first judged
    (check,) = rejudged["max_drop"]
    new_mae = rejudged["metrics"]["mae"]
    assert check["metric"] == "mae" and check["drop"] == pytest.approx(new_mae - metrics["mae"]) and check["passed"]
    assert "(an error: lower is better)" in check["message"]
    assert rejudged["passed"] and rejudged["promoted"] == {"boneage-age": "2"}, rejudged

    # Served over HTTP (`radflow serve --workspace`, the app in process): each held-out hand answered in months
    # by the new champion regression on the crop the segmentation's mask gave, with the child's sex (?sex=), as
    # `radflow workflow predict --sex` answers it; over the test split the served ages give the judged MAE.
    held_out = held_out_files(ws / "steps/hand", "*.png")
    sexes = ["M" if table.loc[int(p.stem), "male"] else "F" for p in held_out]
    cli = CliRunner().invoke(app, ["workflow", "predict", "bone-age", str(held_out[0]), "-w", str(ws), "--sex",
                                   sexes[0], "--json"])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    here = json.loads(cli.stdout)["answers"][0]["answer"]
    harness = AppHarness(ServeSettings(workspace=ws, auth="off"))
    try:
        listed = harness.request("GET", "/v1/workflows").json()["workflows"]
        served = []
        for path, sex in zip(held_out, sexes, strict=True):
            got = harness.request("POST", f"/v1/workflows/bone-age/predict?sex={sex}", content=path.read_bytes())
            assert got.status_code == 200, got.text
            served.append(got.json())
    finally:
        harness.close()
    (workflow,) = [w for w in listed if w["name"] == "bone-age"]
    assert workflow["ready"] and [s["model"] for s in workflow["steps"] if s["action"] == "model"] == [
        "models:/boneage-hand/1",
        "models:/boneage-age/2",
    ]
    first = served[0]
    assert [(s["name"], s["output"]) for s in first["steps"]] == [(s["name"], s["output"]) for s in here["steps"]]
    steps = {s["name"]: s for s in first["steps"]}
    assert steps["age"]["model"]["uri"] == "models:/boneage-age/2" and len(steps["age"]["prediction_ids"]) == 1
    assert len(steps["hand"]["prediction_ids"]) == 1
    (hand_mask,) = steps["hand"]["output"]["structures"]
    (cut,) = steps["crop"]["output"]["crops"]
    assert cut["source"] == {"structure": "Hand", "bbox": hand_mask["bbox"]}  # cut at the answered mask's extent
    value = first["answer"]["prediction"]
    assert value["unit"] == "months" and first["answer"]["crops"][0]["box"] == cut["box"]
    # the regression alone on that cut, with that sex, gives the served months
    regressor = RadflowModel.load("models:/boneage-age/2", tracking_uri=uri, threads=1)
    x0, y0, x1, y1 = cut["box"]
    pixels = decode_image(held_out[0].read_bytes()).pixels[y0:y1, x0:x1]
    (alone,) = regressor.predict_batch(regressor.prepare(pixels)[None], sex_feature([sexes[0]]))
    assert alone.value == pytest.approx(value["value"], abs=1e-3)
    truth = table.loc[[int(p.stem) for p in held_out], "boneage"].to_numpy(float)
    months = np.array([a["answer"]["prediction"]["value"] for a in served])
    assert np.mean(np.abs(months - truth)) == pytest.approx(new_mae, abs=1e-3)
