"""What the multi-label kind owns beyond the generated tests: "No Finding" contradictions and untrained labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radflow.tasks import get_task
from radflow.tasks.evaluation import EvalData
from radflow.tasks.multilabel import contradiction_counts

LABELS = ["No Finding", "Edema", "Support Devices", "Pneumonia"]
CUTS: dict[str, float | None] = {"No Finding": 0.5, "Edema": 0.5, "Support Devices": 0.5, "Pneumonia": 0.5}


def _answer(scores: list[float], thresholds: dict[str, float | None] = CUTS) -> dict:  # type: ignore[type-arg]
    return get_task("multilabel").encode(np.array(scores), LABELS, thresholds, None).to_dict()


def test_no_finding_beside_a_finding_is_reported_as_a_contradiction() -> None:
    answer = _answer([0.9, 0.8, 0.1, 0.7])
    (found,) = answer["contradictions"]
    assert found["labels"] == ["No Finding", "Edema", "Pneumonia"]
    assert found["message"] == "'No Finding' is positive together with Edema, Pneumonia"
    # Both stay positive: which side is wrong is the reader's call, not radflow's.
    assert [f["label"] for f in answer["findings"] if f["positive"]] == ["No Finding", "Edema", "Pneumonia"]


def test_support_devices_or_no_finding_alone_is_no_contradiction() -> None:
    assert _answer([0.9, 0.1, 0.9, 0.1])["contradictions"] == []
    assert _answer([0.1, 0.9, 0.9, 0.9])["contradictions"] == []


def test_evaluation_counts_contradictions_in_predictions_and_labels() -> None:
    targets = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0]], dtype=float)
    scores = np.array([[0.9, 0.2, 0, 0], [0.9, 0.9, 0, 0], [0.9, 0, 0, 0.9], [0.1, 0.9, 0, 0]])
    counts = contradiction_counts(LABELS, targets, scores, dict.fromkeys(LABELS, 0.5))
    assert counts is not None
    assert (counts["n"], counts["predicted"], counts["labels"]) == (4, 2, 1)
    assert contradiction_counts(["Edema"], targets[:, 1:2], scores[:, 1:2], {"Edema": 0.5}) is None


def test_a_label_never_learned_is_flagged_and_never_positive() -> None:
    answer = _answer([0.1, 0.2, 0.3, 0.99], {**CUTS, "Pneumonia": None})
    pneumonia = answer["findings"][3]
    assert pneumonia == {
        "label": "Pneumonia",
        "probability": 0.99,
        "positive": False,
        "threshold": None,
        "untrained": True,
    }
    assert "untrained" not in answer["findings"][0]  # every other finding keeps its shape


def _eval_data(untrained: list[str]) -> EvalData:
    rng = np.random.default_rng(0)
    targets = (rng.random((80, len(LABELS))) < 0.4).astype(float)
    scores = np.clip(targets * 0.5 + rng.random(targets.shape) * 0.5, 0, 1)
    return EvalData(
        labels=LABELS,
        split="test",
        targets=targets,
        scores=scores,
        manifest=pd.DataFrame({"sex": ["M"] * 80, "age": [50.0] * 80, "view": ["frontal"] * 80}),
        val=lambda: (targets, scores),
        stored_thresholds=None,
        unit=None,
        n_bootstrap=0,
        ci=0.95,
        calibration_bins=5,
        threshold_method="youden",
        target_sensitivity=0.9,
        age_bands=[0.0, 200.0],
        untrained=untrained,
    )


def test_untrained_labels_get_no_threshold_in_the_evaluation() -> None:
    kind = get_task("multilabel")
    assert kind.untrained_labels(LABELS, np.array([[1, 0, np.nan, 0], [0, 1, 1, 0]])) == ["Pneumonia"]
    data = _eval_data(["Pneumonia"])
    result = kind.evaluate(data)
    entry = result["thresholds"]["per_label"]["Pneumonia"]
    assert entry["threshold"] is None and "no positive in the train split" in entry["source"]
    assert result["metrics"]["per_label"]["Pneumonia"]["threshold"] is None
    assert result["thresholds"]["per_label"]["Edema"]["threshold"] is not None
    assert result["untrained_labels"] == ["Pneumonia"]
    assert any("Pneumonia: no positive in the train split" in w for w in data.warnings)
    assert result["contradictions"]["n"] == 80
    headline = kind.headline({**result, "config": {"ci": 0.95}})
    assert headline["positives_Edema"] + headline["negatives_Edema"] == 80
    assert headline["contradictions"] == result["contradictions"]["predicted"]


def test_an_exported_model_serves_its_untrained_label_flagged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ModelMeta -> ONNX metadata -> RadflowModel: the label keeps no threshold (no 0.5 default) in the answer."""
    from radflow.export import export_onnx
    from radflow.runtime import RadflowModel
    from radflow.train.checkpoint import ModelMeta
    from tests.export.checkpoints import PoolNet

    meta = ModelMeta(
        arch="pool",
        task="multilabel",
        labels=["No Finding", "Edema"],
        num_outputs=2,
        preprocess={"size": 16},
        thresholds={"No Finding": 0.4},
        untrained_labels=["Edema"],
    )
    model = RadflowModel.load(export_onnx(PoolNet(), meta, tmp_path / "model.onnx"))
    assert model.meta.untrained_labels == ["Edema"]
    assert model.thresholds == {"No Finding": 0.4, "Edema": None}
    (answer,) = model.predict_batch(np.full((1, 16, 16), 200, dtype=np.uint8))
    edema = answer.to_dict()["findings"][1]
    assert edema["threshold"] is None and edema["untrained"] is True and edema["positive"] is False
