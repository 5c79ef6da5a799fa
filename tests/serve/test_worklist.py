"""GET /v1/worklist: studies in triage order (urgent findings first, by urgency, then arrival), filters and paging."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from radflow.errors import ConfigError
from radflow.inference import ServeSettings
from radflow.store import PredictionRecord, Store, study_key
from radflow.triage import order_key, urgency, urgent_findings, worklist
from tests.serve.harness import AppHarness

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _answer(**probabilities: float) -> dict[str, object]:
    return {
        "findings": [
            {"label": k, "probability": v, "positive": v >= 0.5, "threshold": 0.5} for k, v in probabilities.items()
        ]
    }


def _log(store: Store, study: str | None, minutes: int, modality: str | None = "CR", **p: float) -> str:
    record = PredictionRecord(
        model_name="chest",
        model_version="3",
        model_alias="champion",
        arm="champion",
        outputs=_answer(**p),
        study_key=study_key(study),
        modality=modality,
        created_at=T0 + timedelta(minutes=minutes),
    )
    store.log(record)
    return record.id


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'w.db'}") as s:
        yield s


def test_urgency_rule_thresholds_or_positive_findings() -> None:
    answer = _answer(Pneumothorax=0.7, Effusion=0.9, Cardiomegaly=0.2)
    assert [f["label"] for f in urgent_findings(answer, {})] == ["Effusion", "Pneumothorax"]
    assert urgent_findings(answer, {"Pneumothorax": 0.6}) == [{"label": "Pneumothorax", "probability": 0.7}]
    assert urgency(answer, {"Cardiomegaly": 0.3}) == 0.0
    keys = sorted([(0.0, 1), (0.8, 5), (0.0, 0), (0.95, 9)], key=lambda s: order_key(*s))
    assert keys == [(0.95, 9), (0.8, 5), (0.0, 0), (0.0, 1)]


def test_worklist_orders_urgent_first_then_arrival_with_filters_and_paging(store: Store) -> None:
    thresholds = {"Pneumothorax": 0.6}
    _log(store, "A", 0, Pneumothorax=0.1)
    _log(store, "B", 1, Pneumothorax=0.65)
    _log(store, "C", 2, modality="DX", Pneumothorax=0.2)
    d = _log(store, "D", 3, Pneumothorax=0.95)
    _log(store, "B", 4, Pneumothorax=0.7)  # a second image of study B: its urgency is the study's highest
    _log(store, None, 5, modality=None, Pneumothorax=0.3)  # no study key: its own study
    store.add_feedback(d, correct=True, reader="r1")  # D has been read

    unread = worklist(store, thresholds)
    order = [item["study"] for item in unread["items"]]
    assert order[:3] == [study_key("B"), study_key("A"), study_key("C")] and order[3].startswith("prediction:")
    assert unread["total"] == 4 and unread["rule"] == "thresholds"
    first = unread["items"][0]
    assert first["urgency"] == 0.7 and first["urgent"] == [{"label": "Pneumothorax", "probability": 0.7}]
    assert len(first["predictions"]) == 2 and first["status"] == "unread" and first["model"] == "chest v3"
    assert first["arrived"] == (T0 + timedelta(minutes=1)).isoformat()

    everything = worklist(store, thresholds, status="all")
    assert [i["study"] for i in everything["items"]][:2] == [study_key("D"), study_key("B")]
    assert [i["study"] for i in worklist(store, thresholds, status="read")["items"]] == [study_key("D")]
    assert [i["study"] for i in worklist(store, thresholds, modality="dx")["items"]] == [study_key("C")]
    late = worklist(store, thresholds, since=T0 + timedelta(minutes=2))
    assert [i["study"] for i in late["items"]][:2] == [study_key("B"), study_key("C")]  # B's later image counts
    page = worklist(store, thresholds, limit=2, offset=1)
    assert [i["study"] for i in page["items"]] == order[1:3] and page["total"] == 4
    # no thresholds: the model's positive findings are urgent
    assert worklist(store, {})["rule"] == "positive"
    with pytest.raises(ConfigError, match="limit must be 1-500"):
        worklist(store, thresholds, limit=0)


@pytest.fixture(scope="module")
def app(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("worklist")
    harness = AppHarness(ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{root / 'serving.db'}"))
    yield harness
    harness.close()


def test_worklist_route_lists_served_studies_and_refuses_bad_filters(app: AppHarness, tmp_path: Path) -> None:
    from radflow.data.dicom import write_dicom

    path = tmp_path / "dx.dcm"
    write_dicom(path, np.zeros((24, 24), np.uint16), bits_stored=12, uid_seed="worklist", attributes={"Modality": "DX"})
    answered = app.request(
        "POST", "/v1/predict", content=path.read_bytes(), headers={"x-routing-key": "study-worklist-1"}
    )
    assert answered.status_code == 200, answered.text
    got = app.request("GET", "/v1/worklist", params={"modality": "DX", "status": "all"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["total"] == 1 and body["items"][0]["study"] == study_key("study-worklist-1")
    assert body["items"][0]["modality"] == "DX" and body["items"][0]["predictions"] == [answered.json()["id"]]
    assert "study-worklist-1" not in got.text  # the key is hashed
    for bad in ({"status": "new"}, {"limit": 0}, {"since": "yesterday"}):
        assert app.request("GET", "/v1/worklist", params=bad).status_code == 422, bad
