"""``radflow score --ray``: a real two-node Ray cluster scores a split exactly as the single process does."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from radflow.cli import app
from radflow.hardware import free_port
from tests.ray_cluster import RayCluster
from tests.serve.models import make_onnx


@pytest.fixture(scope="module")
def model_and_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ray-score")
    onnx = make_onnx(root, seed=3, n=60)
    return onnx, next(root.glob("ds-*"))


def test_two_node_cluster_scores_identically(
    ray_cluster: RayCluster, model_and_dataset: tuple[Path, Path], tmp_path: Path
):
    import ray

    onnx, dataset = model_and_dataset
    runner = CliRunner()
    single = runner.invoke(
        app,
        ["score", str(onnx), str(dataset), "--split", "all", "--batch-size", "7", "-o", str(tmp_path / "one.parquet")],
    )
    assert single.exit_code == 0, single.output
    on_ray = runner.invoke(
        app,
        [
            "score",
            str(onnx),
            str(dataset),
            "--split",
            "all",
            "--batch-size",
            "7",
            "--ray",
            ray_cluster.address,
            "-o",
            str(tmp_path / "ray.parquet"),
            "--json",
        ],
    )
    assert on_ray.exit_code == 0, on_ray.output
    assert len({node["NodeID"] for node in ray.nodes() if node["Alive"]}) == 2  # both nodes joined the cluster
    one, many = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "ray.parquet")
    assert list(many.columns) == list(one.columns) and dict(many.dtypes) == dict(one.dtypes)
    assert many["image_id"].tolist() == one["image_id"].tolist() and len(one) == 60
    labels = one.columns[1:]
    np.testing.assert_allclose(many[labels].to_numpy(), one[labels].to_numpy(), rtol=0, atol=1e-5)


def test_unreachable_address_fails_before_any_work(model_and_dataset: tuple[Path, Path], tmp_path: Path):
    onnx, dataset = model_and_dataset
    out = tmp_path / "never.parquet"
    port = free_port()
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["score", str(onnx), str(dataset), "--ray", f"127.0.0.1:{port}", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in result.output
    assert time.perf_counter() - started < 10 and not out.exists()
    malformed = CliRunner().invoke(app, ["score", str(onnx), str(dataset), "--ray", "headnode", "-o", str(out)])
    assert malformed.exit_code == 2 and "--ray expects auto or HOST:PORT" in malformed.output
