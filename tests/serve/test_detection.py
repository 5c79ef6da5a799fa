"""A detection model served in process: /v1/predict answers boxes at the upload's size, logged as answered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from radflow.export import export_onnx
from radflow.inference import ServeSettings
from radflow.runtime import RadflowModel
from radflow.train.checkpoint import ModelMeta
from radflow.train.models import create_model
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes

LABELS = ["Lung Opacity", "Nodule"]


@pytest.fixture(scope="module")
def det_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("fcos_small", len(LABELS), widths=(8, 8, 16, 16)).eval()
    meta = ModelMeta(arch="fcos_small", task="detection", labels=LABELS, num_outputs=2, preprocess={"size": 32})
    return export_onnx(model, meta, tmp_path_factory.mktemp("det-model") / "model.onnx")


@pytest.fixture(scope="module")
def app(det_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("det-serve")
    harness = AppHarness(ServeSettings(model=str(det_model), store_url=f"sqlite:///{root / 'serving.db'}"))
    yield harness
    harness.close()


def test_predict_answers_boxes_at_the_upload_size_and_logs_them(app: AppHarness, det_model: Path) -> None:
    image = png_bytes(3, shape=(40, 24))
    response = app.request("POST", "/v1/predict", files={"file": ("x.png", image, "image/png")})
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = RadflowModel.load(det_model, threads=1).predict_bytes(image).to_dict()["boxes"]
    assert expected and answer["boxes"] == expected  # the runtime's answer, through the batcher
    assert "findings" not in answer and answer["model"]["name"]
    for box in answer["boxes"]:
        assert box["label"] in LABELS and 0 < box["score"] <= 1
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 < x1 <= 24 and 0 <= y0 < y1 <= 40
    assert answer["labels"] == LABELS and answer["size"] == [40, 24]  # what a reader's added boxes are checked by
    record = app.request("GET", f"/v1/predictions/{answer['id']}").json()
    assert record["outputs"] == {"boxes": expected, "labels": LABELS, "size": [40, 24]}


def test_feedback_on_a_detection_answer_takes_labels_not_a_value(app: AppHarness) -> None:
    answer = app.request("POST", "/v1/predict", content=png_bytes(4)).json()
    refused = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "value": 3.0})
    assert refused.status_code == 422 and "send 'labels'" in refused.json()["error"]
    taken = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "labels": {"Nodule": 1}})
    assert taken.status_code == 201, taken.text
    # A reader may add a box of any of the model's labels, not only those it answered, inside the image only.
    h, w = answer["size"]
    added = [{"label": label, "box": [1.0, 1.0, w - 1.0, h - 1.0]} for label in LABELS]
    taken = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "labels": {"boxes": added}})
    assert taken.status_code == 201, taken.text
    outside = [{"label": LABELS[0], "box": [0.0, 0.0, w + 5.0, h]}]
    refused = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "labels": {"boxes": outside}})
    assert refused.status_code == 422 and "labels.boxes[0]" in refused.json()["error"]
