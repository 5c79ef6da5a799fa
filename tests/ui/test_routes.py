"""The UI routes in process: pages and their assets, the history, the dashboard summary, input previews."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from radflow.store import PredictionRecord
from tests.serve.harness import AppHarness
from tests.serve.models import png_bytes
from tests.ui.conftest import ui_harness


def _predict(app: AppHarness, seed: int) -> dict:
    answer = app.request("POST", "/v1/predict", content=png_bytes(seed), headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_pages_and_every_asset_they_load_come_from_the_package(app: AppHarness) -> None:
    for path in ("/", "/dashboard"):
        page = app.request("GET", path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:
            got = app.request("GET", asset)
            assert got.status_code == 200, asset
            assert got.headers["content-type"].split(";")[0] in {"text/javascript", "text/css"}
        # Works offline: nothing is fetched from another origin.
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)


def test_static_files_outside_the_ui_folder_are_not_served(app: AppHarness) -> None:
    for path in ("/ui/static/routes.py", "/ui/static/..%2Froutes.py", "/ui/static/nope.js", "/ui/static/.hidden.js"):
        got = app.request("GET", path)
        assert got.status_code == 404, path
        assert "error" in got.json()


def test_history_lists_answered_predictions_newest_first_with_latest_feedback(app: AppHarness) -> None:
    first, second = _predict(app, 0), _predict(app, 1)
    label = first["findings"][0]["label"]
    store = app.service.require_store()
    store.log(  # a shadow row is not something a reader was shown
        PredictionRecord(
            model_name="shadow", model_version="9", model_alias=None, arm="challenger", outputs={}, shadow=True
        )
    )
    for body in ({"correct": True}, {"labels": {label: 0}, "correct": False, "comment": "missed"}):
        assert app.request("POST", "/v1/feedback", json={"prediction_id": first["id"], **body}).status_code == 201

    rows = app.request("GET", "/v1/ui/recent?limit=10").json()["predictions"]
    assert [r["id"] for r in rows] == [second["id"], first["id"]]
    assert rows[0]["feedback"] is None
    fb = rows[1]["feedback"]
    assert fb["count"] == 2 and fb["correct"] is False and fb["labels"] == {label: 0} and fb["comment"] == "missed"
    assert rows[1]["outputs"]["findings"][0]["threshold"] == first["findings"][0]["threshold"]
    assert rows[1]["created_at"].endswith("+00:00"), "times carry their zone so browsers show local time right"
    assert len(app.request("GET", "/v1/ui/recent?limit=1").json()["predictions"]) == 1


def test_summary_gives_online_accuracy_per_model_version(app: AppHarness) -> None:
    answers = [_predict(app, seed) for seed in range(3)]
    findings = answers[0]["findings"]
    agree = {f["label"]: int(f["positive"]) for f in findings}
    flipped = {**agree, findings[0]["label"]: 1 - agree[findings[0]["label"]]}
    posts = [
        {"prediction_id": answers[0]["id"], "labels": agree, "correct": True},
        {"prediction_id": answers[1]["id"], "correct": False},
        {"prediction_id": answers[2]["id"], "labels": {}, "correct": True},
    ]
    for body in posts:
        assert app.request("POST", "/v1/feedback", json=body).status_code == 201
    # A reader's later correction replaces their first answer.
    app.request("POST", "/v1/feedback", json={"prediction_id": answers[0]["id"], "labels": flipped, "correct": True})

    for _ in range(3):
        summary = app.request("GET", "/v1/ui/summary").json()
    (row,) = summary["feedback"]
    assert row["predictions"] == 3 and row["with_feedback"] == 3
    assert row["accuracy"] == 2 / 3
    assert row["label_agreement"] == (len(findings) - 1) / len(findings)
    assert row["auroc"] is None, "one reader-labelled image per label cannot rank anything"
    assert summary["metrics"]["requests"] == 3, "polling the summary is not inference traffic"
    assert summary["routing"]["champion"]["served"] == 3
    assert summary["admin_enabled"] is False


def test_preview_is_the_stored_input_as_png(app: AppHarness) -> None:
    answer = _predict(app, 4)
    got = app.request("GET", f"/v1/ui/predictions/{answer['id']}/image.png")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(got.content)).size == (36, 40)  # png_bytes is 40 rows x 36 columns
    missing = app.request("GET", "/v1/ui/predictions/no-such-id/image.png")
    assert missing.status_code == 404 and "no-such-id" in missing.json()["error"]


def test_without_stored_inputs_the_preview_says_why(ui_model: Path, tmp_path: Path) -> None:
    app = ui_harness(ui_model, tmp_path, store_inputs=False)
    try:
        answer = _predict(app, 0)
        got = app.request("GET", f"/v1/ui/predictions/{answer['id']}/image.png")
        assert got.status_code == 404 and "store_inputs" in got.json()["error"]
    finally:
        app.close()


def test_models_view_explains_a_file_served_model(app: AppHarness) -> None:
    body = app.request("GET", "/v1/ui/models").json()
    assert body["routing"]["champion"]["labels"] == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
    assert body["registry"] is None and "not registry versions" in body["registry_note"]


def test_registry_versions_show_aliases_and_headline_metrics(tmp_path: Path) -> None:
    from radflow.tracking import client
    from radflow.ui.summary import registry_versions

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = client(uri, create=True)
    mlflow.create_registered_model("chest")
    for n in (1, 2):
        mlflow.create_model_version("chest", f"file://{tmp_path}/m{n}", tags={"test_macro_auroc": f"0.{80 + n}"})
    mlflow.set_registered_model_alias("chest", "champion", "1")
    mlflow.set_registered_model_alias("chest", "challenger", "2")

    out = registry_versions("chest", uri)
    assert [v["version"] for v in out["versions"]] == ["2", "1"]
    assert out["versions"][0]["aliases"] == ["challenger"] and out["versions"][1]["aliases"] == ["champion"]
    assert out["versions"][1]["tags"] == {"test_macro_auroc": "0.81"}


def test_summary_auroc_ranks_probabilities_against_reader_labels(app: AppHarness) -> None:
    a, b = _predict(app, 5), _predict(app, 6)
    label = a["findings"][0]["label"]
    prob = {x["id"]: x["findings"][0]["probability"] for x in (a, b)}
    assert prob[a["id"]] != prob[b["id"]]
    high = max(prob, key=lambda k: prob[k])
    for pid in prob:
        body = {"prediction_id": pid, "labels": {label: int(pid == high)}}
        assert app.request("POST", "/v1/feedback", json=body).status_code == 201
    (row,) = app.request("GET", "/v1/ui/summary").json()["feedback"]
    assert row["auroc"] == 1.0
    app.request("POST", "/v1/feedback", json={"prediction_id": high, "labels": {label: 0}})
    app.request("POST", "/v1/feedback", json={"prediction_id": min(prob, key=lambda k: prob[k]), "labels": {label: 1}})
    (row,) = app.request("GET", "/v1/ui/summary").json()["feedback"]
    assert row["auroc"] == 0.0, "the latest answers count: now the model ranks them the wrong way round"
