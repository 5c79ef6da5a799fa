"""Champion/challenger: weighted split, sticky keys, shadow logging, admin auth, hot reload under load."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from radflow.inference import ServeSettings
from radflow.inference.routing import route_point
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def app(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("routing")
    settings = ServeSettings(
        model=str(onnx_pair[0]),
        challenger=str(onnx_pair[1]),
        store_url=f"sqlite:///{root / 'serving.db'}",
        admin_token=SecretStr("s3cret"),
        max_queue_delay_ms=2,
        max_in_flight=256,  # the weighted-split test sends 200 requests at once
    )
    harness = AppHarness(settings)
    yield harness
    harness.close()


def _routing(app: AppHarness, **body: object) -> dict[str, object]:
    answer = app.request("PUT", "/admin/routing", json=body, headers=TOKEN)
    assert answer.status_code == 200, answer.text
    state: dict[str, object] = answer.json()
    return state


def test_admin_needs_the_bearer_token(app: AppHarness, onnx_pair: tuple[Path, Path]) -> None:
    assert app.request("GET", "/admin/routing").status_code == 401
    assert app.request("GET", "/admin/routing", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert app.request("GET", "/admin/routing", headers=TOKEN).json()["challenger"]["name"] == "multilabel-1"
    assert app.request("PUT", "/admin/routing", json={"challenger_weight": 2}, headers=TOKEN).status_code == 422


def test_admin_is_disabled_without_a_token(onnx_pair: tuple[Path, Path], tmp_path: Path) -> None:
    harness = AppHarness(ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{tmp_path / 's.db'}"))
    try:
        answer = harness.request("POST", "/admin/reload", headers=TOKEN)
        assert answer.status_code == 404 and "RADFLOW_ADMIN_TOKEN" in answer.json()["error"]
    finally:
        harness.close()


def test_weighted_split_follows_the_weight_and_keys_are_sticky(app: AppHarness) -> None:
    _routing(app, challenger_weight=0.3, shadow=False)
    image = png_bytes(1)

    async def send(n: int, key: str | None) -> list[str]:
        headers = {"X-Routing-Key": key} if key else {}
        answers = await asyncio.gather(
            *(app.client.post("/v1/predict", content=image, headers=headers) for _ in range(n))
        )
        return [a.json()["arm"] for a in answers]

    arms = Counter(app.run(send(200, None)))
    assert 0.18 < arms["challenger"] / 200 < 0.42, arms
    for key in ("patient-1", "patient-2", "patient-3", "patient-4"):
        expected = "challenger" if route_point(key) < 0.3 else "champion"
        assert set(app.run(send(5, key))) == {expected}
    _routing(app, challenger_weight=0.0)
    assert set(app.run(send(20, "patient-1"))) == {"champion"}


def test_shadow_mode_logs_both_models_but_only_the_champion_answers(app: AppHarness) -> None:
    _routing(app, challenger_weight=0.5, shadow=True)
    answers = [app.request("POST", "/v1/predict", content=png_bytes(20 + i)) for i in range(4)]
    assert {a.json()["arm"] for a in answers} == {"champion"}
    store = app.service.require_store()
    app.run(asyncio.sleep(0.3))  # the shadow scores in the background
    for answer in answers:
        record = app.request("GET", f"/v1/predictions/{answer.json()['id']}").json()
        rows = store.predictions(request_id=record["request_id"])
        assert sorted((r["model_name"], r["shadow"]) for r in rows) == [("multilabel-0", False), ("multilabel-1", True)]
        assert rows[0]["input_sha256"] == rows[1]["input_sha256"]
    _routing(app, shadow=False, challenger_weight=0.0)


def test_reload_swaps_models_with_zero_failed_requests(app: AppHarness, onnx_pair: tuple[Path, Path]) -> None:
    image = png_bytes(2)

    async def load_and_swap() -> tuple[list[int], dict[str, object]]:
        stop = asyncio.Event()
        statuses: list[int] = []

        async def client() -> None:
            while not stop.is_set():
                statuses.append((await app.client.post("/v1/predict", content=image)).status_code)

        workers = [asyncio.create_task(client()) for _ in range(6)]
        await asyncio.sleep(0.2)
        swap = await app.client.post(
            "/admin/reload", json={"model": str(onnx_pair[1]), "challenger": str(onnx_pair[0])}, headers=TOKEN
        )
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)
        return statuses, swap.json()

    statuses, state = app.run(load_and_swap())
    assert len(statuses) > 20 and set(statuses) == {200}
    assert state["champion"]["name"] == "multilabel-1"  # type: ignore[index]
    assert app.request("POST", "/v1/predict", content=image).json()["model"]["name"] == "multilabel-1"
    bad = app.request("POST", "/admin/reload", json={"model": "/no/such.onnx"}, headers=TOKEN)
    assert bad.status_code == 404 and "no/such.onnx" in bad.json()["error"]
    assert app.request("POST", "/v1/predict", content=image).status_code == 200
