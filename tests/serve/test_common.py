"""What every transport shares: documented error statuses, the ``{"error"}`` body in the schema, honest OPTIONS."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radflow.inference import ServeSettings
from radflow.serve import create_app
from radflow.serve.common import settle_heap
from tests.serve.harness import AppHarness, metric_value
from tests.serve.models import png_bytes


@pytest.fixture(scope="module")
def app(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("common")
    settings = ServeSettings(
        model=str(onnx_pair[0]),
        store_url=f"sqlite:///{root / 'serving.db'}",
        max_body_bytes=100_000,
        drift_interval_s=3600,
        threads=1,
    )
    harness = AppHarness(settings)
    yield harness
    harness.close()


def _documented(schema: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    responses: dict[str, Any] = schema["paths"][template][method.lower()]["responses"]
    return responses


def _infer(inputs: Any, **extra: Any) -> dict[str, Any]:
    return {"content": json.dumps({"inputs": inputs, **extra}).encode()}


# (method, url, request kwargs, the route's template, the status it must answer)
_CASES: list[tuple[str, str, dict[str, Any], str, int]] = [
    ("POST", "/v1/predict", {"content": b"\x89PNG" + b"0" * 200_000}, "/v1/predict", 413),
    ("POST", "/v1/predict", {"content": b"hello"}, "/v1/predict", 422),
    ("POST", "/v1/predict", {"content": png_bytes(0), "headers": {"content-type": "text/plain"}}, "/v1/predict", 415),
    ("POST", "/v1/predict", {"content": b"", "headers": {"content-length": "x1"}}, "/v1/predict", 400),
    ("GET", "/v1/predictions/nope", {}, "/v1/predictions/{prediction_id}", 404),
    ("GET", "/v1/predictions/nope/heatmap.png?label=x", {}, "/v1/predictions/{prediction_id}/heatmap.png", 404),
    (
        "POST",
        "/v1/feedback",
        {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}},
        "/v1/feedback",
        400,
    ),
    ("POST", "/v1/feedback", {"json": {"prediction_id": "nope", "correct": True}}, "/v1/feedback", 404),
    ("POST", "/v1/feedback", {"json": {"labels": {}}}, "/v1/feedback", 422),
    ("GET", "/v1/monitoring?alerts=-1", {}, "/v1/monitoring", 422),
    ("GET", "/v2/models/nope", {}, "/v2/models/{name}", 404),
    ("GET", "/v2/models/multilabel-0/versions/9/ready", {}, "/v2/models/{name}/versions/{model_version}/ready", 404),
    ("GET", "/v2/models/nope/config", {}, "/v2/models/{name}/config", 404),
    ("GET", "/v2/models/nope/stats", {}, "/v2/models/{name}/stats", 404),
    ("POST", "/v2/models/nope/infer", _infer([]), "/v2/models/{name}/infer", 404),
    ("POST", "/v2/models/multilabel-0/infer", {"content": b"{not json"}, "/v2/models/{name}/infer", 400),
    # Each of these was a 500 (AttributeError/TypeError on a value of the wrong JSON type).
    ("POST", "/v2/models/multilabel-0/infer", _infer([1]), "/v2/models/{name}/infer", 400),
    ("POST", "/v2/models/multilabel-0/infer", _infer([{"name": ["image"]}]), "/v2/models/{name}/infer", 400),
    ("POST", "/v2/models/multilabel-0/infer", _infer([], parameters=[1]), "/v2/models/{name}/infer", 400),
    (
        "POST",
        "/v2/models/multilabel-0/infer",
        _infer([{"name": "image", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": {"a": 1}}]),
        "/v2/models/{name}/infer",
        400,
    ),
    (
        "POST",
        "/v2/models/multilabel-0/infer",
        _infer([{"name": "image", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": [4]}}]),
        "/v2/models/{name}/infer",
        400,
    ),
    ("POST", "/v2/models/multilabel-0/infer", _infer([], outputs=5), "/v2/models/{name}/infer", 400),
]


@pytest.mark.parametrize(("method", "url", "kwargs", "template", "status"), _CASES, ids=[c[1] for c in _CASES])
def test_each_error_is_answered_as_documented(
    app: AppHarness, method: str, url: str, kwargs: dict[str, Any], template: str, status: int
) -> None:
    schema = app.request("GET", "/openapi.json").json()
    answer = app.request(method, url, **kwargs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and answer.json()["error"]
    documented = _documented(schema, method, template)
    assert str(status) in documented, (template, sorted(documented))
    body = documented[str(status)]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ErrorBody"}


def test_unparsable_bodies_are_named_as_such(app: AppHarness) -> None:
    json_type = {"content-type": "application/json"}
    not_utf8 = app.request("POST", "/v1/feedback", content=b'{"prediction_id": "\xff"}', headers=json_type)
    assert not_utf8.status_code == 400 and "not UTF-8" in not_utf8.json()["error"]  # was "an error parsing the body"
    not_json = app.request("POST", "/v1/feedback", content=b"{not json", headers=json_type)
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]  # was "1: JSON decode error"


def test_the_schema_documents_the_error_body_the_handler_answers(app: AppHarness) -> None:
    schema = app.request("GET", "/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's {"detail": [...]} never answers
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    for template, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, doc in operation["responses"].items():
                if code.startswith(("4", "5")) and "content" in doc and template != "/v2/health/ready":
                    body = doc["content"]["application/json"]["schema"]
                    assert body.get("$ref", "").endswith("/ErrorBody") or "error" in body.get("properties", {}), (
                        method,
                        template,
                        code,
                    )
    ready = _documented(schema, "GET", "/v2/health/ready")["503"]
    assert ready["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Ready"}
    assert "Retry-After" in _documented(schema, "POST", "/v1/predict")["503"]["headers"]


def test_options_lists_the_real_methods_of_a_path(app: AppHarness) -> None:
    routing = app.request("OPTIONS", "/admin/routing")
    assert routing.status_code == 204 and routing.content == b""
    assert routing.headers["allow"] == "GET, OPTIONS, PUT"  # GET and PUT are two routes at one path
    assert app.request("OPTIONS", "/v1/predict").headers["allow"] == "OPTIONS, POST"
    assert app.request("OPTIONS", "/v2/models/anything/versions/3/infer").headers["allow"] == "OPTIONS, POST"
    assert app.request("OPTIONS", "/v2/health/live").status_code == 204
    assert app.request("OPTIONS", "/nowhere").status_code == 404

    wrong = app.request("DELETE", "/admin/routing")  # Starlette's own 405 named only the first route: GET
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, OPTIONS, PUT"
    assert app.request("GET", "/v1/predict").headers["allow"] == "OPTIONS, POST"

    metrics = app.request("GET", "/metrics").text
    assert metric_value(metrics, "radflow_requests_total", endpoint="/admin/routing", status="204") == 1


def test_while_loading_every_model_route_answers_a_documented_503(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    app = create_app(ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{tmp_path / 'serving.db'}"))
    schema = app.openapi()
    cases = [
        ("GET", "/v2/health/ready", "/v2/health/ready"),
        ("GET", "/v2/models/multilabel-0", "/v2/models/{name}"),
        ("GET", "/v2/models/stats", "/v2/models/stats"),
        ("POST", "/v1/predict", "/v1/predict"),
        ("GET", "/v1/predictions/x", "/v1/predictions/{prediction_id}"),
    ]

    async def calls() -> list[httpx.Response]:  # no lifespan: the models never load
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://radflow") as client:
            answers = [await client.request(method, url, content=png_bytes(0)) for method, url, _ in cases]
            return [*answers, await client.get("/v2/health/live")]

    *answers, live = asyncio.run(calls())
    for (method, url, template), answer in zip(cases, answers, strict=True):
        assert answer.status_code == 503, (url, answer.text)
        assert "503" in _documented(schema, method, template), template
    assert answers[0].json() == {"ready": False}
    assert live.status_code == 200 and live.json() == {"live": True}


class _Node:
    other: _Node | None = None


def test_settle_heap_freezes_what_is_alive_and_frees_the_cycles_it_froze_before() -> None:
    node = _Node()
    node.other = node  # a cycle: only the collector frees it
    gone = weakref.ref(node)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert gone() is not None  # frozen: the collector's passes no longer walk it
        settle_heap()  # thawed, collected, then what is alive frozen again
        assert gone() is None
    finally:
        gc.unfreeze()
