"""Workflows end to end on chest phantoms: detect -> crop -> classify -> aggregate, in process and served.

Real parts throughout: ONNX exports registered in a workspace's MLflow, resolved by alias, run on the
torch-free runtime, served by the app in process (tests/serve/harness.py): each answer logged per step,
the workflows reloaded by /admin/reload, each one a V2 model, a step's challenger routed. One workspace for
all (building it is most of this file's time).
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import SecretStr

from radflow.config import validate_params
from radflow.data.decode import decode_image
from radflow.errors import ConfigError
from radflow.inference import ServeSettings
from radflow.inference.routing import route_point
from radflow.runtime import RadflowModel
from radflow.store import labelled_predictions
from radflow.tracking import client as tracking_client
from radflow.workflow import WORKFLOW_ARM, WORKFLOW_CHALLENGER_ARM, Workflow, WorkflowError, load_workflow, run_workflow
from tests.serve.harness import AppHarness, metric_value
from tests.workflow.models import (
    CLASSIFIER,
    DETECTOR,
    SERVED_WORKFLOWS,
    PhantomWorkspace,
    findings_workflow,
    make_workspace,
)

WORKFLOWS = SERVED_WORKFLOWS


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> PhantomWorkspace:
    made = make_workspace(tmp_path_factory.mktemp("workflow-ws"), WORKFLOWS)
    tracking_client(made.tracking_uri).set_registered_model_alias(DETECTOR, "spare", "1")  # the reload test drops it
    return made


@pytest.fixture(scope="module")
def findings(ws: PhantomWorkspace) -> Workflow:
    return _load(ws, "findings", WORKFLOWS["findings"])


@pytest.fixture(scope="module")
def app(ws: PhantomWorkspace) -> Iterator[AppHarness]:
    harness = AppHarness(ServeSettings(workspace=ws.root, auth="off"))
    yield harness
    harness.close()


def _load(ws: PhantomWorkspace, name: str, declared: dict[str, Any]) -> Workflow:
    config = validate_params({"workflows": {name: declared}}, "test").workflows[name]
    return load_workflow(name, config, tracking_uri=ws.tracking_uri, threads=1)


def test_each_step_answers_what_its_model_and_glue_give_alone(ws: PhantomWorkspace, findings: Workflow) -> None:
    data = ws.phantoms[0].read_bytes()
    answer = run_workflow(findings, data)
    steps = {s["name"]: s for s in answer["steps"]}
    assert [s["name"] for s in answer["steps"]] == ["detect", "crop", "classify", "findings"]
    assert answer["found"] and answer["message"] is None and answer["size"] == [77, 64]

    detector = RadflowModel.load(f"models:/{DETECTOR}@champion", tracking_uri=ws.tracking_uri, threads=1)
    boxes = detector.predict_bytes(data).to_dict()["boxes"]
    assert boxes and steps["detect"]["output"]["boxes"] == boxes  # in the upload's pixels, as /v1 answers
    assert steps["detect"]["model"] == {
        "name": DETECTOR,
        "version": "1",
        "alias": "champion",
        "uri": f"models:/{DETECTOR}/1",
    }

    # Each cut is its box widened by 10 % of its side each way, clipped to the image.
    crops = steps["crop"]["output"]["crops"]
    assert steps["crop"]["output"]["count"] == len(boxes) == len(crops)
    pixels = decode_image(data).pixels
    for crop, box in zip(crops, boxes, strict=True):
        x0, y0, x1, y1 = box["box"]
        mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        expected = [
            max(0, int(np.floor(x0 - mx))),
            max(0, int(np.floor(y0 - my))),
            min(64, int(np.ceil(x1 + mx))),
            min(77, int(np.ceil(y1 + my))),
        ]
        expected[2], expected[3] = max(expected[2], expected[0] + 1), max(expected[3], expected[1] + 1)
        assert crop["source"] == box and crop["box"] == expected

    # The classifier on each cut alone gives the per-crop findings; the aggregate is their maximum.
    classifier = RadflowModel.load(f"models:/{CLASSIFIER}@champion", tracking_uri=ws.tracking_uri, threads=1)
    per_crop = steps["classify"]["output"]["crops"]
    for crop, got in zip(crops, per_crop, strict=True):
        left, top, right, bottom = crop["box"]
        alone = classifier.predict_batch(classifier.prepare(pixels[top:bottom, left:right])[None])[0]
        assert got["box"] == crop["box"]
        np.testing.assert_allclose(
            [f["probability"] for f in got["findings"]], [f.probability for f in alone.findings or []], atol=1e-5
        )
    final = answer["answer"]
    assert final is steps["findings"]["output"] or final == steps["findings"]["output"]
    for j, finding in enumerate(final["findings"]):
        assert finding["probability"] == max(c["findings"][j]["probability"] for c in per_crop)
        assert finding["positive"] == (finding["probability"] >= finding["threshold"])
    assert len(final["crops"]) == len(crops)  # the per-crop results listed with the image's answer
    assert all(s["latency_ms"] > 0 for s in answer["steps"])
    assert answer["latency_ms"]["total"] >= answer["latency_ms"]["steps"]


def test_a_detector_that_finds_nothing_gives_an_answer_saying_so(ws: PhantomWorkspace) -> None:
    workflow = _load(ws, "findings-v2", WORKFLOWS["findings-v2"])
    answer = run_workflow(workflow, ws.phantoms[1].read_bytes())
    steps = {s["name"]: s["output"] for s in answer["steps"]}
    assert steps["detect"]["boxes"] == [] and steps["crop"] == {"count": 0, "crops": []}
    assert steps["classify"] == {"crops": []}
    assert answer["answer"]["findings"] == [] and answer["answer"]["crops"] == []
    assert not answer["found"]
    assert answer["message"] == "step 'crop' found no box in the image (from step 'detect')."


def _error(ws: PhantomWorkspace, steps: list[dict[str, Any]], **extra: object) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(ws, "bad", {"steps": steps, **extra})
    return str(caught.value)


def test_each_bad_workflow_is_refused_naming_the_workflow_and_the_step(ws: PhantomWorkspace) -> None:
    detect: dict[str, Any] = {"name": "detect", "model": f"models:/{DETECTOR}@champion"}
    classify: dict[str, Any] = {"name": "classify", "model": f"models:/{CLASSIFIER}@champion"}

    unknown = _error(ws, [{"name": "detect", "model": "models:/chest-detectin@champion"}])
    assert unknown.startswith("workflow 'bad', step 'detect': ")
    assert "no registered model 'chest-detectin'" in unknown and f"did you mean '{DETECTOR}'" in unknown.lower()

    alias = _error(ws, [{"name": "detect", "model": f"models:/{DETECTOR}@champoin"}])
    assert alias.startswith("workflow 'bad', step 'detect': ") and "has no alias 'champoin'" in alias
    assert "did you mean 'champion'" in alias.lower()

    version = _error(ws, [{"name": "detect", "model": f"models:/{DETECTOR}/7"}])
    assert "step 'detect'" in version and "no version 7; its versions are 1, 2" in version

    cycle = _error(
        ws,
        [
            {**detect, "input": "image"},
            {"name": "a", "crop": "box", "input": "b"},
            {"name": "b", "crop": "box", "input": "a"},
        ],
    )
    assert cycle.startswith("workflow 'bad', step 'a': its steps form a cycle: a -> b -> a")

    kind = _error(ws, [classify, {"name": "crop", "crop": "box"}])
    assert kind == (
        "workflow 'bad', step 'crop': a crop by box needs boxes of the whole image (a detection or segmentation "
        "model) (its input gives findings)."
    )
    resize = _error(ws, [{"name": "resize", "resize": 64}, detect])
    assert resize.startswith("workflow 'bad', step 'resize': a resize takes crops")
    whole = _error(ws, [detect, {"name": "agg", "aggregate": "max"}])
    assert whole.startswith("workflow 'bad', step 'agg': an aggregate takes findings or values per crop")
    on_crops = _error(ws, [detect, {"name": "crop", "crop": "box"}, {"name": "again", "model": detect["model"]}])
    assert on_crops.startswith("workflow 'bad', step 'again': detection models run on the whole image")

    label = _error(ws, [detect, {"name": "crop", "crop": "box", "labels": ["Pneumothorx"]}])
    assert label.startswith("workflow 'bad', step 'crop': its labels ['Pneumothorx'] are not answered by step")
    assert "did you mean 'pneumothorax'" in label.lower()

    missing = _error(ws, [detect, {"name": "crop", "crop": "box", "input": "detct"}])
    assert missing.startswith("workflow 'bad', step 'crop': its input 'detct' is no step") and "'detect'" in missing
    twice = _error(ws, [detect, {**detect}])
    assert twice == "workflow 'bad', step 'detect': two steps have this name; give each step its own."

    with pytest.raises(ConfigError, match=r"workflows.bad.steps.0: .*step 'x' needs exactly one of model, crop"):
        validate_params({"workflows": {"bad": {"steps": [{"name": "x", "model": "m", "crop": "box"}]}}}, "p.yaml")
    assert issubclass(WorkflowError, ConfigError)


def test_served_workflow_answers_as_in_process_and_is_listed(
    app: AppHarness, ws: PhantomWorkspace, findings: Workflow
) -> None:
    data = ws.phantoms[0].read_bytes()
    served = app.request("POST", "/v1/workflows/findings/predict", files={"file": ("x.png", data, "image/png")})
    assert served.status_code == 200, served.text
    here = run_workflow(findings, data)
    got = served.json()
    for a, b in zip(got["steps"], here["steps"], strict=True):
        assert a["name"] == b["name"] and a["output"] == b["output"] and a["latency_ms"] > 0
    raw = app.request("POST", "/v1/workflows/findings/predict", content=data)  # a raw body is sniffed
    assert raw.status_code == 200 and raw.json()["answer"] == got["answer"]
    # ?sex= is the patient's sex for a regression step (none here: the same answer); anything but M/F is refused
    sexed = app.request("POST", "/v1/workflows/findings/predict?sex=F", content=data)
    assert sexed.status_code == 200 and sexed.json()["answer"] == got["answer"]
    assert app.request("POST", "/v1/workflows/findings/predict?sex=X", content=data).status_code == 422

    empty = app.request("POST", "/v1/workflows/findings-v2/predict", files={"file": ("x.png", data, "image/png")})
    assert empty.status_code == 200 and empty.json()["found"] is False

    listed = {w["name"]: w for w in app.request("GET", "/v1/workflows").json()["workflows"]}
    assert listed["findings"]["ready"] and listed["findings"]["endpoint"] == "/v1/workflows/findings/predict"
    assert [s["kind"] for s in listed["findings"]["steps"]] == [
        "boxes",
        "image per crop",
        "findings per crop",
        "findings",
    ]
    assert listed["findings"]["steps"][0]["model"] == f"models:/{DETECTOR}/1"
    assert not listed["broken"]["ready"] and "step 'detect'" in listed["broken"]["error"]

    broken = app.request("POST", "/v1/workflows/broken/predict", files={"file": ("x.png", data, "image/png")})
    assert broken.status_code == 503 and "has no alias 'nope'" in broken.json()["error"]
    unknown = app.request("POST", "/v1/workflows/findngs/predict", files={"file": ("x.png", data, "image/png")})
    assert unknown.status_code == 404 and "did you mean 'findings'" in unknown.json()["error"].lower()
    not_image = app.request("POST", "/v1/workflows/findings/predict", content=b"hello")
    assert not_image.status_code == 415

    metrics = app.request("GET", "/metrics").text  # the three good answers of 'findings', step by step
    for step in ("detect", "crop", "classify", "findings", "total"):
        count = metric_value(metrics, "radflow_workflow_step_seconds_count", workflow="findings", step=step)
        assert count == 3, (step, count)


def test_a_workflow_runs_without_torch(ws: PhantomWorkspace) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from radflow.config import load_params
        from radflow.workflow import load_workflows, run_workflow
        import radflow.serve.workflows

        params = load_params({str(ws.root / "params.yaml")!r})
        loaded = load_workflows(params.workflows, tracking_uri={ws.tracking_uri!r})
        answer = run_workflow(loaded["findings"], open({str(ws.phantoms[0])!r}, "rb").read())
        assert answer["found"], answer
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("LEAKED" if leaked else "CLEAN", leaked[:5])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CLEAN"), result.stdout


# -- served as the service serves its own model: each step's answer logged, metered, drift-watched, routed --------
# (the app below has drift on and an admin token; the reload test moves aliases and puts them back)

TOKEN = {"Authorization": "Bearer adm"}


@pytest.fixture(scope="module")
def logged_app(ws: PhantomWorkspace) -> Iterator[AppHarness]:
    harness = AppHarness(ServeSettings(workspace=ws.root, auth="off", drift=True, admin_token=SecretStr("adm")))
    yield harness
    harness.close()


def _post(logged_app: AppHarness, name: str, data: bytes, **headers: str) -> dict[str, Any]:
    got = logged_app.request("POST", f"/v1/workflows/{name}/predict", content=data, headers=headers)
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


def test_each_model_step_is_logged_as_its_model_answered_linked_by_the_request(
    logged_app: AppHarness, ws: PhantomWorkspace
) -> None:
    answer = _post(logged_app, "findings", ws.phantoms[0].read_bytes(), **{"X-Routing-Key": "study-1"})
    steps = _steps(answer)
    crops = steps["classify"]["output"]["crops"]
    assert crops and len(steps["classify"]["prediction_ids"]) == len(crops)
    assert len(steps["detect"]["prediction_ids"]) == 1 and "prediction_ids" not in steps["crop"]

    store = logged_app.service.require_store()
    rows = {r["id"]: r for r in store.predictions(request_id=str(answer["request_id"]))}
    assert len(rows) == 1 + len(crops)
    detect = rows[steps["detect"]["prediction_ids"][0]]
    assert (detect["model_name"], detect["model_version"], detect["model_alias"]) == (DETECTOR, "1", "champion")
    assert (detect["workflow"], detect["step"], detect["arm"]) == ("findings", "detect", WORKFLOW_ARM)
    assert detect["outputs"] == steps["detect"]["output"] and detect["input_format"] == "png"
    assert detect["study_key"] is not None and detect["study_key"] != "study-1"
    heatmap = logged_app.request("GET", f"/v1/predictions/{detect['id']}/heatmap.png", params={"label": "x"})
    assert heatmap.status_code == 404 and "of workflow 'findings'" in heatmap.json()["error"]  # not the champion's
    for pid, crop in zip(steps["classify"]["prediction_ids"], crops, strict=True):
        row = rows[pid]
        assert (row["model_name"], row["model_version"], row["step"]) == (CLASSIFIER, "1", "classify")
        assert row["outputs"]["findings"] == crop["findings"] and row["input_format"] == "crop"
        # where it was cut, and from which stored image: its PNG is cut from that one on first use, not per answer
        image = {"image_sha256": detect["input_sha256"]}
        assert row["outputs"]["crop"] == {"box": crop["box"], "source": crop["source"], **image}
        assert not store.input_path(row["input_sha256"]).is_file()
    # A reader asking for a crop (the UI preview; Label Studio and feedback export read it the same way) gets
    # exactly that cut of the stored image, written then under the crop row's hash.
    first_crop = rows[steps["classify"]["prediction_ids"][0]]
    preview = logged_app.request("GET", f"/v1/ui/predictions/{first_crop['id']}/image.png")
    assert preview.status_code == 200, preview.text
    whole = cv2.imdecode(np.frombuffer(store.input_path(detect["input_sha256"]).read_bytes(), np.uint8), 0)
    x0, y0, x1, y1 = crops[0]["box"]
    served = cv2.imdecode(np.frombuffer(preview.content, np.uint8), 0)
    assert np.array_equal(served, whole[y0:y1, x0:x1]) and store.input_path(first_crop["input_sha256"]).is_file()

    # The service's score histograms and the step model's drift window saw every crop.
    metrics = logged_app.request("GET", "/metrics").text
    label = crops[0]["findings"][0]["label"]
    count = metric_value(metrics, "radflow_label_score_count", model=CLASSIFIER, arm=WORKFLOW_ARM, label=label)
    assert count == len(crops)
    monitor = logged_app.service.drift.get(DETECTOR, "1") if logged_app.service.drift else None
    assert monitor is not None and monitor.observed == 1

    # Feedback on one crop's answer is durable and counts for that step's model only (no inheritance).
    first = steps["classify"]["prediction_ids"][0]
    labels = {f["label"]: 1 for f in crops[0]["findings"]}
    given = logged_app.request("POST", "/v1/feedback", json={"prediction_id": first, "labels": labels})
    assert given.status_code == 201, given.text
    labelled = [r for r in labelled_predictions(store) if r.request_id == answer["request_id"]]
    assert [(r.id, r.key.model, r.key.arm, r.inherited) for r in labelled] == [(first, CLASSIFIER, WORKFLOW_ARM, False)]
    online = logged_app.request("GET", "/v1/monitoring").json()["online"]
    assert any(m["model"] == CLASSIFIER and m["arm"] == WORKFLOW_ARM and m["n"] == 1 for m in online["models"])

    # The worklist shows one answer as one study, however many step rows it has (here: without a routing key).
    keyless = _post(logged_app, "findings", ws.phantoms[0].read_bytes())
    items = logged_app.request("GET", "/v1/worklist", params={"status": "all", "limit": 500}).json()["items"]
    (entry,) = [i for i in items if i["study"] == f"request:{keyless['request_id']}"]
    assert len(entry["predictions"]) == 1 + len(crops)


def _steps(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in answer["steps"]}


def test_each_workflow_is_a_v2_model_taking_image_bytes_and_answering_its_json(
    logged_app: AppHarness, ws: PhantomWorkspace
) -> None:
    data = ws.phantoms[0].read_bytes()
    meta = logged_app.request("GET", "/v2/models/findings").json()
    assert meta["platform"] == "ensemble" and meta["parameters"]["workflow"] is True
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "answer", "datatype": "BYTES", "shape": [-1]}]
    assert f"detect=models:/{DETECTOR}/1" in meta["parameters"]["models"]
    (version,) = meta["versions"]
    assert logged_app.request("GET", "/v2/models/findings/ready").json() == {"name": "findings", "ready": True}
    assert logged_app.request("GET", f"/v2/models/findings/versions/{version}/ready").status_code == 200
    assert logged_app.request("GET", "/v2/models/findings/versions/9/ready").status_code == 404
    stats = logged_app.request("GET", "/v2/models/findings/stats")
    assert stats.status_code == 404 and "is a workflow" in stats.json()["error"]

    encoded = base64.b64encode(data).decode()
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}]}
    got = logged_app.request("POST", "/v2/models/findings/infer", json=body)
    assert got.status_code == 200, got.text
    out = got.json()
    assert (out["model_name"], out["model_version"], out["id"]) == ("findings", version, "r1")
    (entry,) = out["outputs"]
    assert (entry["name"], entry["datatype"], entry["shape"]) == ("answer", "BYTES", [1])
    answer = json.loads(entry["data"][0])
    v1 = _post(logged_app, "findings", data)
    assert answer["answer"] == v1["answer"] and answer["request_id"] != v1["request_id"]
    assert len(logged_app.service.require_store().predictions(request_id=answer["request_id"])) > 1  # logged as /v1's

    # The binary extension: each element behind its 4-byte length, both ways.
    blob = struct.pack("<I", len(data)) + data
    head = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "answer", "parameters": {"binary_data": True}}],
    }
    raw = json.dumps(head).encode()
    binary = logged_app.request(
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
    refused = logged_app.request("POST", "/v2/models/findings/infer", json=wrong)
    assert refused.status_code == 400 and "takes BYTES" in refused.json()["error"]

    # A workflow named like the served model is refused on load; the name stays the model's.
    assert logged_app.request("GET", f"/v2/models/{CLASSIFIER}").json()["platform"] == "onnxruntime_onnx"
    listed = {w["name"]: w for w in logged_app.request("GET", "/v1/workflows").json()["workflows"]}
    assert not listed[CLASSIFIER]["ready"] and "its name is the served model's" in listed[CLASSIFIER]["error"]


def test_a_step_challenger_answers_its_share_by_the_services_routing_rule(
    logged_app: AppHarness, ws: PhantomWorkspace
) -> None:
    data = ws.phantoms[0].read_bytes()
    keys = [f"study-{i}" for i in range(40)]
    keys = [next(k for k in keys if route_point(k) < 0.5), next(k for k in keys if route_point(k) >= 0.5)]
    store = logged_app.service.require_store()
    for key, challenger in zip(keys, (True, False), strict=True):
        for _ in range(2):  # sticky: the same key, the same side
            answer = _post(logged_app, "canary", data, **{"X-Routing-Key": key})
            detect = _steps(answer)["detect"]
            assert detect["arm"] == ("challenger" if challenger else "champion")
            assert detect["model"]["version"] == ("2" if challenger else "1")  # which version ran
            assert answer["found"] is not challenger  # v2 finds no box
            (row,) = [r for r in store.predictions(request_id=answer["request_id"]) if r["step"] == "detect"]
            assert row["arm"] == (WORKFLOW_CHALLENGER_ARM if challenger else WORKFLOW_ARM)
            assert row["model_version"] == detect["model"]["version"]
    listed = {w["name"]: w for w in logged_app.request("GET", "/v1/workflows").json()["workflows"]}
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
    logged_app: AppHarness, ws: PhantomWorkspace
) -> None:
    client = tracking_client(ws.tracking_uri)
    data = ws.phantoms[0].read_bytes()
    client.set_registered_model_alias(DETECTOR, "champion", "2")
    client.delete_registered_model_alias(DETECTOR, "spare")
    try:
        reloaded = logged_app.request("POST", "/admin/reload", headers=TOKEN)
        assert reloaded.status_code == 200, reloaded.text
        listed = {w["name"]: w for w in reloaded.json()["workflows"]}
        assert listed["findings"]["ready"] and listed["findings"]["steps"][0]["model"] == f"models:/{DETECTOR}/2"
        assert not listed["spare"]["ready"] and "has no alias 'spare'" in listed["spare"]["error"]
        answer = _post(logged_app, "findings", data)
        assert _steps(answer)["detect"]["model"]["version"] == "2" and not answer["found"]
        assert logged_app.request("POST", "/v1/workflows/spare/predict", content=data).status_code == 503
        assert logged_app.request("GET", "/v2/models/spare").status_code == 503
    finally:
        client.set_registered_model_alias(DETECTOR, "champion", "1")
        client.set_registered_model_alias(DETECTOR, "spare", "1")
        assert logged_app.request("POST", "/admin/reload", headers=TOKEN).status_code == 200
    assert _steps(_post(logged_app, "findings", data))["detect"]["model"]["version"] == "1"


def test_workflow_answers_beyond_the_cores_wait_their_turn(
    logged_app: AppHarness, ws: PhantomWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading
    import time

    from radflow.hardware import available_cores
    from radflow.serve import workflows as served

    running, most = [0], [0]
    lock = threading.Lock()
    answer = served.workflow_answer

    def counted(*args: Any) -> dict[str, Any]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)  # long enough for every request to be in at once
        try:
            return answer(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(served, "workflow_answer", counted)
    data = ws.phantoms[0].read_bytes()
    n = available_cores() + 3

    async def burst() -> list[int]:
        sent = [logged_app.client.post("/v1/workflows/findings/predict", content=data) for _ in range(n)]
        return [r.status_code for r in await asyncio.gather(*sent)]

    assert logged_app.run(burst()) == [200] * n  # each answered, in its turn
    assert most[0] == available_cores()
