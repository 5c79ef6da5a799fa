from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from radflow.errors import ConfigError
from radflow.export import export_model, write_triton_repo
from tests.export.checkpoints import make_checkpoint


def test_triton_repository_layout_and_config(tmp_path: Path) -> None:
    checkpoint, _ = make_checkpoint(tmp_path, task="regression", size=64)
    repo = tmp_path / "triton"
    report = export_model(str(checkpoint), tmp_path / "boneage.onnx", triton_repo=repo)
    folder = repo / "boneage"
    assert report["triton"] == str(folder)
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "boneage.onnx").read_bytes()
    assert (folder / "labels.txt").read_text().split("\n")[0] == "boneage"

    config = (folder / "config.pbtxt").read_text()
    assert 'name: "boneage"' in config and 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 32" in config
    assert "dynamic_batching {" in config and "max_queue_delay_microseconds: 2000" in config
    # dims come from the graph, without the batch dimension Triton adds itself
    blocks = config.split("name: ")
    dims = {b.split("\n")[0].strip('"'): b.split("dims: ")[1].split("\n")[0] for b in blocks[2:]}
    assert dims == {
        "image": "[ 1, 64, 64 ]",
        "sex": "[ 1 ]",
        "value": "[ 1 ]",
        "cam": "[ 1, 2, 2 ]",
        "embedding": "[ 128 ]",
    }
    assert config.count("data_type: TYPE_FP32") == 5

    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    feeds = {"image": np.zeros((3, 1, 64, 64), np.float32), "sex": np.ones((3, 1), np.float32)}
    value, cam, embedding = session.run(None, feeds)
    assert value.shape == (3, 1) and cam.shape == (3, 1, 2, 2) and embedding.shape == (3, 128)


def test_triton_options_are_checked(tmp_path: Path) -> None:
    checkpoint, _ = make_checkpoint(tmp_path)
    onnx_path = Path(export_model(str(checkpoint), tmp_path / "m.onnx")["onnx"])
    folder = write_triton_repo(onnx_path, tmp_path / "repo", "chest", max_batch_size=8, max_queue_delay_us=500)
    config = (folder / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config and "max_queue_delay_microseconds: 500" in config
    assert 'label_filename: "labels.txt"' in config
    with pytest.raises(ConfigError, match="Triton model name"):
        write_triton_repo(onnx_path, tmp_path / "repo", "bad name/")
    with pytest.raises(ConfigError, match="max-batch-size"):
        write_triton_repo(onnx_path, tmp_path / "repo", "chest", max_batch_size=0)


def test_triton_config_of_a_segmentation_model_has_the_map_dims(tmp_path: Path) -> None:
    import torch

    from radflow.export import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    torch.manual_seed(0)
    meta = ModelMeta(
        arch="small_unet", task="segmentation", labels=["a", "b", "c"], num_outputs=3, preprocess={"size": 32}
    )
    path = export_onnx(create_model("small_unet", 3, widths=(4, 8)), meta, tmp_path / "seg.onnx")
    folder = write_triton_repo(path, tmp_path / "triton", "lungs")
    config = (folder / "config.pbtxt").read_text()
    outputs = config.split("output [")[1].split("dynamic_batching")[0]
    assert 'name: "probability_maps"' in outputs and "dims: [ 3, 32, 32 ]" in outputs
    assert "label_filename" not in outputs and 'name: "cam"' not in outputs
    assert (folder / "labels.txt").read_text() == "a\nb\nc\n"
    assert 'string_value: "segmentation"' in config


def test_triton_repository_serves_the_int8_model_when_built_unless_told(tmp_path: Path) -> None:
    checkpoint, _ = make_checkpoint(tmp_path, task="regression", n=24)
    out, repo = tmp_path / "boneage.onnx", tmp_path / "triton"
    common = {"int8": True, "mae_tolerance": 50.0, "latency_time": 0.01, "reference_images": 0, "triton_repo": repo}
    report = export_model(str(checkpoint), out, **common)  # type: ignore[arg-type]
    served = repo / "boneage" / "1" / "model.onnx"
    assert report["triton_model"] == {"precision": "int8", "onnx": report["int8"]["path"], "requested": None}
    assert served.read_bytes() == Path(report["int8"]["path"]).read_bytes()

    report = export_model(str(checkpoint), out, triton_model="fp32", **common)  # type: ignore[arg-type]
    assert report["triton_model"]["precision"] == "fp32" and served.read_bytes() == out.read_bytes()


def test_triton_model_choice_is_checked_before_exporting(tmp_path: Path) -> None:
    checkpoint, _ = make_checkpoint(tmp_path)
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="--triton-model int8 needs --int8"):
        export_model(str(checkpoint), out, triton_repo=tmp_path / "t", triton_model="int8")
    with pytest.raises(ConfigError, match="fp32 or int8, got 'fp16'"):
        export_model(str(checkpoint), out, triton_repo=tmp_path / "t", triton_model="fp16")
    assert not out.exists()
