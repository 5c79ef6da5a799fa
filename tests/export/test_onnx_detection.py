"""Detection export: the anchors' boxes and scores in the graph (dynamic batch), kept by the runtime's NumPy
selection exactly as torchvision's own FCOS post-processing keeps them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from radflow.data.boxes import box_iou
from radflow.data.preprocess import PreprocessSpec, to_model_input
from radflow.export import check_parity, export_onnx
from radflow.runtime import RadflowModel
from radflow.tasks.detection import select_detections
from radflow.train.checkpoint import ModelMeta
from radflow.train.models import create_model

LABELS = ["Lung Opacity", "Nodule"]
SIZE = 64


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 20, (n, SIZE, SIZE))
    img[:, 10:30, 12:28] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, ModelMeta, Path]:
    torch.manual_seed(0)
    model = create_model("fcos_small", len(LABELS)).eval()
    meta = ModelMeta(
        arch="fcos_small", task="detection", labels=LABELS, num_outputs=len(LABELS), preprocess={"size": SIZE}
    )
    return model, meta, export_onnx(model, meta, tmp_path_factory.mktemp("det") / "model.onnx")


def test_the_graph_has_one_detections_output_and_matches_pytorch_at_any_batch(
    exported: tuple[torch.nn.Module, ModelMeta, Path],
) -> None:
    model, meta, path = exported
    outputs = ort.InferenceSession(str(path)).get_outputs()
    assert [(o.name, o.shape[2]) for o in outputs] == [("detections", 4 + len(LABELS))]
    result = check_parity(model, meta, path, _pixels(9))  # batches of 7 and 2
    assert result["max_abs_diff"] <= 1e-4 and result["images"] == 9


@torch.no_grad()
def test_runtime_boxes_are_torchvisions_fcos_detections(exported: tuple[torch.nn.Module, ModelMeta, Path]) -> None:
    model, _, path = exported
    pixels = _pixels(3, seed=1)
    x = torch.from_numpy(to_model_input(pixels, PreprocessSpec(size=SIZE)))
    fcos = model.fcos  # type: ignore[union-attr]
    fcos.transform.min_size, fcos.transform.max_size = (SIZE,), SIZE  # the input is already at model size
    reference = fcos(list(x))
    runtime = RadflowModel.load(path, threads=1)
    anchors, _ = runtime.run(pixels, cam=False)
    compared = 0
    for ref, mine in zip(reference, anchors, strict=True):
        got = select_detections(mine)
        assert len(got) == len(ref["boxes"]) > 0
        order = np.argsort(-ref["scores"].numpy(), kind="stable")
        ref_boxes, ref_scores, ref_labels = (ref[k].numpy()[order] for k in ("boxes", "scores", "labels"))
        # Matched by corners: a random detector also keeps boxes of no area, which have no IoU.
        cost = (
            np.abs(ref_boxes[:, None] - got[None, :, :4]).max(axis=2)
            + 100 * np.abs(ref_scores[:, None] - got[None, :, 5])
            + 1000 * (ref_labels[:, None] != got[None, :, 4])
        )
        best = cost.argmin(axis=1)
        assert len(set(best.tolist())) == len(best)  # one to one
        assert np.abs(ref_boxes - got[best, :4]).max() <= 1e-3
        sized = (ref_boxes[:, 2] > ref_boxes[:, 0]) & (ref_boxes[:, 3] > ref_boxes[:, 1])
        assert sized.any() and (np.diag(box_iou(ref_boxes, got[best, :4]))[sized] >= 0.99).all()
        assert np.abs(got[best, 5] - ref_scores).max() <= 1e-4
        assert (got[best, 4] == ref_labels).all()
        compared += len(got)
    assert compared >= 3
