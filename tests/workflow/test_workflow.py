"""Workflows end to end on chest phantoms: detect -> crop -> classify -> aggregate, in process and served.

Real parts throughout: ONNX exports registered in a workspace's MLflow, resolved by alias, run on the
torch-free runtime, served by the app in process (tests/serve/harness.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from radflow.config import validate_params
from radflow.data.decode import decode_image
from radflow.errors import ConfigError
from radflow.inference import ServeSettings
from radflow.runtime import RadflowModel
from radflow.workflow import Workflow, WorkflowError, load_workflow, run_workflow
from tests.serve.harness import AppHarness, metric_value
from tests.workflow.models import CLASSIFIER, DETECTOR, SERVED_WORKFLOWS, PhantomWorkspace

WORKFLOWS = SERVED_WORKFLOWS


@pytest.fixture(scope="module")
def ws(workflow_workspace: PhantomWorkspace) -> PhantomWorkspace:
    return workflow_workspace  # tests/workflow/conftest.py: shared with test_serving.py


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

    metrics = app.request("GET", "/metrics").text  # the two good answers of 'findings', step by step
    for step in ("detect", "crop", "classify", "findings", "total"):
        count = metric_value(metrics, "radflow_workflow_step_seconds_count", workflow="findings", step=step)
        assert count == 2, (step, count)


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
