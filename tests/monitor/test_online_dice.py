"""Online Dice of segmentation answers against readers' corrected masks, through a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radflow.monitor.online import online_report
from radflow.runtime.masks import encode_rle
from radflow.store import PredictionRecord, Store


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(url=f"sqlite:///{tmp_path}/s.db")
    yield s
    s.close()


def _mask(rows: slice, cols: slice, shape: tuple[int, int] = (6, 8)) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out


def _answer(masks: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "structures": [
            {"structure": k, "area_px": int(m.sum()), "area_mm2": None, "bbox": None, "rle": encode_rle(m)}
            for k, m in masks.items()
        ]
    }


def _log(store: Store, served: dict[str, np.ndarray], corrected: dict[str, np.ndarray]) -> None:
    record = PredictionRecord(model_name="lungs", model_version="1", model_alias="champion", arm="champion",
                              outputs=_answer(served))  # fmt: skip
    store.log(record)
    store.add_feedback(record.id, {"masks": {k: encode_rle(m) for k, m in corrected.items()}}, None, None, None, None)


def test_online_dice_per_structure_and_mean_by_hand(store: Store) -> None:
    empty = np.zeros((6, 8), bool)
    # Image 1: served lung 2x4 = 8 px, corrected 2x2 inside it = 4 px: Dice 2*4/12 = 2/3;
    #          heart served 4 px, the reader erased it: Dice 2*0/4 = 0.
    _log(
        store,
        {"lung": _mask(slice(0, 2), slice(0, 4)), "heart": _mask(slice(4, 6), slice(6, 8))},
        {"lung": _mask(slice(0, 2), slice(0, 2)), "heart": empty},
    )
    # Image 2: lung unchanged (Dice 1); heart empty in both: no Dice (left out, not a perfect score).
    _log(store, {"lung": _mask(slice(1, 3), slice(1, 5)), "heart": empty},
         {"lung": _mask(slice(1, 3), slice(1, 5)), "heart": empty})  # fmt: skip
    # Image 3: only the lung corrected (heart not judged): served 4 px, corrected 8 px overlapping 4: 2*4/12.
    _log(store, {"lung": _mask(slice(0, 2), slice(0, 2)), "heart": empty}, {"lung": _mask(slice(0, 2), slice(0, 4))})
    model = online_report(store, n_bootstrap=50)["models"][0]
    assert model["task"] == "segmentation"
    seg = model["segmentation"]
    assert seg["n"] == 3 and seg["structures"] == ["lung", "heart"]
    lung, heart = seg["per_structure"]["lung"], seg["per_structure"]["heart"]
    assert lung["n"] == 3 and lung["dice"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3, abs=1e-6)
    assert heart["n"] == 1 and heart["dice"] == 0.0
    assert seg["mean_dice"] == pytest.approx(((2 / 3 + 1 + 2 / 3) / 3 + 0.0) / 2, abs=1e-6)
    low, high = seg["mean_dice_ci"]
    assert 0.0 <= low <= high <= 1.0
    assert model["classification"] is None and model["regression"] is None


def test_latest_correction_wins(store: Store) -> None:
    served = {"lung": _mask(slice(0, 2), slice(0, 4))}
    record = PredictionRecord(model_name="lungs", model_version="1", model_alias=None, arm="champion",
                              outputs=_answer(served))  # fmt: skip
    store.log(record)
    store.add_feedback(record.id, {"masks": {"lung": encode_rle(np.zeros((6, 8), bool))}}, None, None, None, None)
    store.add_feedback(record.id, {"masks": {"lung": encode_rle(served["lung"])}}, None, None, None, None)
    seg = online_report(store, n_bootstrap=0)["models"][0]["segmentation"]
    assert seg["per_structure"]["lung"] == {"n": 1, "dice": 1.0, "dice_ci": None}


def test_the_dashboard_shows_the_online_mean_dice(store: Store) -> None:
    from radflow.ui.summary import feedback_stats

    # Served lung 8 px, corrected 4 px inside it: Dice 2/3; the only structure, so the mean is 2/3 too.
    _log(store, {"lung": _mask(slice(0, 2), slice(0, 4))}, {"lung": _mask(slice(0, 2), slice(0, 2))})
    (row,) = feedback_stats(store)
    assert row["with_feedback"] == 1 and row["dice"] == pytest.approx(2 / 3, abs=1e-6)
    assert row["auroc"] is None and row["mae"] is None
