"""What the simulator sends: cases from a radflow dataset (a clinic pool or a split), their PNG bytes and feedback.

A dataset keeps preprocessed pixels (not the source files), so each case is sent as a lossless
PNG of those pixels: the server's decode -> preprocess chain then sees exactly the training-time
image, and any shift a monitor finds comes from injected drift, not from re-encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radflow.data.dataset import Dataset
from radflow.errors import DataError

__all__ = ["Case", "CaseSource", "feedback_payload"]


@dataclass(frozen=True)
class Case:
    """One image to send, with its ground truth."""

    row: int
    pixels: np.ndarray
    truth: dict[str, float]
    """Known labels only (label -> 0/1, or the regression target); unknown (NaN) labels are left out."""
    sex: str | None
    study: str
    """Hashed study id: sent as ``X-Routing-Key`` so a study's images stay on one A/B arm."""


class CaseSource:
    """Cases of one split (or ``"all"`` rows) in a seeded random order, reshuffled each time it is used up."""

    def __init__(self, dataset: str | Path | Dataset, split: str = "test", seed: int = 0):
        self.dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        self.split = split
        self.rows = self.dataset.indices(split)
        if len(self.rows) == 0:
            others = [s for s in ("test", "val", "train") if s != split and len(self.dataset.indices(s))]
            hint = f" Try --split {others[0]}." if others else ""
            raise DataError(f"the {split!r} split is empty.{hint}", path=self.dataset.root)
        self.task = self.dataset.task
        self.labels = self.dataset.labels
        self._targets = self.dataset.targets(self.rows)
        self._rng = np.random.default_rng(seed)
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self._next = 0

    def __len__(self) -> int:
        return len(self.rows)

    def case(self, i: int) -> Case:
        """The ``i``-th case of the split (manifest order)."""
        row = int(self.rows[i])
        record = self.dataset.manifest.iloc[row]
        truth = {
            label: float(value)
            for label, value in zip(self.labels, self._targets[i].tolist(), strict=True)
            if not math.isnan(value)
        }
        sex = str(record["sex"]) if record["sex"] in ("M", "F") else None
        return Case(row=row, pixels=self.dataset.image(row), truth=truth, sex=sex, study=str(record["study_id"]))

    def next(self) -> Case:
        if self._next >= len(self._order):
            self._order = self._rng.permutation(len(self.rows))
            self._next = 0
        i = int(self._order[self._next])
        self._next += 1
        return self.case(i)


def feedback_payload(answer: dict[str, Any], truth: dict[str, float], reader: str) -> dict[str, Any] | None:
    """The ``POST /v1/feedback`` body for ``answer`` (a /v1/predict response) from the case's ground truth.

    Classification: ``labels`` with the known 0/1 truth of each label the model predicts (labels the
    model does not know are left out, the server would refuse them). Regression: ``value``. ``None``
    when the case has no ground truth the model can take.
    """
    body: dict[str, Any] = {"prediction_id": answer["id"], "reader": reader}
    if "findings" in answer:
        known = {f["label"] for f in answer["findings"]}
        labels = {label: int(v) for label, v in truth.items() if label in known and v in (0.0, 1.0)}
        if not labels:
            return None
        body["labels"] = labels
    elif "prediction" in answer:
        if len(truth) != 1:
            return None
        body["value"] = next(iter(truth.values()))
    else:
        return None
    return body
