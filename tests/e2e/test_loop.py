"""``radflow loop`` end to end: a real server collects predictions and reader feedback, the loop retrains on it.

One tiny workspace of its own (the shared ``tiny_demo`` one is left as other tests expect it): the
pipeline makes v1, v1 becomes champion and is served by a real ``radflow serve``; phantom films from
another "clinic" are posted to it and labelled through ``POST /v1/feedback``; then one loop must
give a new data version, a v2 gated against v1 on the unchanged test split, lineage that shows
it, and a canary on the running server. The tests run in file order.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset
from radflow.data.ingest import SALT_FILE, source_paths
from radflow.data.synth import synth_chest
from radflow.demo import DemoConfig
from radflow.loop import run_loop
from radflow.pipeline import init_workspace, run_pipeline, show_lineage
from radflow.pipeline.dvc_yaml import SPLIT_DATASET
from radflow.pipeline.lineage import lock_hashes
from radflow.pipeline.run import parse_sets
from radflow.registry import promote
from radflow.tracking import resolve_tracking_uri
from tests.pipeline.tiny import TINY_SETS
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "loop-test-token"
LABELS = list(DemoConfig(workdir=Path(".")).labels)


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loop") / "ws"
    overrides = {
        "data.synth.n": 60,
        "data.synth.size": 96,
        "data.size": 32,
        "data.labels": LABELS,
        "train.epochs": 1,
        **parse_sets(list(TINY_SETS)),
        "gates.max_label_drop": 1.0,  # one epoch on 60 images is noise; the comparison must run, not pass on merit
        "gates.min_positives": 1,  # a test split of ~10 images: compare every label that has both classes
        "gates.min_negatives": 1,
    }
    init_workspace(root, "synthetic", overrides=overrides)
    first = run_pipeline(root)
    assert first["registration"]["version"] == "1", first
    promote("chest-xray", "1", tracking_uri=resolve_tracking_uri(workspace=root))
    return root


@pytest.fixture(scope="module")
def server(ws: Path) -> Any:
    proc = ServerProcess(
        ["--workspace", str(ws)], env={"RADFLOW_ADMIN_TOKEN": TOKEN}, log=ws.parent / "server.log"
    ).start(timeout=120)
    yield proc
    proc.kill()


def _clinic(tmp: Path) -> list[tuple[Path, dict[str, int]]]:
    """Phantom films from another seed (new patients), with their true labels for the demo's findings."""
    out = tmp / "CheXpert-clinic"
    synth_chest(out, 12, seed=77, size=96, workers=1)
    films = []
    with (out / "train.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            labels = {label: int(float(row[label] or 0) == 1) for label in LABELS}
            films.append((out.parent / row["Path"], labels))
    return films


def test_feedback_from_a_real_server_becomes_v2_on_the_same_test_split(
    ws: Path, server: ServerProcess, state: dict[str, Any]
) -> None:
    films = _clinic(ws.parent)[:8]
    test_rows = Dataset.open(ws / SPLIT_DATASET).manifest
    located = source_paths(ws / SALT_FILE)
    test_film = next(
        located[key]
        for key, split in zip(test_rows["source_key"], test_rows["split"], strict=True)
        if split == "test" and located[key].suffix == ".png"
    )
    test_before = set(test_rows.loc[test_rows["split"] == "test", "sha256"])
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for i, (path, labels) in enumerate([*films, (films[0][0], films[0][1]), (test_film, {LABELS[0]: 1})]):
            answer = http.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
            assert answer.status_code == 200, answer.text
            body = {"prediction_id": answer.json()["id"], "labels": labels}
            assert http.post("/v1/feedback", json=body).status_code == 201, i
    result = run_loop(ws, canary=0.25, serve_url=server.url, admin_token=TOKEN)
    state["result"] = result
    exported = result["export"]
    assert exported["images"] == 8  # 10 answers: one film sent twice, and a test film that must not come back
    assert exported["skipped"]["in_dataset"] == 1 and exported["duplicates_merged"] == 1
    assert result["rows_added"] == 8
    assert result["run"]["ran"] == ["ingest", "split", "train", "evaluate", "export", "register"]
    before, after = result["dataset"]["before"], result["dataset"]["after"]
    assert before["version"] != after["version"] and after["images"] == before["images"] + 8
    assert result["test_split_unchanged"] and before["held_out_version"] == after["held_out_version"]
    manifest = Dataset.open(ws / SPLIT_DATASET).manifest
    assert set(manifest.loc[manifest["split"] == "test", "sha256"]) == test_before
    assert set(manifest.loc[manifest["official_split"] == "extra", "split"]) == {"train"}
    reg = result["registration"]
    assert result["new_version"] and reg["version"] == "2" and reg["passed"] and reg["alias"] == "challenger"
    assert reg["champion"] == "1"
    assert any("vs champion v1" in check for check in reg["checks"])  # gated against v1, not skipped
    assert not any("skipped" in note for note in reg["notes"])
    canary = result["canary"]
    assert canary["started"] and canary["challenger"] == "models:/chest-xray/2"
    routing = httpx.get(f"{server.url}/admin/routing", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert routing["challenger"]["version"] == "2" and routing["champion"]["version"] == "1", routing
    assert routing["challenger_weight"] == 0.25


def test_lineage_shows_the_new_data_version(ws: Path, state: dict[str, Any]) -> None:
    result = state["result"]
    lineage = show_lineage("models:/chest-xray/2", resolve_tracking_uri(workspace=ws))
    assert lineage["dataset"]["version"] == result["dataset"]["after"]["version"]
    assert lineage["dataset"]["held_out_version"] == result["dataset"]["before"]["held_out_version"]
    assert lineage["dataset"]["extra_train_images"] == 8 and lineage["dataset"]["extra_sources"] == ["data/feedback"]
    assert lineage["data_hashes"][".dvc"]["data/feedback"] == result["data_version"]["md5"]
    assert lineage["data_hashes"]["ingest"] == lock_hashes(ws)["ingest"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    assert lineage["git"]["commit"] == result["data_version"]["commit"] == head and not lineage["git"]["dirty"]
    v1 = show_lineage("models:/chest-xray/1", resolve_tracking_uri(workspace=ws))
    assert v1["dataset"]["version"] == result["dataset"]["before"]["version"]


def test_a_second_loop_without_new_feedback_changes_nothing(ws: Path) -> None:
    result = CliRunner().invoke(app, ["loop", "--workspace", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["rows_added"] == 0 and again["data_version"]["commit"] is None
    assert again["run"]["ran"] == [] and not again["new_version"]
    result = CliRunner().invoke(app, ["loop", "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "8 images exported" in text and "+0 feedback rows" in text and "test split unchanged" in text
    assert "no new model version" in text
    result = CliRunner().invoke(app, ["loop", "--workspace", str(ws), "--canary", "10"])
    assert result.exit_code == 2 and "--serve-url" in result.output
