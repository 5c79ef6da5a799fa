"""The annotation loop end to end against a real Label Studio and a real ``radflow serve``.

A copy of the shared tiny demo workspace (tests/pipeline/tiny.py; copied, so the loop tests that follow
see the workspace they expect): ``radflow annotate push`` sends 20 of 30 new phantom patients with the
champion's answers as pre-annotations and connects the running server as the project's ML backend; Label
Studio's calls to it get predictions; the experts' annotations are submitted through Label Studio's API
as the labelling UI submits them, and Label Studio's webhook to the backend makes each one feedback at once;
``radflow annotate pull`` then adds no second row and refuses, by name, a task radflow never pushed;
``radflow loop`` makes a new data version and a gated challenger on the unchanged test split.
Nothing pushed carries PHI: the image is a plain PNG of the shard's pixels.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radflow.annotate import LabelStudio, LabelStudioError, label_config, push
from radflow.annotate.config import ABSENT, PRESENT, finding_control
from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.errors import ConfigError
from radflow.hardware import free_port
from radflow.loop import run_loop
from radflow.pipeline.dvc_yaml import SPLIT_DATASET
from radflow.sim.clinic import build_clinic_pool
from tests.label_studio import TOKEN, label_studio_server
from tests.pipeline.tiny import tiny_demo
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.slow

PROJECT = "radflow e2e chest"
LABELS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion", "Consolidation"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = tiny_demo(tmp_path_factory.getbasetemp())
    assert demo.exit_code == 0, demo.output
    copy = tmp_path_factory.mktemp("annotate") / "workspace"
    shutil.copytree(demo.workdir, copy, symlinks=True)
    # A fresh serving store: other tests (the demo's simulated clinic) may have served the shared workspace.
    for stale in ("serving.db", "serving.db-wal", "serving.db-shm"):
        (copy / stale).unlink(missing_ok=True)
    shutil.rmtree(copy / "inputs", ignore_errors=True)
    # New runs' artifacts go to the copy (MLflow keeps the experiment's artifact folder as an absolute path).
    with sqlite3.connect(copy / "mlflow.db") as db:
        db.execute(
            "update experiments set artifact_location = replace(artifact_location, ?, ?)",
            (str(demo.workdir), str(copy)),
        )
    return copy


@pytest.fixture(scope="module")
def pool(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    clinic = build_clinic_pool(Dataset.open(ws / SPLIT_DATASET), 30, seed=11)
    target = tmp_path_factory.mktemp("annotate-pool") / "pool"
    shutil.copytree(clinic.dataset.root, target)
    return Dataset.open(target)


@pytest.fixture(scope="module")
def servers(ws: Path) -> Any:
    """(Label Studio, radflow serve as its ML backend), started side by side: both spend their start importing."""
    proc = ServerProcess(["--workspace", str(ws)], log=ws.parent / "server.log")
    with ThreadPoolExecutor(1) as pool:
        serving = pool.submit(proc.start, 120)
        ls = label_studio_server()
        serving.result()
    yield ls, proc
    proc.kill()


@pytest.fixture(scope="module")
def ls(servers: tuple[Any, ServerProcess]) -> Any:
    return servers[0]


@pytest.fixture(scope="module")
def server(servers: tuple[Any, ServerProcess]) -> ServerProcess:
    return servers[1]


def _cli(*args: str, code: int = 0) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    return dict(json.loads(result.stdout))


def test_an_unreachable_server_or_a_wrong_token_fails_before_any_work(ls: Any, ws: Path, pool: Dataset) -> None:
    with pytest.raises(LabelStudioError, match="refused the API token"):
        push(ws, pool=pool.root, url=ls.url, token="wrong-token-123", project=PROJECT)
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        push(ws, pool=pool.root, url=f"http://127.0.0.1:{free_port()}", token=TOKEN, project=PROJECT)
    assert not (ws / "serving.db").exists() or _predictions(ws) == 0  # nothing was scored
    with LabelStudio(ls.url, TOKEN) as client:
        assert client.find_project(PROJECT) is None  # nothing was sent


def _predictions(ws: Path) -> int:
    with sqlite3.connect(ws / "serving.db") as db:
        return int(db.execute("select count(*) from predictions").fetchone()[0])


def _feedback(ws: Path) -> int:
    with sqlite3.connect(ws / "serving.db") as db:
        return int(db.execute("select count(*) from feedback where reader like 'label-studio:%'").fetchone()[0])


def _png(task: dict[str, Any]) -> bytes:
    head, _, payload = task["data"]["image"].partition(",")
    assert head == "data:image/png;base64"
    return base64.b64decode(payload)


def test_push_label_pull_and_the_loop_gives_a_new_version(ls: Any, ws: Path, pool: Dataset, server: Any) -> None:
    backend_url = f"{server.url}/label-studio/"
    pushed = _cli("annotate", "push", str(pool.root), "--workspace", str(ws), "--url", ls.url, "--token", TOKEN,
                  "--project", PROJECT, "--n", "20", "--ml-backend", backend_url)  # fmt: skip
    assert pushed["sent"] == 20 and pushed["project"]["created"] and pushed["task"] == "multilabel"
    assert pushed["ml_backend"]["url"] == backend_url
    client = LabelStudio(ls.url, TOKEN)
    pid = pushed["project"]["id"]
    tasks = client.tasks(pid)
    assert len(tasks) == 20

    # Pre-annotations: the champion's answers, tagged with its name/version.
    version = f"{pushed['model']['name']}/{pushed['model']['version']}"
    assert all(t["predictions"] and t["predictions"][0]["model_version"] == version for t in tasks)

    # No PHI: the image is a bare PNG of the pool's pixels; the task names nothing but radflow's own ids.
    manifest = pool.manifest.set_index("image_id")
    identities = set(pool.manifest[["patient_id", "study_id", "source_key"]].astype(str).to_numpy().ravel())
    for task in tasks:
        assert set(task["data"]) == {"image", "radflow_prediction", "radflow_image"}
        assert not identities.intersection(map(str, task["data"].values()))
        png = _png(task)
        with Image.open(io.BytesIO(png)) as im:
            assert im.mode == "L" and not im.info, im.info  # no text chunks, no metadata
            row = pool.manifest.index[pool.manifest["image_id"] == task["data"]["radflow_image"]][0]
            assert np.array_equal(np.asarray(im), pool.image(int(row)))
        assert b"tEXt" not in png and b"iTXt" not in png and b"zTXt" not in png and b"eXIf" not in png

    # Label Studio asks the ML backend (radflow serve) and gets predictions.
    test = client.test_ml_backend(int(pushed["ml_backend"]["id"]))
    answered = test["response"]
    assert len(answered) == 1 and answered[0]["model_version"] == version and answered[0]["result"]
    assert {r["from_name"] for r in answered[0]["result"]} <= {finding_control(label) for label in LABELS}

    # A project made for another task is refused by name, and nothing is sent to it.
    other = client.create_project("radflow e2e boxes", label_config("detection", ["Nodule"]).xml)
    with pytest.raises(ConfigError, match="does not match the multilabel model"):
        push(ws, pool=pool.root, url=ls.url, token=TOKEN, project="radflow e2e boxes", n=1)
    assert client.tasks(int(other["id"])) == []

    # The experts label every task (the phantoms' ground truth) through Label Studio's API, as the UI submits.
    for task in tasks:
        truth = manifest.loc[task["data"]["radflow_image"]]
        result = [
            {"from_name": finding_control(label), "to_name": "image", "type": "choices",
             "value": {"choices": [PRESENT if truth[label] == 1 else ABSENT]}}
            for label in LABELS if not np.isnan(truth[label])
        ]  # fmt: skip
        client.create_annotation(task["id"], result, lead_time=3.0)
    # ... and one task radflow never pushed is labelled too: refused by name, the others still come in.
    client.import_tasks(pid, [{"data": {"image": tasks[0]["data"]["image"]}}])
    stranger = next(t for t in client.tasks(pid) if "radflow_prediction" not in t["data"])
    client.create_annotation(stranger["id"], tasks[0]["predictions"][0]["result"])

    # Label Studio told the ML backend of each annotation (its webhook): already feedback, once each.
    assert _feedback(ws) == 20

    pulled = _cli("annotate", "pull", "--workspace", str(ws), "--url", ls.url, "--token", TOKEN,
                  "--project", PROJECT, code=1)  # fmt: skip
    assert pulled["annotated_tasks"] == 21 and pulled["already_imported"] == 20 and pulled["imported"] == 0
    assert _feedback(ws) == 20  # pulling what the store already says adds no rows
    assert [r["task"] for r in pulled["refused"]] == [stranger["id"]]
    assert "radflow does not know its image" in pulled["refused"][0]["reason"]

    # The loop: the annotations as a new DVC data version (screened against val/test), retrained, gated.
    result = run_loop(ws)
    assert result["export"]["images"] == 20 and sum(result["export"]["held_out"].values()) == 0
    assert result["rows_added"] == 20 and result["test_split_unchanged"]
    before, after = result["dataset"]["before"], result["dataset"]["after"]
    assert result["data_version"]["commit"] and before["version"] != after["version"]
    assert result["new_version"] and result["registration"]["passed"], result["registration"]
    assert result["registration"]["alias"] == "challenger"
