"""A served workflow as the service serves its own model: each step's answer logged, metered and drift-watched.

One phantom workspace (tests/workflow/models.py) served in process (tests/serve/harness.py), with drift on.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from radflow.config import validate_params
from radflow.errors import ConfigError
from radflow.inference import ServeSettings
from radflow.inference.routing import route_point
from radflow.store import labelled_predictions
from radflow.tracking import client as tracking_client
from radflow.workflow import WORKFLOW_ARM, WORKFLOW_CHALLENGER_ARM, WorkflowError, load_workflow
from tests.serve.harness import AppHarness, metric_value
from tests.workflow.models import CLASSIFIER, DETECTOR, PhantomWorkspace, findings_workflow

TOKEN = {"Authorization": "Bearer adm"}


@pytest.fixture(scope="module")
def ws(workflow_workspace: PhantomWorkspace) -> PhantomWorkspace:
    return workflow_workspace  # tests/workflow/conftest.py: shared with test_workflow.py


@pytest.fixture(scope="module")
def app(ws: PhantomWorkspace) -> Iterator[AppHarness]:
    harness = AppHarness(ServeSettings(workspace=ws.root, auth="off", drift=True, admin_token=SecretStr("adm")))
    yield harness
    harness.close()


def _post(app: AppHarness, name: str, data: bytes, **headers: str) -> dict[str, Any]:
    got = app.request("POST", f"/v1/workflows/{name}/predict", content=data, headers=headers)
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


def test_each_model_step_is_logged_as_its_model_answered_linked_by_the_request(
    app: AppHarness, ws: PhantomWorkspace
) -> None:
    answer = _post(app, "findings", ws.phantoms[0].read_bytes(), **{"X-Routing-Key": "study-1"})
    steps = _steps(answer)
    crops = steps["classify"]["output"]["crops"]
    assert crops and len(steps["classify"]["prediction_ids"]) == len(crops)
    assert len(steps["detect"]["prediction_ids"]) == 1 and "prediction_ids" not in steps["crop"]

    store = app.service.require_store()
    rows = {r["id"]: r for r in store.predictions(request_id=str(answer["request_id"]))}
    assert len(rows) == 1 + len(crops)
    detect = rows[steps["detect"]["prediction_ids"][0]]
    assert (detect["model_name"], detect["model_version"], detect["model_alias"]) == (DETECTOR, "1", "champion")
    assert (detect["workflow"], detect["step"], detect["arm"]) == ("findings", "detect", WORKFLOW_ARM)
    assert detect["outputs"] == steps["detect"]["output"] and detect["input_format"] == "png"
    assert detect["study_key"] is not None and detect["study_key"] != "study-1"
    for pid, crop in zip(steps["classify"]["prediction_ids"], crops, strict=True):
        row = rows[pid]
        assert (row["model_name"], row["model_version"], row["step"]) == (CLASSIFIER, "1", "classify")
        assert row["outputs"]["findings"] == crop["findings"] and row["input_format"] == "crop"
        assert app.service.require_store().input_path(row["input_sha256"]).is_file()  # the crop, for relabelling

    # The service's score histograms and the step model's drift window saw every crop.
    metrics = app.request("GET", "/metrics").text
    label = crops[0]["findings"][0]["label"]
    count = metric_value(metrics, "radflow_label_score_count", model=CLASSIFIER, arm=WORKFLOW_ARM, label=label)
    assert count == len(crops)
    monitor = app.service.drift.get(DETECTOR, "1") if app.service.drift else None
    assert monitor is not None and monitor.observed == 1

    # Feedback on one crop's answer is durable and counts for that step's model only (no inheritance).
    first = steps["classify"]["prediction_ids"][0]
    labels = {f["label"]: 1 for f in crops[0]["findings"]}
    given = app.request("POST", "/v1/feedback", json={"prediction_id": first, "labels": labels})
    assert given.status_code == 201, given.text
    labelled = [r for r in labelled_predictions(store) if r.request_id == answer["request_id"]]
    assert [(r.id, r.key.model, r.key.arm, r.inherited) for r in labelled] == [(first, CLASSIFIER, WORKFLOW_ARM, False)]
    online = app.request("GET", "/v1/monitoring").json()["online"]
    assert any(m["model"] == CLASSIFIER and m["arm"] == WORKFLOW_ARM and m["n"] == 1 for m in online["models"])

    # The worklist shows one answer as one study, however many step rows it has (here: without a routing key).
    keyless = _post(app, "findings", ws.phantoms[0].read_bytes())
    items = app.request("GET", "/v1/worklist", params={"status": "all", "limit": 500}).json()["items"]
    (entry,) = [i for i in items if i["study"] == f"request:{keyless['request_id']}"]
    assert len(entry["predictions"]) == 1 + len(crops)


def _steps(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in answer["steps"]}


def test_each_workflow_is_a_v2_model_taking_image_bytes_and_answering_its_json(
    app: AppHarness, ws: PhantomWorkspace
) -> None:
    data = ws.phantoms[0].read_bytes()
    meta = app.request("GET", "/v2/models/findings").json()
    assert meta["platform"] == "ensemble" and meta["parameters"]["workflow"] is True
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "answer", "datatype": "BYTES", "shape": [-1]}]
    assert f"detect=models:/{DETECTOR}/1" in meta["parameters"]["models"]
    (version,) = meta["versions"]
    assert app.request("GET", "/v2/models/findings/ready").json() == {"name": "findings", "ready": True}
    assert app.request("GET", f"/v2/models/findings/versions/{version}/ready").status_code == 200
    assert app.request("GET", "/v2/models/findings/versions/9/ready").status_code == 404

    encoded = base64.b64encode(data).decode()
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}]}
    got = app.request("POST", "/v2/models/findings/infer", json=body)
    assert got.status_code == 200, got.text
    out = got.json()
    assert (out["model_name"], out["model_version"], out["id"]) == ("findings", version, "r1")
    (entry,) = out["outputs"]
    assert (entry["name"], entry["datatype"], entry["shape"]) == ("answer", "BYTES", [1])
    answer = json.loads(entry["data"][0])
    v1 = _post(app, "findings", data)
    assert answer["answer"] == v1["answer"] and answer["request_id"] != v1["request_id"]
    assert len(app.service.require_store().predictions(request_id=answer["request_id"])) > 1  # logged as /v1's

    # The binary extension: each element behind its 4-byte length, both ways.
    blob = struct.pack("<I", len(data)) + data
    head = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "answer", "parameters": {"binary_data": True}}],
    }
    raw = json.dumps(head).encode()
    binary = app.request(
        "POST",
        "/v2/models/findings/infer",
        content=raw + blob,
        headers={"Inference-Header-Content-Length": str(len(raw))},
    )
    assert binary.status_code == 200, binary.text
    split = int(binary.headers["Inference-Header-Content-Length"])
    size = json.loads(binary.content[:split])["outputs"][0]["parameters"]["binary_data_size"]
    rest = binary.content[split:]
    (length,) = struct.unpack_from("<I", rest)
    assert size == len(rest) == 4 + length and json.loads(rest[4:])["answer"] == v1["answer"]

    wrong = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]}]}
    refused = app.request("POST", "/v2/models/findings/infer", json=wrong)
    assert refused.status_code == 400 and "takes BYTES" in refused.json()["error"]

    # A workflow named like the served model is refused on load; the name stays the model's.
    assert app.request("GET", f"/v2/models/{CLASSIFIER}").json()["platform"] == "onnxruntime_onnx"
    listed = {w["name"]: w for w in app.request("GET", "/v1/workflows").json()["workflows"]}
    assert not listed[CLASSIFIER]["ready"] and "its name is the served model's" in listed[CLASSIFIER]["error"]


def test_a_step_challenger_answers_its_share_by_the_services_routing_rule(
    app: AppHarness, ws: PhantomWorkspace
) -> None:
    data = ws.phantoms[0].read_bytes()
    keys = [f"study-{i}" for i in range(40)]
    keys = [next(k for k in keys if route_point(k) < 0.5), next(k for k in keys if route_point(k) >= 0.5)]
    store = app.service.require_store()
    for key, challenger in zip(keys, (True, False), strict=True):
        for _ in range(2):  # sticky: the same key, the same side
            answer = _post(app, "canary", data, **{"X-Routing-Key": key})
            detect = _steps(answer)["detect"]
            assert detect["arm"] == ("challenger" if challenger else "champion")
            assert detect["model"]["version"] == ("2" if challenger else "1")  # which version ran
            assert answer["found"] is not challenger  # v2 finds no box
            (row,) = [r for r in store.predictions(request_id=answer["request_id"]) if r["step"] == "detect"]
            assert row["arm"] == (WORKFLOW_CHALLENGER_ARM if challenger else WORKFLOW_ARM)
            assert row["model_version"] == detect["model"]["version"]
    listed = {w["name"]: w for w in app.request("GET", "/v1/workflows").json()["workflows"]}
    assert listed["canary"]["steps"][0]["challenger"] == f"models:/{DETECTOR}/2"

    # A challenger must answer what its model does; only a model step has one.
    declared = findings_workflow()
    declared["steps"][0] |= {"challenger": f"models:/{CLASSIFIER}@champion", "challenger_weight": 0.1}
    config = validate_params({"workflows": {"bad": declared}}, "test").workflows["bad"]
    with pytest.raises(WorkflowError, match=r"step 'detect': its challenger .* a challenger must answer the same"):
        load_workflow("bad", config, tracking_uri=ws.tracking_uri, threads=1)
    crop = {"steps": [{"name": "crop", "crop": "box", "challenger": "models:/x@y"}]}
    with pytest.raises(ConfigError, match="a challenger is for a model step"):
        validate_params({"workflows": {"bad": crop}}, "test")


def test_admin_reload_reloads_the_workflows_and_lists_one_that_no_longer_loads(
    app: AppHarness, ws: PhantomWorkspace
) -> None:
    client = tracking_client(ws.tracking_uri)
    data = ws.phantoms[0].read_bytes()
    client.set_registered_model_alias(DETECTOR, "champion", "2")
    client.delete_registered_model_alias(DETECTOR, "spare")
    try:
        reloaded = app.request("POST", "/admin/reload", headers=TOKEN)
        assert reloaded.status_code == 200, reloaded.text
        listed = {w["name"]: w for w in reloaded.json()["workflows"]}
        assert listed["findings"]["ready"] and listed["findings"]["steps"][0]["model"] == f"models:/{DETECTOR}/2"
        assert not listed["spare"]["ready"] and "has no alias 'spare'" in listed["spare"]["error"]
        answer = _post(app, "findings", data)
        assert _steps(answer)["detect"]["model"]["version"] == "2" and not answer["found"]
        assert app.request("POST", "/v1/workflows/spare/predict", content=data).status_code == 503
        assert app.request("GET", "/v2/models/spare").status_code == 503
    finally:
        client.set_registered_model_alias(DETECTOR, "champion", "1")
        client.set_registered_model_alias(DETECTOR, "spare", "1")
        assert app.request("POST", "/admin/reload", headers=TOKEN).status_code == 200
    assert _steps(_post(app, "findings", data))["detect"]["model"]["version"] == "1"
