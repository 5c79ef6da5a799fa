"""The champion comparison's data: both models' per-image test scores, aligned on the images both scored.

The evaluation logs ``evaluation/predictions.parquet`` with every run it evaluates (one row per
test image: ``image_id``, the pseudonymous ``patient_id``, ``target:<label>`` and
``score:<label>``), so registration compares a candidate with the champion on the same images
without loading either model or the dataset. A detection run's file holds each image's boxes instead
(``truth:<label>``, ``boxes:<label>``, :func:`radflow.evaluate.report.write_box_predictions`), which
:func:`align_boxes` turns into :class:`~radflow.registry.gates.PairedBoxes`; a segmentation run's holds each
image's Dice per structure (``dice:<structure>``, NaN where undefined), which :func:`align_dice` turns into
:class:`~radflow.registry.gates.PairedDice`. :func:`fetch_paired`
downloads both files and :func:`align_predictions` joins them; the paired test itself is
:func:`radflow.registry.gates.check_gates`'s, with the statistics of :mod:`radflow.metrics.paired`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radflow.errors import DataError
from radflow.registry.gates import PairedBoxes, PairedDice, PairedScores

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

__all__ = [
    "PREDICTIONS_ARTIFACT",
    "PREDICTIONS_FILE",
    "align_boxes",
    "align_dice",
    "align_predictions",
    "fetch_paired",
    "read_predictions",
]

PREDICTIONS_FILE = "predictions.parquet"
"""Per-image targets and scores the evaluation writes beside ``evaluation.json``."""
PREDICTIONS_ARTIFACT = f"evaluation/{PREDICTIONS_FILE}"
"""Where a run holds them (the evaluation's artifacts are logged under ``evaluation/``)."""


def read_predictions(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A predictions file as a DataFrame indexed by ``image_id`` (first row of a repeated id kept), and its labels."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"not a readable predictions file ({exc}).", path=path) from None
    missing = {"image_id", "patient_id"} - set(frame.columns)
    if missing:
        raise DataError(f"not a radflow predictions file (no {sorted(missing)} column).", path=path)
    prefix = _kind_prefix(frame)
    labels = [c.removeprefix(prefix) for c in frame.columns if c.startswith(prefix)]
    frame = frame.drop_duplicates("image_id").set_index("image_id")
    return frame, labels


def _kind_prefix(frame: pd.DataFrame) -> str:
    """The column prefix that names a file's labels: ``boxes:`` (detection), ``dice:`` (segmentation) or ``score:``."""
    for prefix in ("boxes:", "dice:"):
        if any(c.startswith(prefix) for c in frame.columns):
            return prefix
    return "score:"


def align_dice(candidate: Path, champion: Path) -> tuple[PairedDice | None, str | None]:
    """Two segmentation files joined on the images they share: ``(PairedDice, None)``, or ``(None, why not)``.

    Structures are those both files hold Dice of; Dice is NaN where it is undefined (both masks empty).
    """
    mine, mine_structures = read_predictions(candidate)
    theirs, their_structures = read_predictions(champion)
    structures = [s for s in mine_structures if s in their_structures]
    shared = mine.index.intersection(theirs.index)
    if not structures or not len(shared):
        return None, (
            f"the two evaluations share {len(shared)} image(s) and {len(structures)} structure(s); nothing to compare."
        )
    mine, theirs = mine.loc[shared], theirs.loc[shared]
    columns = [f"dice:{s}" for s in structures]
    return (
        PairedDice(
            structures=structures,
            candidate=mine[columns].to_numpy(dtype=np.float64),
            champion=theirs[columns].to_numpy(dtype=np.float64),
            groups=mine["patient_id"].astype(str).to_numpy(),
        ),
        None,
    )


def _boxes(frame: pd.DataFrame, labels: list[str], prefix: str, width: int) -> list[np.ndarray]:
    """Each row's boxes of ``labels`` ``(m, 4 + 1 + width - 4)``: corners, label index (in ``labels``), the rest."""
    out = []
    for _, row in frame.iterrows():
        parts = []
        for j, label in enumerate(labels):
            flat = np.asarray(row[f"{prefix}{label}"], dtype=np.float32).reshape(-1, width)
            parts.append(np.concatenate([flat[:, :4], np.full((len(flat), 1), j, np.float32), flat[:, 4:]], axis=1))
        out.append(np.concatenate(parts) if parts else np.zeros((0, width + 1), np.float32))
    return out


def align_boxes(candidate: Path, champion: Path) -> tuple[PairedBoxes | None, str | None]:
    """Two detection files joined on the images they share: ``(PairedBoxes, None)``, or ``(None, why not)``.

    True boxes come from the candidate's file; labels are those both files hold boxes of.
    """
    mine, mine_labels = read_predictions(candidate)
    theirs, their_labels = read_predictions(champion)
    labels = [label for label in mine_labels if label in their_labels and f"truth:{label}" in mine.columns]
    shared = mine.index.intersection(theirs.index)
    if not labels or not len(shared):
        return None, (
            f"the two evaluations share {len(shared)} image(s) and {len(labels)} box label(s); nothing to compare."
        )
    mine, theirs = mine.loc[shared], theirs.loc[shared]
    # The candidate's kept boxes (x0, y0, x1, y1, label, score) against the champion's, on its true boxes.
    return (
        PairedBoxes(
            labels=labels,
            truths=_boxes(mine, labels, "truth:", 4),
            candidate=_boxes(mine, labels, "boxes:", 5),
            champion=_boxes(theirs, labels, "boxes:", 5),
            groups=mine["patient_id"].astype(str).to_numpy(),
        ),
        None,
    )


def align_predictions(
    candidate: Path, champion: Path
) -> tuple[PairedScores | PairedBoxes | PairedDice | None, str | None]:
    """Both files joined on the images they share: ``(PairedScores, None)``, or ``(None, why not)``.

    Targets come from the candidate's file; labels are those both models score and the candidate's
    file has targets for. Detection files (boxes per image) are aligned by :func:`align_boxes`,
    segmentation files (Dice per image) by :func:`align_dice`.
    """
    mine, mine_labels = read_predictions(candidate)
    theirs, their_labels = read_predictions(champion)
    kinds = {"boxes:": "boxes", "dice:": "Dice per structure", "score:": "scores"}
    mine_kind, their_kind = _kind_prefix(mine), _kind_prefix(theirs)
    if mine_kind != their_kind:
        return None, f"one evaluation holds {kinds[mine_kind]} and the other {kinds[their_kind]}; nothing to compare."
    if mine_kind == "boxes:":
        return align_boxes(candidate, champion)
    if mine_kind == "dice:":
        return align_dice(candidate, champion)
    labels = [label for label in mine_labels if label in their_labels and f"target:{label}" in mine.columns]
    shared = mine.index.intersection(theirs.index)
    if not labels or not len(shared):
        return None, (
            f"the two evaluations share {len(shared)} image(s) and {len(labels)} label(s); nothing to compare."
        )
    mine, theirs = mine.loc[shared], theirs.loc[shared]
    return (
        PairedScores(
            labels=labels,
            targets=mine[[f"target:{label}" for label in labels]].to_numpy(dtype=np.float64),
            candidate=mine[[f"score:{label}" for label in labels]].to_numpy(dtype=np.float64),
            champion=theirs[[f"score:{label}" for label in labels]].to_numpy(dtype=np.float64),
            groups=mine["patient_id"].astype(str).to_numpy(),
        ),
        None,
    )


def _download(client: MlflowClient, run_id: str, into: Path) -> Path | None:
    names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    if PREDICTIONS_ARTIFACT not in names:
        return None
    return Path(client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(into)))


def fetch_paired(
    client: MlflowClient, run_id: str, champion: dict[str, Any]
) -> tuple[PairedScores | PairedBoxes | PairedDice | None, str | None]:
    """Download the candidate's and the champion's test predictions and align them.

    ``(None, reason)`` when either run lacks them (evaluated by an older radflow).
    """
    champion_run = champion.get("run_id")
    if not champion_run:
        return None, "the champion has no run to read its test predictions from"
    with tempfile.TemporaryDirectory(prefix="radflow-compare-") as tmp:
        mine = _download(client, run_id, Path(tmp) / "candidate")
        theirs = _download(client, str(champion_run), Path(tmp) / "champion")
        if mine is None or theirs is None:
            who = " and ".join(
                w for w, p in (("this run", mine), (f"champion v{champion['version']}", theirs)) if p is None
            )
            return None, f"{who} logged no per-image test predictions ({PREDICTIONS_ARTIFACT})"
        return align_predictions(mine, theirs)
