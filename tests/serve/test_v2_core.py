"""/v2 goes through the one inference core: every tensor row is logged, metered and fed to drift like an upload."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radflow.data.decode import decode_image
from radflow.data.preprocess import PreprocessSpec, from_model_input, to_model_input
from radflow.inference import ServeSettings
from radflow.runtime import RadflowModel
from radflow.runtime.cam import to_grey8
from radflow.serve.v2 import BINARY_HEADER
from tests.serve.harness import AppHarness, metric_value


@pytest.fixture()
def app(onnx_pair: tuple[Path, Path], tmp_path: Path) -> Iterator[AppHarness]:
    settings = ServeSettings(
        model=str(onnx_pair[0]),
        store_url=f"sqlite:///{tmp_path / 'serving.db'}",
        inputs_dir=tmp_path / "inputs",
        drift_interval_s=3600,
        threads=1,
    )
    harness = AppHarness(settings)
    yield harness
    harness.close()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)


def test_from_model_input_inverts_to_model_input_exactly() -> None:
    pixels = _images(3)
    for spec in (PreprocessSpec(size=32), PreprocessSpec(size=32, mean=0.485, std=0.229, channels=3)):
        tensors = to_model_input(pixels, spec)
        assert all(np.array_equal(from_model_input(t, spec), p) for t, p in zip(tensors, pixels, strict=True))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        from_model_input(tensors, spec)


def test_a_v2_request_is_logged_metered_and_monitored(app: AppHarness, onnx_pair: tuple[Path, Path]) -> None:
    model = RadflowModel.load(onnx_pair[0])
    arm = app.service.require_router().champion
    name, version = arm.name, arm.version
    pixels = _images(3, seed=1)
    tensor = to_model_input(pixels, model.spec)
    blob = tensor.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "probabilities"}],
        }
    ).encode()
    r = app.request(
        "POST", f"/v2/models/{name}/infer", content=header + blob, headers={BINARY_HEADER: str(len(header))}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    probs = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(answer["outputs"][0]["shape"])
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]  # the embedding drift needs stays internal

    # the prediction log: one row per tensor row, with the model's identity and the same scores
    store = app.service.require_store()
    rows = [r for r in store.predictions() if r["input_format"] == "tensor"]
    assert len(rows) == 3
    assert {(r["model_name"], r["model_version"], r["arm"]) for r in rows} == {(name, version, "champion")}
    logged = sorted(tuple(round(f["probability"], 4) for f in r["outputs"]["findings"]) for r in rows)
    assert logged == sorted(tuple(round(float(p), 4) for p in row) for row in probs)
    # its input is stored as the image it came from, so readers can see it and give feedback on it
    path = store.input_path(rows[0]["input_sha256"])
    assert path.is_file()
    restored = to_grey8(decode_image(path.read_bytes(), name=str(path)).pixels)
    assert any(np.array_equal(restored, p) for p in pixels)

    # /metrics by model and version, under the arm that answered
    text = app.request("GET", "/metrics").text
    label = model.labels[0]
    count = metric_value(text, "radflow_label_score_count", model=name, version=version, arm="champion", label=label)
    assert count == 3

    # the drift window of this model version saw the three rows
    report = app.request("GET", "/v1/monitoring").json()
    assert report["drift"]["models"][f"{name}/{version}"]["observed"] == 3

    # and feedback on a V2 prediction is accepted like any other
    fb = app.request("POST", "/v1/feedback", json={"prediction_id": rows[0]["id"], "labels": {label: 1}})
    assert fb.status_code == 201, fb.text


def test_health_answers_carry_the_protocols_json_bodies(app: AppHarness) -> None:
    live, ready = app.request("GET", "/v2/health/live"), app.request("GET", "/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    model = app.request("GET", "/v2/models/multilabel-0/ready")
    assert (model.status_code, model.json()) == (200, {"name": "multilabel-0", "ready": True})
    assert app.request("GET", "/v2/models/multilabel-0/versions/unregistered/ready").json()["ready"] is True


def test_model_metadata_is_enough_to_build_the_input_tensor(app: AppHarness, onnx_pair: tuple[Path, Path]) -> None:
    """A client that reads only /v2 metadata makes the tensor the server makes from the same image."""
    meta = app.request("GET", "/v2/models/multilabel-0").json()
    params = meta["parameters"]
    assert all(isinstance(v, str | int | float | bool) for v in params.values())  # OIP parameters are flat
    assert params["task"] == "multilabel" and params["labels"].split(",") == RadflowModel.load(onnx_pair[0]).labels
    size, channels = params["preprocess_size"], params["preprocess_channels"]
    assert meta["inputs"][0]["shape"] == [-1, channels, size, size] and params["preprocess_layout"] == "NCHW"

    pixels = _images(1, seed=7)[0]  # already at the model's size: the client only normalises
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    client_side = (pixels.astype(np.float32) / 255 - params["preprocess_mean"]) / params["preprocess_std"]
    client_side = np.repeat(client_side[None, None], channels, axis=1)
    server_side = RadflowModel.load(onnx_pair[0]).model_input(buf.getvalue())
    np.testing.assert_allclose(client_side, server_side, atol=1e-6)
