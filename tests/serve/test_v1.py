"""/v1 images, predictions, heatmaps and feedback, in process; every bad input is a 4xx and serving goes on."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from radflow.inference import ServeSettings
from radflow.runtime import RadflowModel
from tests.serve.harness import AppHarness, metric_value
from tests.serve.models import jpeg_bytes, png_bytes


@pytest.fixture(scope="module")
def app(onnx_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("v1")
    settings = ServeSettings(
        model=str(onnx_pair[0]),
        store_url=f"sqlite:///{root / 'serving.db'}",
        max_queue_delay_ms=150,
        max_body_bytes=200_000,
        max_pixels=500 * 500,
        allowed_content_types=["image/png", "image/jpeg"],
    )
    harness = AppHarness(settings)
    yield harness
    harness.close()


def test_predict_answers_like_the_runtime_and_logs_the_prediction(
    app: AppHarness, onnx_pair: tuple[Path, Path]
) -> None:
    image = png_bytes(3)
    multipart = app.request("POST", "/v1/predict", files={"file": ("x.png", image, "image/png")})
    raw = app.request("POST", "/v1/predict", content=image, headers={"content-type": "image/png"})
    assert multipart.status_code == raw.status_code == 200, multipart.text
    answer = multipart.json()
    expected = RadflowModel.load(onnx_pair[0]).predict_bytes(image)
    assert [f["label"] for f in answer["findings"]] == [f.label for f in expected.findings or []]
    assert [f["probability"] for f in answer["findings"]] == pytest.approx(
        [f.probability for f in expected.findings or []], abs=1e-5
    )
    assert raw.json()["findings"] == answer["findings"]
    assert answer["model"]["name"] == "multilabel-0" and answer["arm"] == "champion"
    assert answer["latency_ms"] > 0

    record = app.request("GET", f"/v1/predictions/{answer['id']}").json()
    assert record["outputs"]["findings"] == answer["findings"]
    assert record["input_sha256"] == answer["input_sha256"] == raw.json()["input_sha256"]
    assert "pixels" not in record and "patient" not in str(record).lower()

    heat = app.request("GET", f"/v1/predictions/{answer['id']}/heatmap.png", params={"label": "Pneumothorax"})
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heat.content)).size == (36, 40)  # drawn on the stored input, at its size
    stored = list(Path(app.service.require_store().inputs_dir or "").rglob("*.png"))
    assert len(stored) == 1  # the same image twice is stored once (content-addressed)
    assert stored[0].read_bytes() == image  # an 8-bit grey PNG of nothing but pixels is kept as sent


def test_feedback_is_stored_and_checked(app: AppHarness) -> None:
    pid = app.request("POST", "/v1/predict", content=jpeg_bytes(1)).json()["id"]
    ok = app.request(
        "POST",
        "/v1/feedback",
        json={"prediction_id": pid, "labels": {"Cardiomegaly": 1, "Pneumothorax": 0}, "reader": "r1", "comment": "ok"},
    )
    assert ok.status_code == 201, ok.text
    assert app.service.require_store().feedback(pid)[0]["labels"] == {"Cardiomegaly": 1, "Pneumothorax": 0}
    cases = {
        "unknown prediction": ({"prediction_id": "nope", "correct": True}, 404, "no prediction"),
        "unknown label": ({"prediction_id": pid, "labels": {"Cardiomegally": 1}}, 422, "Cardiomegally"),
        "label not 0/1": ({"prediction_id": pid, "labels": {"Cardiomegaly": 3}}, 422, "labels"),
        "nothing given": ({"prediction_id": pid}, 422, "at least one"),
        "value for a classifier": ({"prediction_id": pid, "value": 3.0}, 422, "value"),
    }
    for name, (body, status, words) in cases.items():
        answer = app.request("POST", "/v1/feedback", json=body)
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["error"], name
    assert (
        app.request(
            "POST", "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )


def _big_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((600, 600), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_bad_input_is_a_clear_4xx_and_serving_continues(app: AppHarness) -> None:
    dicom_like = b"\0" * 128 + b"DICM" + b"\0" * 64
    cases = {
        "garbage": (dict(content=b"hello"), 422, "not a PNG"),
        "empty": (dict(content=b""), 422, "empty"),
        "truncated png": (dict(content=png_bytes(0)[:60]), 422, "PNG"),
        "declared text": (dict(content=png_bytes(0), headers={"content-type": "text/plain"}), 415, "text/plain"),
        "dicom not allowed here": (dict(content=dicom_like), 415, "DICOM"),
        "too many pixels": (dict(content=_big_png()), 422, "pixels"),
        "too big": (dict(content=b"\x89PNG" + b"0" * 300_000), 413, "limit"),
        "multipart without file": (dict(files={"image": ("x.png", png_bytes(0), "image/png")}), 422, "'file'"),
        "bad sex": (dict(content=png_bytes(0), params={"sex": "X"}), 422, "sex"),
    }
    for name, (kwargs, status, words) in cases.items():
        answer = app.request("POST", "/v1/predict", **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["error"], (name, answer.json())
    assert app.request("GET", "/v1/predictions/unknown").status_code == 404
    pid = app.request("POST", "/v1/predict", content=png_bytes(5)).json()["id"]
    bad_label = app.request("GET", f"/v1/predictions/{pid}/heatmap.png", params={"label": "Cardio"})
    assert bad_label.status_code == 422 and "Cardiomegaly" in bad_label.json()["error"]
    assert app.request("GET", "/nowhere").json() == {"error": "Not Found"}
    assert app.request("POST", "/v1/predict", content=png_bytes(6)).status_code == 200


def _multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"b0und4ry", end: bytes = b"--\r\n") -> bytes:
    """A multipart body of (Content-Disposition value, content) parts, written by hand."""
    body = b"".join(b"--" + boundary + b"\r\nContent-Disposition: " + d + b"\r\n\r\n" + c + b"\r\n" for d, c in parts)
    return body + b"--" + boundary + end


def test_multipart_bodies_are_read_by_the_rules_of_a_form_parser(app: AppHarness) -> None:
    image = png_bytes(40)
    file_part = (b'form-data; name="file"; filename="a b.png"', image)
    typed = {"content-type": 'multipart/form-data; boundary="b0und4ry"'}
    good = {
        "preamble, a text field, epilogue": b"ignored preamble\r\n"
        + _multipart((b'form-data; name="note"', b"PA view"), file_part, end=b"--\r\nepilogue"),
        "transport padding after the boundary": _multipart(file_part).replace(b"b0und4ry\r\n", b"b0und4ry  \r\n", 1),
        "ten text fields": _multipart(*[(f'form-data; name="f{i}"'.encode(), b"x") for i in range(10)], file_part),
    }
    for name, body in good.items():
        answer = app.request("POST", "/v1/predict", content=body, headers=typed)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["input_sha256"] == hashlib.sha256(image).hexdigest(), name
    bad = {
        "no boundary declared": (_multipart(file_part), {"content-type": "multipart/form-data"}, 400, "boundary"),
        "no closing boundary": (_multipart(file_part)[:-20], typed, 400, "cut short"),
        "no part at all": (b"just text", typed, 400, "no part"),
        "two files": (_multipart(file_part, file_part), typed, 400, "one image"),
        "an unnamed part": (_multipart((b"form-data", b"x"), file_part), typed, 400, "name="),
        "eleven text fields": (
            _multipart(*[(f'form-data; name="f{i}"'.encode(), b"x") for i in range(11)], file_part),
            typed,
            400,
            "10 fields",
        ),
        "'file' as a text field": (_multipart((b'form-data; name="file"', image)), typed, 422, "'file'"),
    }
    for name, (body, headers, status, words) in bad.items():
        answer = app.request("POST", "/v1/predict", content=body, headers=headers)
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["error"], (name, answer.json())


def test_concurrent_requests_form_one_batch(app: AppHarness) -> None:
    before = metric_value(app.request("GET", "/metrics").text, "radflow_batch_size_count")

    async def burst() -> list[int]:
        answers = await asyncio.gather(*(app.client.post("/v1/predict", content=png_bytes(10 + i)) for i in range(8)))
        return [a.status_code for a in answers]

    assert app.run(burst()) == [200] * 8
    text = app.request("GET", "/metrics").text
    assert metric_value(text, "radflow_batch_size_count") - before == 1
    assert metric_value(text, "radflow_batch_size_bucket", le="6.0") < metric_value(
        text, "radflow_batch_size_bucket", le="8.0"
    )
    assert metric_value(text, "radflow_requests_total", endpoint="/v1/predict", arm="champion", status="200") >= 8
    assert metric_value(text, "radflow_label_score_count", label="Cardiomegaly") >= 8
    assert metric_value(text, "radflow_requests_in_flight") == 1  # the /metrics request itself


def test_internal_errors_are_logged_and_answered_generically(app: AppHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_scores: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(app.service.require_router().champion.model, "to_prediction", boom)
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    client = httpx.AsyncClient(transport=transport, base_url="http://radflow")
    answer = app.run(client.post("/v1/predict", content=png_bytes(30)))
    app.run(client.aclose())
    assert answer.status_code == 500
    assert "internal server error" in answer.json()["error"] and "secret" not in answer.text
    monkeypatch.undo()
    assert app.request("POST", "/v1/predict", content=png_bytes(30)).status_code == 200


def test_a_raw_image_with_curls_default_form_type_is_sniffed_and_accepted(app: AppHarness) -> None:
    """``curl --data-binary @x.png`` declares application/x-www-form-urlencoded; the bytes decide."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    for image in (png_bytes(8), jpeg_bytes(8)):
        answer = app.request("POST", "/v1/predict", content=image, headers=form)
        assert answer.status_code == 200, answer.text
        assert answer.json()["input_sha256"] == hashlib.sha256(image).hexdigest()
    refused = app.request("POST", "/v1/predict", content=b"name=chest&view=PA", headers=form)
    assert refused.status_code == 415
    assert "application/x-www-form-urlencoded" in refused.json()["error"] and "not a PNG" in refused.json()["error"]
    dicom_like = b"\0" * 128 + b"DICM" + b"\0" * 64  # an image, but not one this server allows
    assert app.request("POST", "/v1/predict", content=dicom_like, headers=form).status_code == 415


def test_dicom_seg_is_refused_for_a_classifier_and_for_a_non_dicom_upload(app: AppHarness, tmp_path: Path) -> None:
    from radflow.data.dicom import write_dicom

    path = tmp_path / "x.dcm"
    write_dicom(path, np.zeros((24, 24), np.uint16), bits_stored=12, uid_seed="v1-seg")
    dicom = app.request(
        "POST",
        "/v1/predict",
        params={"format": "dicom-seg"},
        content=path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert dicom.status_code == 422 and "segmentation models" in dicom.json()["error"], dicom.text
    assert "multilabel" in dicom.json()["error"]
    png = app.request("POST", "/v1/predict", content=png_bytes(2), headers={"accept": "application/dicom"})
    assert png.status_code == 415 and "a PNG image" in png.json()["error"]
    # JSON stays the answer when the client accepts it too.
    both = app.request(
        "POST", "/v1/predict", content=png_bytes(2), headers={"accept": "application/json, application/dicom"}
    )
    assert both.status_code == 200 and "findings" in both.json()
