"""``radflow loop`` end to end: a real server collects predictions and reader feedback, the loop retrains on it.

The shared tiny demo workspace (tests/pipeline/tiny.py: the demo made v1 and promoted it to
champion), served by a real ``radflow serve``; the README's sequence follows: ``radflow simulate``
(the clinic's new patients, with ground-truth feedback), again with drift, ``radflow feedback
export``, and one loop. No exported film may be a held-out one (or a near-duplicate, or a held-out
patient's), and the loop must give a new data version, a new version gated against v1 on the
unchanged test split, lineage that shows it, and a canary on the running server. The tests run in
file order; tests/e2e/test_workspace.py goes on in the same workspace afterwards.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.neardup import NearDuplicateIndex
from radflow.loop import run_loop
from radflow.pipeline import show_lineage
from radflow.pipeline.dvc_yaml import SPLIT_DATASET
from radflow.pipeline.lineage import lock_hashes
from radflow.sim.clinic import build_clinic_pool
from radflow.tracking import resolve_tracking_uri
from tests.pipeline.tiny import latest_version, tiny_demo
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "loop-test-token"


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = tiny_demo(tmp_path_factory.getbasetemp())
    assert demo.exit_code == 0, demo.output
    return demo.workdir


@pytest.fixture(scope="module")
def server(ws: Path) -> Any:
    proc = ServerProcess(
        ["--workspace", str(ws)], env={"RADFLOW_ADMIN_TOKEN": TOKEN}, log=ws.parent / "server.log"
    ).start(timeout=120)
    yield proc
    proc.kill()


DRIFT = "brightness=0.3,contrast=0.7,noise=0.05,blur=1.5"


def _cli(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_feedback_from_a_real_server_becomes_v2_on_the_same_test_split(
    ws: Path, server: ServerProcess, state: dict[str, Any]
) -> None:
    # The README's sequence: simulate (default) -> simulate with --drift -> feedback export -> loop.
    split = ws / SPLIT_DATASET
    traffic = ["simulate", server.url, "--data", str(split), "--rate", "10", "--duration", "2"]
    traffic += ["--feedback-rate", "1", "--clinic-images", "30", "--seed", "3"]
    plain = _cli(*traffic)
    drifted = _cli(*traffic, "--drift", DRIFT)
    for summary in (plain, drifted):
        assert summary["source"] == "clinic" and summary["warnings"] == [] and summary["feedback_posted"] > 0
    exported = _cli("feedback", "export", "--workspace", str(ws), "--out", str(ws.parent / "export"))
    assert exported["screen"]["dataset"] == str(split) and exported["images"] > 0

    # No exported image is (nearly) a held-out image, and none comes from a held-out patient.
    ds = Dataset.open(split)
    held = ds.manifest["split"].isin(["val", "test"]).to_numpy()
    held_out = NearDuplicateIndex(ds.images(np.flatnonzero(held)))
    pool = build_clinic_pool(ds, 30, seed=3).dataset  # what the simulator sent (the same seed, the same pool)
    pool_index = NearDuplicateIndex(pool.images(pool.indices("all")), threshold=0)
    held_patients = set(ds.manifest.loc[held, "patient_id"])
    with (ws.parent / "export" / "train.csv").open(newline="") as fh:
        paths = [ws.parent / row["Path"] for row in csv.DictReader(fh)]
    traced = 0
    for path in paths:
        pixels = np.asarray(Image.open(path))
        assert held_out.find(pixels) is None, path
        source = pool_index.find(pixels)
        if source is not None and source.exact:  # an undrifted film: its clinic patient is known
            traced += 1
            assert pool.manifest["patient_id"].iloc[source.row] not in held_patients
    assert traced >= 1 and len(paths) == exported["images"]

    before_loop = latest_version(ws)
    result = run_loop(ws, canary=0.25, serve_url=server.url, admin_token=TOKEN)
    state["result"] = result
    n = result["export"]["images"]
    assert n == exported["images"] and result["export"]["held_out"] == exported["held_out"]
    assert result["rows_added"] == n
    assert result["run"]["ran"] == ["ingest", "split", "train", "evaluate", "export", "register"]
    before, after = result["dataset"]["before"], result["dataset"]["after"]
    assert before["version"] != after["version"] and after["images"] == before["images"] + n
    assert result["test_split_unchanged"] and before["held_out_version"] == after["held_out_version"]
    manifest = Dataset.open(ws / SPLIT_DATASET).manifest
    assert set(manifest.loc[manifest["split"] == "test", "sha256"]) == set(
        ds.manifest.loc[ds.manifest["split"] == "test", "sha256"]
    )
    assert set(manifest.loc[manifest["official_split"] == "extra", "split"]) == {"train"}
    reg = result["registration"]
    new = str(before_loop + 1)
    state["version"] = new
    assert result["new_version"] and reg["version"] == new and reg["passed"] and reg["alias"] == "challenger"
    assert reg["champion"] == "1"  # the demo's champion
    # gated against v1, not skipped: labels with enough test cases are compared, the others named as not gated
    assert [c for c in reg["checks"] if "vs champion v1" in c] or reg["not_gated"], reg
    assert not any("skipped" in note for note in reg["notes"])
    canary = result["canary"]
    assert canary["started"] and canary["challenger"] == f"models:/chest-xray/{new}"
    routing = httpx.get(f"{server.url}/admin/routing", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert routing["challenger"]["version"] == new and routing["champion"]["version"] == "1", routing
    assert routing["challenger_weight"] == 0.25


def test_lineage_shows_the_new_data_version(ws: Path, state: dict[str, Any]) -> None:
    result = state["result"]
    lineage = show_lineage(f"models:/chest-xray/{state['version']}", resolve_tracking_uri(workspace=ws))
    assert lineage["dataset"]["version"] == result["dataset"]["after"]["version"]
    assert lineage["dataset"]["held_out_version"] == result["dataset"]["before"]["held_out_version"]
    n = result["export"]["images"]
    assert lineage["dataset"]["extra_train_images"] == n and lineage["dataset"]["extra_sources"] == ["data/feedback"]
    assert lineage["data_hashes"][".dvc"]["data/feedback"] == result["data_version"]["md5"]
    assert lineage["data_hashes"]["ingest"] == lock_hashes(ws)["ingest"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    assert lineage["git"]["commit"] == result["data_version"]["commit"] == head and not lineage["git"]["dirty"]
    v1 = show_lineage("models:/chest-xray/1", resolve_tracking_uri(workspace=ws))
    assert v1["dataset"]["version"] == result["dataset"]["before"]["version"]


def test_a_second_loop_without_new_feedback_changes_nothing(ws: Path, state: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["loop", "--workspace", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["rows_added"] == 0 and again["data_version"]["commit"] is None
    assert again["run"]["ran"] == [] and not again["new_version"]
    result = CliRunner().invoke(app, ["loop", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    n = state["result"]["export"]["images"]
    assert f"{n} images exported" in text and "+0 feedback rows" in text and "test split unchanged" in text
    assert "held-out images excluded:" in text and "val and test images of" in text  # what it refused, and why
    assert "no new model version" in text
    result = CliRunner().invoke(app, ["loop", "--workspace", str(ws), "--canary", "10"])
    assert result.exit_code == 2 and "--serve-url" in result.output
