from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radflow.errors import DataError
from radflow.runtime.cam import encode_png
from radflow.sim.judge import default_max_error, judge
from radflow.sim.traffic import CaseSource, feedback_payload
from tests.fixtures import make_dataset


def _answer(probabilities: dict[str, float]) -> dict[str, object]:
    findings = [
        {"label": k, "probability": v, "positive": v >= 0.5, "threshold": 0.5} for k, v in probabilities.items()
    ]
    return {"id": "p1", "findings": findings}


def test_case_source_serves_only_the_held_out_split_with_truth(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=30)
    source = CaseSource(ds, "test", seed=0)
    manifest = source.dataset.manifest
    test_rows = set(np.flatnonzero(manifest["split"] == "test").tolist())
    seen = [source.next() for _ in range(3 * len(source))]
    assert {c.row for c in seen} == test_rows  # every test image, nothing else
    case = seen[0]
    record = manifest.iloc[case.row]
    assert np.array_equal(case.pixels, source.dataset.image(case.row))
    assert case.study == record["study_id"]
    expected = {k: float(record[k]) for k in source.labels if not np.isnan(record[k])}
    assert case.truth == expected
    pixels = np.asarray(Image.open(io.BytesIO(encode_png(case.pixels))))
    assert np.array_equal(pixels, case.pixels), "PNG is lossless"


def test_case_source_explains_an_empty_or_missing_split(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=12, split=False)
    with pytest.raises(DataError, match="not split yet"):
        CaseSource(ds, "test")
    with pytest.raises(DataError, match="unknown split 'tset'"):
        CaseSource(make_dataset(tmp_path / "ds2", n=12), "tset")


def test_feedback_payload_multilabel_keeps_known_labels_the_model_predicts() -> None:
    answer = _answer({"Cardiomegaly": 0.2, "Pneumothorax": 0.7})
    truth = {"Cardiomegaly": 1.0, "Pneumothorax": 0.0, "Edema": 1.0}
    body = feedback_payload(answer, truth, "simulator")
    assert body == {"prediction_id": "p1", "reader": "simulator", "labels": {"Cardiomegaly": 1, "Pneumothorax": 0}}
    assert feedback_payload(answer, {"Edema": 1.0}, "simulator") is None
    assert feedback_payload(answer, {}, "simulator") is None


def test_feedback_payload_regression_sends_the_value() -> None:
    answer = {"id": "p2", "prediction": {"value": 100.0, "unit": "months"}}
    assert feedback_payload(answer, {"boneage": 131.5}, "r") == {"prediction_id": "p2", "reader": "r", "value": 131.5}
    assert feedback_payload(answer, {}, "r") is None


def test_judge_counts_only_confident_misses_for_classification() -> None:
    limit = default_max_error("multilabel")
    assert limit == 0.9
    assert judge(_answer({"A": 0.55, "B": 0.45}), {"A": 0.0, "B": 1.0}, limit) is None  # wrong but unsure
    assert judge(_answer({"A": 0.05}), {"A": 1.0}, limit) == "wrong prediction: A (positive) off by more than 0.9"
    assert judge(_answer({"A": 0.95}), {"A": 0.0}, limit) == "wrong prediction: A (negative) off by more than 0.9"
    assert judge(_answer({"A": 0.01}), {}, limit) is None  # no ground truth: nothing to judge


def test_judge_regression_uses_absolute_error_in_months() -> None:
    limit = default_max_error("regression")
    answer = {"id": "x", "prediction": {"value": 120.0, "unit": "months"}}
    assert judge(answer, {"boneage": 140.0}, limit) is None
    assert judge(answer, {"boneage": 150.0}, limit) == "wrong prediction: boneage off by more than 24 months"
    assert judge({"id": "x"}, {"boneage": 1.0}, limit) is not None


def test_judge_and_the_sim_package_import_nothing_heavy() -> None:
    # The Locust process imports radflow.sim.judge under gevent: it must stay standard-library only.
    code = (
        "import sys, json, radflow.sim.judge; "
        "print(json.dumps([m for m in ('numpy', 'pandas', 'httpx', 'torch') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "127.0.0.1:8000", "must start with http://"),
        ("rate", 0.0, "--rate must be > 0"),
        ("mode", "burst", "--mode must be 'single' or 'batch'"),
        ("duration", 0.0, "--duration must be > 0"),
        ("feedback_rate", 1.5, "--feedback-rate must be between 0 and 1"),
        ("concurrency", 0, "--concurrency must be >= 1"),
    ],
)
def test_simulation_config_names_the_bad_flag(field: str, value: object, message: str) -> None:
    from radflow.errors import ConfigError
    from radflow.sim.simulator import SimulationConfig

    args: dict[str, object] = {"url": "http://127.0.0.1:8000", "dataset": Path("ds"), field: value}
    with pytest.raises(ConfigError, match=message):
        SimulationConfig(**args)  # type: ignore[arg-type]
