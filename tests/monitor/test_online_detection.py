"""Online detection metrics: served boxes against readers' corrected boxes, through a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radflow.monitor.online import online_report
from radflow.store import PredictionRecord, Store
from radflow.ui.summary import feedback_stats


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(url=f"sqlite:///{tmp_path}/s.db")
    yield s
    s.close()


def _box(label: str, box: list[float], score: float | None = None) -> dict[str, Any]:
    return {"label": label, "box": box, **({} if score is None else {"score": score})}


def _log(store: Store, served: list[dict[str, Any]], *feedback: dict[str, Any]) -> None:
    record = PredictionRecord(model_name="det", model_version="1", model_alias="champion", arm="champion",
                              outputs={"boxes": served})  # fmt: skip
    store.log(record)
    for labels in feedback:
        store.add_feedback(record.id, labels, None, None, None, None)


def test_ap50_sensitivity_and_false_positives_per_label_by_hand(store: Store) -> None:
    # Image 1: a first correction put the nodule elsewhere; the latest one agrees with the best served box.
    _log(
        store,
        [_box("Nodule", [0, 0, 10, 10], 0.9), _box("Nodule", [20, 20, 30, 30], 0.6), _box("Mass", [0, 0, 5, 5], 0.3)],
        {"boxes": [_box("Nodule", [50, 50, 60, 60])]},
        {"boxes": [_box("Nodule", [0, 0, 10, 10])]},
    )
    # Image 2: the served nodule is in the wrong place, and the reader added a mass.
    _log(
        store,
        [_box("Nodule", [0, 0, 10, 10], 0.8)],
        {"boxes": [_box("Nodule", [40, 40, 50, 50]), _box("Mass", [0, 0, 5, 5])]},
    )
    # Per-label 0/1 feedback on a detection answer is not a box correction.
    _log(store, [_box("Nodule", [0, 0, 10, 10], 0.7)], {"Nodule": 1})
    det = online_report(store, n_bootstrap=0)["models"][0]
    assert det["task"] == "detection"
    m = det["detection"]
    assert m["n"] == 2 and m["labels"] == ["Nodule", "Mass"]
    # Nodule ranking TP (0.9), FP (0.8), FP (0.6) over 2 truths: precision 1 up to recall 0.5, then recall stops;
    # COCO's 101 recall points 0, 0.01, ..., 0.5 at precision 1 -> 51/101.
    nodule = m["per_label"]["Nodule"]
    assert nodule == {"truths": 2, "served": 3, "found": 1, "ap50": pytest.approx(51 / 101, abs=1e-6),
                      "sensitivity": 0.5, "fp_per_image": 1.0}  # fmt: skip
    # Mass: the one served box is on image 1, the one true box on image 2.
    mass = m["per_label"]["Mass"]
    assert mass == {"truths": 1, "served": 1, "found": 0, "ap50": 0.0, "sensitivity": 0.0, "fp_per_image": 0.5}
    assert m["map50"] == pytest.approx(51 / 101 / 2, abs=1e-6)
    assert m["sensitivity"] == pytest.approx(1 / 3, abs=1e-6) and m["fp_per_image"] == 1.5
    assert det["classification"] is None and det["segmentation"] is None
    (row,) = feedback_stats(store)
    assert row["map50"] == pytest.approx(51 / 101 / 2, abs=1e-6) and row["with_feedback"] == 3


def test_no_finding_corrections_count_served_boxes_as_false_positives(store: Store) -> None:
    _log(store, [_box("Nodule", [0, 0, 10, 10], 0.9), _box("Nodule", [0, 0, 9, 9], 0.4)], {"boxes": []})
    m = online_report(store, n_bootstrap=0)["models"][0]["detection"]
    assert m["per_label"]["Nodule"] == {"truths": 0, "served": 2, "found": 0, "ap50": None, "sensitivity": None,
                                        "fp_per_image": 2.0}  # fmt: skip
    assert m["map50"] is None and m["sensitivity"] is None and m["fp_per_image"] == 2.0
