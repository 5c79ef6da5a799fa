"""A detection model in the torch-free runtime: its kept boxes answered at the input's original size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radflow.export import export_onnx
from radflow.runtime import RadflowModel
from radflow.tasks.detection import select_detections
from radflow.train.checkpoint import ModelMeta
from radflow.train.models import create_model

LABELS = ["Lung Opacity", "Nodule"]
SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, ModelMeta, Path]:
    torch.manual_seed(0)
    model = create_model("fcos_small", len(LABELS)).eval()
    meta = ModelMeta(
        arch="fcos_small", task="detection", labels=LABELS, num_outputs=len(LABELS), preprocess={"size": SIZE}
    )
    return model, meta, export_onnx(model, meta, tmp_path_factory.mktemp("det") / "model.onnx")


def test_answers_are_boxes_at_the_inputs_original_size(exported: tuple[torch.nn.Module, ModelMeta, Path]) -> None:
    _, _, path = exported
    runtime = RadflowModel.load(path, threads=1)
    rng = np.random.default_rng(2)
    tall = np.clip(rng.normal(70, 20, (80, 48)), 0, 255).astype(np.uint8)  # padded left and right to 80 x 80
    tall[20:50, 10:30] = 220
    answer = runtime.predict_batch(tall[None])[0].to_dict()
    anchors, _ = runtime.run(tall[None], cam=False)
    kept = select_detections(anchors[0]).astype(np.float64)
    scale, left = 80 / SIZE, (80 - 48) / 2
    corners = np.clip(kept[:, :4] * scale - [left, 0, left, 0], 0, [48, 80, 48, 80])
    on_image = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    assert 0 < on_image.sum() < len(kept)  # some boxes of a random detector lie in the padding only
    assert [b["label"] for b in answer["boxes"]] == [LABELS[int(k)] for k in kept[on_image, 4]]
    for box, corner, row in zip(answer["boxes"], corners[on_image], kept[on_image], strict=True):
        assert box["box"] == pytest.approx(corner.tolist(), abs=0.01)
        assert box["score"] == pytest.approx(float(row[5]), abs=1e-6)


def test_a_detection_output_of_the_wrong_shape_is_refused(exported: tuple[torch.nn.Module, ModelMeta, Path]) -> None:
    from radflow.runtime import InvalidInputError

    runtime = RadflowModel.load(exported[2], threads=1)
    with pytest.raises(InvalidInputError, match=r"\(A, 4 \+ 2\) anchors"):
        runtime.to_prediction(np.zeros((10, 5), np.float32), (40, 48))
