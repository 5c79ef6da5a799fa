"""Label Studio's ML-backend protocol on the app (in process): health, setup, predict and the webhook."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from radflow.annotate.config import label_config
from radflow.annotate.push import PREDICTION_KEY, task_config
from radflow.inference import ServeSettings
from radflow.store import Store, labelled_predictions
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes


@pytest.fixture(scope="module")
def app(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("ml-backend")
    harness = AppHarness(ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{root / 'serving.db'}"))
    yield harness
    harness.close()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_health_setup_and_predict_answer_label_studio(app: AppHarness) -> None:
    model = app.service.require_router().champion.loaded
    config = task_config(model.model)
    assert app.request("GET", "/label-studio/health").json()["status"] == "UP"
    setup = app.request("POST", "/label-studio/setup", json={"project": "3.1700000000", "schema": config.xml})
    assert setup.status_code == 200 and setup.json() == {"model_version": f"{model.name}/{model.version}"}
    wrong = app.request(
        "POST", "/label-studio/setup", json={"project": "3.1", "schema": label_config("detection", ["N"]).xml}
    )
    assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]
    tasks = [{"id": 1, "data": {"image": _uri(png_bytes(1))}}, {"id": 2, "data": {"image": _uri(png_bytes(2))}}]
    answer = app.request(
        "POST", "/label-studio/predict", json={"tasks": tasks, "project": "3.1", "label_config": config.xml}
    )
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert len(results) == 2 and all(r["model_version"] == f"{model.name}/{model.version}" for r in results)
    assert {r["from_name"] for r in results[0]["result"]} <= set(config.findings)
    url_task = [{"id": 3, "data": {"image": "/data/upload/1/x.png"}}]
    refused = app.request("POST", "/label-studio/predict", json={"tasks": url_task, "project": "9.1"})
    assert refused.status_code == 422 and "has not called /setup" in refused.json()["error"]


def test_an_annotation_event_becomes_feedback_at_once(app: AppHarness) -> None:
    config = task_config(app.service.require_router().champion.loaded.model)
    served = app.request("POST", "/v1/predict", content=png_bytes(5), headers={"content-type": "image/png"}).json()
    name, label = next(iter(config.findings.items()))
    annotation = {"id": 9, "completed_by": 4, "result": [
        {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": ["present"]}}]}  # fmt: skip
    task = {"id": 7, "data": {"image": "x", PREDICTION_KEY: served["id"]}}
    event = {"action": "ANNOTATION_CREATED", "task": task, "annotation": annotation, "project": {"id": 1}}
    got = app.request("POST", "/label-studio/webhook", json=event)
    assert got.status_code == 201 and got.json()["imported"] == 1
    store: Store = app.service.require_store()
    store.flush()
    (row,) = [r for r in labelled_predictions(store) if r.id == served["id"]]
    assert row.labels == {label: 1}
    again = app.request("POST", "/label-studio/webhook", json={**event, "action": "ANNOTATION_UPDATED"}).json()
    assert again["imported"] == 0 and again["unchanged"] == 1  # the store already says so: no second row
    unknown = {**event, "task": {"id": 8, "data": {"image": "x", PREDICTION_KEY: "no-such-prediction"}}}
    refused = app.request("POST", "/label-studio/webhook", json=unknown).json()
    assert refused["imported"] == 0 and "radflow does not know its image" in refused["refused"][0]["reason"]
    other = app.request("POST", "/label-studio/webhook", json={"action": "PROJECT_UPDATED"})
    assert other.status_code == 201 and other.json()["status"] == "ignored"
