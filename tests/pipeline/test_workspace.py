"""``radflow init`` and the checks that run before any stage: layout, git/DVC setup and clear errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from radflow.cli import app
from radflow.config import load_params
from radflow.errors import ConfigError, NotFoundError
from radflow.pipeline import find_workspace, init_workspace, run_pipeline
from radflow.pipeline.lineage import lock_hashes


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws") / "ws"
    init_workspace(root, "synthetic", overrides={"train.epochs": 1})
    return root


def test_init_makes_a_committed_git_and_dvc_workspace(workspace: Path) -> None:
    assert (workspace / ".git").is_dir() and (workspace / ".dvc").is_dir()
    assert _git(workspace, "status", "--porcelain") == ""  # everything init wrote is committed
    assert len(_git(workspace, "log", "--oneline").splitlines()) == 1
    config = (workspace / ".dvc" / "config").read_text()
    assert "analytics = False" in config and "hardlink,symlink" in config
    assert (workspace / ".dvc-remote").is_dir() and "remote = local" in config
    params = load_params(workspace / "params.yaml")
    assert params.data.source == "synthetic" and params.train.epochs == 1
    assert _git(workspace, "config", "user.email").strip()  # commits (and DVC experiments) have an author


def test_each_stage_declares_only_the_params_it_reads(workspace: Path) -> None:
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["synth", "ingest", "split", "train", "evaluate", "export", "register"]
    assert stages["train"]["params"] == ["train"]
    assert stages["split"]["params"] == ["split"]
    assert not any(p.startswith("train") for s in ("synth", "ingest", "split") for p in stages[s]["params"])
    assert stages["ingest"]["deps"] == stages["synth"]["outs"]
    assert "data/split" in stages["train"]["deps"]
    assert stages["evaluate"]["metrics"] and stages["evaluate"]["plots"]
    assert all(s["cmd"] == f"radflow stage {name}" for name, s in stages.items())


def test_find_workspace_walks_up_and_explains_when_outside(workspace: Path, tmp_path: Path) -> None:
    (workspace / "data").mkdir(exist_ok=True)
    assert find_workspace(workspace / "data") == workspace
    with pytest.raises(NotFoundError, match=r"not inside a radflow workspace.*radflow init"):
        find_workspace(tmp_path)
    result = CliRunner().invoke(app, ["run", "--workspace", str(tmp_path)])
    assert result.exit_code == 2 and "not inside a radflow workspace" in " ".join(result.output.split())


def test_misspelt_params_fail_before_dvc_runs(workspace: Path) -> None:
    params = workspace / "params.yaml"
    good = params.read_text()
    try:
        params.write_text(good.replace("train:", "trian:", 1))
        with pytest.raises(ConfigError, match=r"unknown key 'trian'.*Did you mean 'train'"):
            run_pipeline(workspace)
    finally:
        params.write_text(good)
    with pytest.raises(ConfigError, match=r"'train.epocs'.*Did you mean 'epochs'"):
        run_pipeline(workspace, ["train.epocs=2"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        run_pipeline(workspace, ["train.epochs"])
    assert not (workspace / "dvc.lock").exists()  # nothing ran


def test_init_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'chexpert'"):
        init_workspace(tmp_path / "a", "chexpret")
    with pytest.raises(ConfigError, match="needs --data"):
        init_workspace(tmp_path / "b", "nih")
    with pytest.raises(NotFoundError, match="does not exist"):
        init_workspace(tmp_path / "c", "folder", tmp_path / "missing")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        init_workspace(tmp_path / "d", "synthetic")


def test_real_source_raw_data_is_tracked_by_dvc(tmp_path: Path) -> None:
    src = tmp_path / "images"
    (src / "normal").mkdir(parents=True)
    for i in range(3):
        (src / "normal" / f"{i}.png").write_bytes(bytes([i]) * 64)
    root = tmp_path / "ws"
    info = init_workspace(root, "folder", src)
    assert info["raw_md5"] and info["raw_md5"].endswith(".dir")
    assert lock_hashes(root)[".dvc"] == {"data/raw": info["raw_md5"]}
    assert "data/raw.dvc" in _git(root, "ls-files")  # the pointer is in git, the images are not
    assert "data/raw/normal/0.png" not in _git(root, "ls-files")
    assert (root / "data" / "raw" / "normal" / "2.png").read_bytes() == bytes([2]) * 64
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "synth" not in stages and stages["ingest"]["deps"] == ["data/raw"]


def test_init_json_output_is_only_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", str(tmp_path / "ws"), "--json", "-S", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # DVC's own banner must not land on stdout
    assert info["stages"][0] == "synth" and len(info["commit"]) == 40
    assert load_params(tmp_path / "ws" / "params.yaml").train.epochs == 2


def test_the_first_run_is_committed_as_the_baseline_later_runs_compare_to(tmp_path: Path) -> None:
    """What ``dvc exp run`` leaves after a first run, without running it: HEAD then has the lock and metrics."""
    from radflow.config import Params, params_yaml
    from radflow.pipeline.dvc_yaml import METRICS, REGISTRATION, ROC, TRAIN_METRICS, dvc_yaml
    from radflow.pipeline.workspace import _GITIGNORE, commit_first_run, run_git

    root = tmp_path / "ws"
    root.mkdir()
    run_git(root, "init", "-q")
    run_git(root, "config", "user.name", "t")
    run_git(root, "config", "user.email", "t@localhost")
    (root / "params.yaml").write_text(params_yaml(Params()))
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml(Params())))
    (root / ".gitignore").write_text(_GITIGNORE)
    run_git(root, "add", "-A")
    run_git(root, "commit", "-q", "-m", "init")
    assert commit_first_run(root) is None, "no run yet: nothing to commit"

    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    for rel in (TRAIN_METRICS, METRICS, ROC, REGISTRATION, "models/checkpoints/last.pt", "data/dataset/x"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}")
    (root / "data" / ".gitignore").write_text("/dataset\n")
    (root / "notes.txt").write_text("the user's own file")

    commit = commit_first_run(root)
    assert commit == _git(root, "rev-parse", "HEAD").strip()
    committed = set(_git(root, "show", "--name-only", "--format=", "HEAD").split())
    assert committed == {"dvc.lock", TRAIN_METRICS, METRICS, ROC, REGISTRATION, "data/.gitignore"}
    assert "notes.txt" in _git(root, "status", "--porcelain"), "only the run's results are committed"
    (root / METRICS).write_text('{"test_macro_auroc": 0.9}')  # a later run: an experiment, not a commit
    assert commit_first_run(root) is None


def test_task_params_start_a_segmentation_workspace_from_masks_and_refuse_a_source_without_them() -> None:
    from radflow.config import Params
    from radflow.pipeline.workspace import SEGMENTATION_MODEL_NAME, task_params

    found = task_params("segmentation", "synthetic")
    assert found == {"train.arch": "small_unet", "registry.name": SEGMENTATION_MODEL_NAME, "data.synth.masks": True}
    params = Params.model_validate({"data": {"source": "synthetic"}}).with_overrides(found)
    assert params.data.format == "masks"  # synth writes the masks beside the images; ingest reads them
    assert task_params(None, "siim") == {"train.arch": "small_unet", "registry.name": SEGMENTATION_MODEL_NAME}
    assert task_params(None, "synthetic") == task_params("multilabel", "chexpert") == {}
    with pytest.raises(ConfigError, match="--task segmentation needs masks: --source synthetic or siim or masks"):
        task_params("segmentation", "nih")
    with pytest.raises(ConfigError, match="segmentation"):
        task_params("segmentaton", "synthetic")
    with pytest.raises(ConfigError, match="holds masks"):
        task_params("multilabel", "masks")


def test_task_params_start_a_detection_workspace_from_phantom_boxes() -> None:
    from radflow.config import Params, validate_params
    from radflow.pipeline.stages import STAGE_FUNCTIONS
    from radflow.pipeline.workspace import DETECTION_MODEL_NAME, task_params

    found = task_params("detection", "synthetic")
    assert found == {"train.arch": "fcos_small", "registry.name": DETECTION_MODEL_NAME, "data.synth.boxes": True}
    params = Params.model_validate({"data": {"source": "synthetic"}}).with_overrides(found)
    assert params.data.format == "coco-boxes"  # synth writes annotations.json beside the images
    assert "synth" in STAGE_FUNCTIONS
    with pytest.raises(ConfigError, match=r"--task detection builds a workspace on phantom boxes.*--format rsna-boxes"):
        task_params("detection", "chexpert")
    with pytest.raises(ConfigError, match=r"params.yaml.*masks \(segmentation\) or boxes \(detection\), not both"):
        validate_params({"data": {"synth": {"masks": True, "boxes": True}}}, "params.yaml")


def test_the_synth_and_ingest_stages_of_a_detection_workspace_make_a_box_dataset(tmp_path: Path) -> None:
    from radflow.data.dataset import Dataset
    from radflow.pipeline.dvc_yaml import DATASET, SYNTH_DIR
    from radflow.pipeline.stages import run_stage
    from radflow.pipeline.workspace import init_workspace

    ws = tmp_path / "ws"
    tiny = {"data.synth.n": 12, "data.synth.size": 48, "data.size": 32}
    init_workspace(ws, "synthetic", task="detection", overrides=tiny)
    run_stage("synth", ws)
    assert (ws / SYNTH_DIR / "annotations.json").is_file()
    info = run_stage("ingest", ws)
    ds = Dataset.open(ws / DATASET)
    assert ds.task == "detection" and info["counts"]["images"] == 12 and len(ds.box_table()) > 0
