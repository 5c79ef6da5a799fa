"""Corrected boxes as detection feedback: ``labels = {"boxes": [...]}`` checked by the kind, and through HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from radflow.inference import ServeSettings
from radflow.tasks import InvalidFeedbackError, get_task
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes

KIND = get_task("detection")
LABELS = ["Lung Opacity", "Nodule"]
ANSWER = {"boxes": [{"label": "Nodule", "score": 0.8, "box": [1.0, 2.0, 10.0, 12.0]}]}


def test_corrected_boxes_are_checked_against_the_answers_labels_and_size() -> None:
    KIND.validate_feedback(ANSWER, {"boxes": [{"label": "Nodule", "box": [2, 3, 9, 11]}]}, None)
    KIND.validate_feedback(ANSWER, {"boxes": []}, None)  # "no finding"
    recorded = {**ANSWER, "labels": LABELS, "size": [20, 16]}
    KIND.validate_feedback(recorded, {"boxes": [{"label": "Lung Opacity", "box": [0, 0, 16, 20]}]}, None)
    with pytest.raises(InvalidFeedbackError, match=r"labels.boxes\[0\].label 'Nodle'.*Did you mean 'Nodule'"):
        KIND.validate_feedback(recorded, {"boxes": [{"label": "Nodle", "box": [1, 1, 2, 2]}]}, None)
    with pytest.raises(InvalidFeedbackError, match=r"labels.boxes\[1\].box .* outside the 16 x 20 image"):
        boxes = [{"label": "Nodule", "box": [1, 1, 2, 2]}, {"label": "Nodule", "box": [1, 1, 17, 5]}]
        KIND.validate_feedback(recorded, {"boxes": boxes}, None)
    with pytest.raises(InvalidFeedbackError, match=r"labels.boxes\[0\].box \[5, 1, 5, 4\] needs x1 > x0"):
        KIND.validate_feedback(recorded, {"boxes": [{"label": "Nodule", "box": [5, 1, 5, 4]}]}, None)
    with pytest.raises(InvalidFeedbackError, match=r"labels.boxes\[0\].box must be four numbers"):
        KIND.validate_feedback(ANSWER, {"boxes": [{"label": "Nodule", "box": [1, 2, 3]}]}, None)
    with pytest.raises(InvalidFeedbackError, match=r"labels\.boxes comes alone"):
        KIND.validate_feedback(ANSWER, {"boxes": [], "Nodule": 1}, None)
    # Without the answer's label list, a box may have a label the model answered.
    with pytest.raises(InvalidFeedbackError, match=r"label 'Lung Opacity' is not one of \['Nodule'\]"):
        KIND.validate_feedback(ANSWER, {"boxes": [{"label": "Lung Opacity", "box": [1, 1, 2, 2]}]}, None)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    from radflow.export import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    root = tmp_path_factory.mktemp("det-feedback")
    torch.manual_seed(0)
    model = create_model("fcos_small", len(LABELS), widths=(8, 8, 16, 16)).eval()
    meta = ModelMeta(arch="fcos_small", task="detection", labels=LABELS, num_outputs=2, preprocess={"size": 32})
    onnx = export_onnx(model, meta, root / "model.onnx")
    harness = AppHarness(ServeSettings(model=str(onnx), store_url=f"sqlite:///{root / 'serving.db'}"))
    yield harness
    harness.close()


def test_corrected_boxes_through_http_are_stored_or_refused_naming_the_field(app: AppHarness) -> None:
    answer = app.request("POST", "/v1/predict", content=png_bytes(4, (40, 24))).json()
    served = answer["boxes"]
    assert served
    moved = [{"label": served[0]["label"], "box": [1.0, 2.0, 11.0, 14.0]}]
    taken = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "labels": {"boxes": moved}})
    assert taken.status_code == 201, taken.text
    assert taken.json()["labels"] == {"boxes": moved}
    assert app.service.require_store().feedback(answer["id"])[-1]["labels"] == {"boxes": moved}
    bad = [{"label": served[0]["label"], "box": [9, 2, 3, 14]}]
    refused = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "labels": {"boxes": bad}})
    assert refused.status_code == 422 and "labels.boxes[0].box" in refused.json()["error"], refused.text
    wrong = app.request("POST", "/v1/feedback", json={"prediction_id": answer["id"], "labels": {"boxes": {"a": 1}}})
    assert wrong.status_code == 422, wrong.text
