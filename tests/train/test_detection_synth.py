"""Phantom boxes (``synth_chest(boxes=True)``): the bounding boxes of the drawn findings' masks, in a COCO file
that radflow's ``coco-boxes`` reader ingests as a detection dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from radflow.data.boxes import to_training
from radflow.data.dataset import Dataset
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.maskfiles import read_mask_image
from radflow.data.synth import synth_chest
from radflow.data.synth.truth import BOX_STRUCTURES, mask_boxes, mask_path


def test_mask_boxes_are_the_bounds_of_each_region() -> None:
    mask = np.zeros((10, 12), bool)
    mask[1:3, 2:5] = True
    mask[6:9, 8:12] = True
    mask[3, 5] = True  # touches the first region at a corner: the same region
    assert mask_boxes(mask) == [(2, 1, 4, 3), (8, 6, 4, 3)]


def test_phantom_boxes_ingest_as_the_masks_bounds(tmp_path: Path) -> None:
    src = tmp_path / "chest"
    summary = synth_chest(src, n=8, seed=3, size=64, workers=1, boxes=True)
    counts = summary["boxes"]["counts"]
    assert set(counts) == set(BOX_STRUCTURES) and sum(counts.values()) > 0
    coco = json.loads((src / "annotations.json").read_text())
    ingest(src, "coco-boxes", tmp_path / "ds", IngestOptions(size=32, workers=1))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.task == "detection" and set(ds.labels) <= set(BOX_STRUCTURES)
    assert sum(len(b) for b in ds.boxes(range(len(ds.manifest)))) == len(coco["annotations"])
    first = next(a for a in coco["annotations"])
    image = next(im for im in coco["images"] if im["id"] == first["image_id"])
    label = next(c["name"] for c in coco["categories"] if c["id"] == first["category_id"])
    mask = read_mask_image(mask_path(src, image["file_name"], label)) != 0
    x, y, w, h = first["bbox"]
    assert (mask[y : y + h, x : x + w].any() and not mask[:y].any()) or y == 0
    expected = to_training(np.array([[x, y, x + w, y + h]]), image["height"], image["width"], 32)[0]
    corners = [b[["x0", "y0", "x1", "y1"]].to_numpy() for b in ds.boxes(range(len(ds.manifest)))]
    assert any(np.isclose(c, expected, atol=1e-6).all(axis=1).any() for c in corners if len(c))
