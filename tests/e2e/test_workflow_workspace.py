"""`radflow init --workflow spine` + `radflow run`: each model step trained by its own DVC pipeline, judged as one.

A tiny workspace (16 spine phantoms at 64 px, two training steps a model): the vertebra step (synth -> ingest ->
split -> fcos_small -> evaluate -> export -> register) and the Schmorl step (crops of the vertebra step's split ->
split -> small_cnn -> ... -> register) run as DVC pipelines in their own folders, both logging into the
workspace's one MLflow store; the workflow stage composes the two new versions, judges them end to end on the
test split (one parent run, a child per step), and promotes both to champion; a changed step param reruns that
step alone and is judged against the champion composition; `radflow serve --workspace` (the app in process)
answers a held-out phantom over HTTP as `radflow workflow predict` does. Two steps learn nothing: what is checked
is the plumbing (held-out crops, one store, pinned versions, promotion, the served answer), not the figures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.errors import ConfigError
from radflow.inference import ServeSettings
from radflow.pipeline import run_pipeline
from radflow.tracking import client, resolve_tracking_uri
from radflow.workflow.glue import LEVEL_SETS
from tests.serve.harness import AppHarness

pytestmark = pytest.mark.slow

TINY = [
    "vertebra.data.synth.n=16",
    "vertebra.data.synth.size=64",
    "vertebra.data.size=64",
    "schmorl.data.size=32",
    "train.epochs=1",
    "train.max_steps=2",
    "train.batch_size=8",
    "train.num_workers=0",
    "train.threads=1",
    "evaluate.n_bootstrap=20",
    "gates.min_macro_auroc=0",  # two steps learn nothing; the gates must still pass
    "gates.max_label_drop=1.0",  # ... and a retrained classifier is compared with the champion, not passed on merit
    "gates.min_map50=0",
    "gates.min_positives=1",
    "gates.min_negatives=1",
    "split.val=0.25",
    "split.test=0.25",
    "export.opset=17",
]
STEPS = ("synth", "ingest", "split", "train", "evaluate", "export", "register")


def test_the_spine_workspace_trains_each_step_in_its_pipeline_and_promotes_the_judged_composition(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "spine"
    args = ["init", str(ws), "--workflow", "spine", "--json"]
    for item in TINY:
        args += ["-S", item]
    made = CliRunner().invoke(app, args)
    assert made.exit_code == 0, made.output
    stages = json.loads(made.stdout)["stages"]
    assert stages[-1] == "workflow" and "steps/schmorl/dvc.yaml:crops" in stages

    result = run_pipeline(ws)
    vertebra = [f"steps/vertebra/dvc.yaml:{s}" for s in STEPS]
    schmorl = [f"steps/schmorl/dvc.yaml:{s}" for s in ("crops", *STEPS[2:])]
    assert result["ran"] == [*vertebra, *schmorl, "workflow"], result["ran"]
    judged = result["workflow"]
    assert result["gates_passed"] and judged["passed"] and judged["steps_passed"]
    versions = {"spine-vertebrae": "1", "spine-schmorl": "1"}
    assert judged["versions"] == versions and judged["promoted"] == versions
    assert judged["counts"]["truth_boxes"] == judged["counts"]["images"] * 6  # T12..L5 on every test image
    assert result["steps"]["steps/schmorl"]["name"] == "spine-schmorl"

    # Held-out images gave held-out crops: every crop sits in its source image's split.
    images = Dataset.open(ws / "steps/vertebra/data/split").manifest.set_index("image_id")["split"]
    crops = Dataset.open(ws / "steps/schmorl/data/split").manifest
    assert len(crops) > 0 and "test" in set(crops["split"])
    import pandas as pd

    where = pd.read_parquet(ws / "steps/schmorl/data/split/crops.parquet").set_index("image_id")["source_image_id"]
    assert all(images[where[c]] == s for c, s in zip(crops["image_id"], crops["split"], strict=True))

    # One store for the whole workspace: both models, their champions, the workflow's parent run and children.
    uri = resolve_tracking_uri(workspace=ws)
    assert not (ws / "steps/vertebra/mlflow.db").exists() and not (ws / "steps/schmorl/mlflow.db").exists()
    mlflow = client(uri)
    for name, version in versions.items():
        assert str(mlflow.get_model_version_by_alias(name, "champion").version) == version
    parent = mlflow.get_run(judged["parent_run_id"])
    assert parent.data.tags["radflow.workflow.verdict"] == "passed"
    children = mlflow.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    pinned = {c.data.tags.get("radflow.workflow.model_name"): c.data.tags.get("radflow.workflow.model_version")
              for c in children if "radflow.workflow.model_name" in c.data.tags}  # fmt: skip
    assert pinned == versions

    # Nothing changed: the next run starts no DVC and keeps the verdict.
    again = run_pipeline(ws)
    assert again["ran"] == [] and again["gates_passed"] and again["seconds"] < 2

    # One step's param changed: that step retrains from its train stage on, the workflow is judged again against
    # the champion composition (max_drop) and the new classifier alone is promoted. A root key changes nothing
    # any stage reads, so it is refused naming the steps.
    with pytest.raises(ConfigError, match=r"name the step: -S STEP\.train\.lr"):
        run_pipeline(ws, ["train.lr=0.002"])
    second = run_pipeline(ws, ["schmorl.train.lr=0.002"])
    assert second["ran"] == [*schmorl[2:], "workflow"], second["ran"]
    judged = second["workflow"]
    assert judged["versions"] == {"spine-vertebrae": "1", "spine-schmorl": "2"}
    assert judged["champions_before"] == versions and [c["metric"] for c in judged["max_drop"]] == ["detection_recall"]
    assert judged["passed"] and judged["promoted"] == {"spine-schmorl": "2"}, judged["steps"]
    assert "lr: 0.002" in (ws / "steps/schmorl/params.yaml").read_text()

    # The workspace's workflow answers a held-out phantom through the champions (torch-free, as the server runs
    # it), and `radflow serve --workspace` answers it the same over HTTP (the app in process): per-vertebra results
    # named by level, each model step's logged rows.
    dicom = held_out_files(ws / "steps/vertebra", "*.dcm")[0]
    answered = CliRunner().invoke(app, ["workflow", "predict", "spine", str(dicom), "-w", str(ws), "--json"])
    assert answered.exit_code == 0, answered.output
    here = json.loads(answered.stdout)["answers"][0]["answer"]
    harness = AppHarness(ServeSettings(workspace=ws, auth="off"))
    try:
        listed = harness.request("GET", "/v1/workflows")
        served = harness.request("POST", "/v1/workflows/spine/predict", files={"file": ("x.dcm", dicom.read_bytes())})
    finally:
        harness.close()
    assert listed.status_code == 200, listed.text
    (spine,) = [w for w in listed.json()["workflows"] if w["name"] == "spine"]
    assert spine["ready"] and spine["endpoint"] == "/v1/workflows/spine/predict"
    models = [s["model"] for s in spine["steps"] if s["action"] == "model"]
    assert models == ["models:/spine-vertebrae/1", "models:/spine-schmorl/2"]  # the champions, resolved
    assert served.status_code == 200, served.text
    got = served.json()
    assert got["found"] and [s["name"] for s in got["steps"]] == [s["name"] for s in here["steps"]]
    for a, b in zip(got["steps"], here["steps"], strict=True):
        assert a["output"] == b["output"] and a.get("model") == b.get("model"), a["name"]  # same boxes and scores
    assert got["answer"] == here["answer"]
    steps = {s["name"]: s for s in got["steps"]}
    crops = got["answer"]["crops"]
    assert crops and len(steps["detect"]["prediction_ids"]) == 1
    assert len(steps["schmorl"]["prediction_ids"]) == len(crops)
    assert all(c["findings"][0]["label"] == "schmorl" for c in crops)
    # counted up from the lowest box: the bottom six named T12..L5, any box above them unnamed
    levels = [c["level"] for c in sorted(crops, key=lambda c: c["source"]["box"][1] + c["source"]["box"][3])]
    spine_levels = LEVEL_SETS["spine"]  # the workflow's `levels: spine`
    named = list(spine_levels[-min(len(crops), len(spine_levels)) :])
    assert levels[len(levels) - len(named) :] == named and not any(levels[: len(levels) - len(named)])


def held_out_files(step: Path, pattern: str) -> list[Path]:
    """A step's test-split source files (the manifest's sha256 is that of each file's bytes), sorted."""
    manifest = Dataset.open(step / "data/split").manifest
    test = set(manifest.loc[manifest["split"] == "test", "sha256"])
    found = sorted(p for p in (step / "data/raw").rglob(pattern) if hashlib.sha256(p.read_bytes()).hexdigest() in test)
    assert found, f"no test-split {pattern} under {step}"
    return found
