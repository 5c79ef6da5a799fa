"""The real server through the stock ``tritonclient[http]`` client, in binary and JSON mode, plus /v1 over TCP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from radflow.runtime import RadflowModel
from tests.serve.models import make_onnx, png_bytes
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.e2e
httpclient = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("v2-model"), seed=0)


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("v2-server")
    proc = ServerProcess(
        ["--model", str(model_path), "--store-url", f"sqlite:///{root / 'serving.db'}", "--log-level", "warning"],
        log=root / "server.log",
    ).start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def _input(n: int) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, 1, 32, 32)).astype(np.float32)


def test_server_and_model_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("multilabel-0") and client.is_model_ready("multilabel-0", "unregistered")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("multilabel-0")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
    assert meta["parameters"]["preprocess_size"] == 32 and meta["parameters"]["preprocess_channels"] == 1
    config = client.get_model_config("multilabel-0")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [1, 32, 32]
    assert config["parameters"]["preprocess_std"] == {"string_value": str(meta["parameters"]["preprocess_std"])}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_runtime(client: Any, model_path: Path, binary: bool) -> None:
    x = _input(3)
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("multilabel-0", [tensor], outputs=outputs, request_id="r1")
    expected = RadflowModel.load(model_path).session.run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    assert result.get_response()["id"] == "r1"


def test_default_outputs_include_the_cam_and_stats_count_inferences(client: Any) -> None:
    x = _input(2)
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("multilabel-0", [tensor], model_version="unregistered")
    assert result.as_numpy("probabilities").shape == (2, 3)
    assert result.as_numpy("cam").shape[:2] == (2, 3)
    stats = client.get_inference_statistics("multilabel-0")["model_stats"][0]
    assert stats["inference_count"] >= 2 and stats["execution_count"] >= 1
    assert client.get_inference_statistics()["model_stats"][0]["name"] == "multilabel-0"


def test_v2_errors_map_like_triton(client: Any, server: ServerProcess) -> None:
    wrong = httpclient.InferInput("image", [1, 1, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(utils.InferenceServerException, match="expected shape"):
        client.infer("multilabel-0", [wrong])
    with pytest.raises(utils.InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    assert httpx.post(f"{server.url}/v2/models/multilabel-0/infer", content=b"{oops").status_code == 400
    missing = httpx.post(f"{server.url}/v2/models/nope/infer", json={"inputs": []})
    assert missing.status_code == 404 and "unknown model" in missing.json()["error"]
    head = b'{"inputs":[{"name":"image","shape":[1,1,32,32],"datatype":"FP32","parameters":{"binary_data_size":4096}}]}'
    short = httpx.post(
        f"{server.url}/v2/models/multilabel-0/infer",
        content=head + b"\0" * 10,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert short.status_code == 400 and "shorter" in short.json()["error"], short.text


def test_v1_over_tcp_and_metrics(server: ServerProcess) -> None:
    answer = httpx.post(f"{server.url}/v1/predict", files={"file": ("a.png", png_bytes(1), "image/png")})
    assert answer.status_code == 200 and len(answer.json()["findings"]) == 3
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'radflow_requests_total{arm="champion",endpoint="/v1/predict"' in metrics
    assert "radflow_batch_size_bucket" in metrics
    assert "/v1/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
