"""A segmentation model served in process: structures as JSON, masks as PNG from the logged RLE, DICOM SEG answers."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from radflow.data.decode import decode_image
from radflow.data.dicom import write_dicom
from radflow.data.preprocess import to_model_input
from radflow.inference import ServeSettings
from radflow.runtime import RadflowModel
from radflow.runtime.masks import decode_rle
from tests.serve.harness import AppHarness
from tests.serve.models import make_onnx, png_bytes

PATIENT = {"PatientID": "P-0042", "PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "PatientAge": "054Y"}


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("seg-model"), task="segmentation", n=24)


@pytest.fixture(scope="module")
def app(seg_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppHarness]:
    root = tmp_path_factory.mktemp("seg-serve")
    settings = ServeSettings(
        model=str(seg_model),
        store_url=f"sqlite:///{root / 'serving.db'}",
        drift_min_window=10,
        drift_window=50,
    )
    harness = AppHarness(settings)
    yield harness
    harness.close()


def _dicom(tmp_path: Path, rows: int = 30, columns: int = 44) -> bytes:
    stored = (np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) * 7) % 4096
    path = tmp_path / "source.dcm"
    write_dicom(path, stored, bits_stored=12, attributes={**PATIENT, "PixelSpacing": [0.2, 0.4]}, uid_seed="seg")
    return path.read_bytes()


def test_predict_answers_structures_at_the_input_size_and_logs_them(app: AppHarness, seg_model: Path) -> None:
    image = png_bytes(3, shape=(40, 24))
    response = app.request("POST", "/v1/predict", content=image)
    assert response.status_code == 200, response.text
    answer = response.json()
    model = RadflowModel.load(seg_model)
    expected = model.predict_bytes(image).to_dict()["structures"]
    assert [s["structure"] for s in answer["structures"]] == model.labels
    assert answer["structures"] == expected  # the served answer is the runtime's, at 40 x 24
    assert all(s["rle"]["size"] == [40, 24] and s["area_mm2"] is None for s in answer["structures"])
    record = app.request("GET", f"/v1/predictions/{answer['id']}").json()
    assert record["outputs"] == {"structures": expected}


def test_mask_png_is_the_logged_rle_pixel_for_pixel(app: AppHarness) -> None:
    answer = app.request("POST", "/v1/predict", content=png_bytes(5, shape=(28, 36))).json()
    pid = answer["id"]
    masks = np.stack([decode_rle(s["rle"]) for s in answer["structures"]])
    route = f"/v1/predictions/{pid}/mask.png"
    for k, entry in enumerate(answer["structures"]):
        response = app.request("GET", route, params={"label": entry["structure"]})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        np.testing.assert_array_equal(pixels, masks[k].astype(np.uint8) * 255)
    label_image = np.asarray(Image.open(io.BytesIO(app.request("GET", route).content)))
    assert label_image.shape == (28, 36)
    for k in range(len(masks)):
        np.testing.assert_array_equal((label_image >> k) & 1 == 1, masks[k])

    assert app.request("GET", "/v1/predictions/no-such-id/mask.png").status_code == 404
    name = answer["structures"][0]["structure"]
    typo = app.request("GET", route, params={"label": name[:-1] + "x"})
    assert typo.status_code == 422 and f"Did you mean {name!r}" in typo.json()["error"]


def test_dicom_seg_answer_references_the_upload_and_reads_back_in_highdicom(app: AppHarness, tmp_path: Path) -> None:
    data = _dicom(tmp_path)
    assert decode_image(data).meta["spacing"] == (0.2, 0.4)
    as_json = app.request("POST", "/v1/predict", content=data).json()
    assert all(s["area_mm2"] == pytest.approx(s["area_px"] * 0.08) for s in as_json["structures"])

    for kwargs in ({"params": {"format": "dicom-seg"}}, {"headers": {"accept": "application/dicom"}}):
        response = app.request("POST", "/v1/predict", content=data, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
        seg = hd.seg.segread(io.BytesIO(response.content))
        source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SOPInstanceUID != source.SOPInstanceUID
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "PatientAge" not in seg  # only the referencing attributes travel
        # The SEG's segments are the logged answer's masks, at the source's rows and columns.
        record = app.request("GET", f"/v1/predictions/{response.headers['x-prediction-id']}").json()
        structures = record["outputs"]["structures"]
        numbers = list(range(1, len(structures) + 1))
        pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=numbers)[0]
        assert pixels.shape == (30, 44, len(structures))
        for k, entry in enumerate(structures):
            np.testing.assert_array_equal(pixels[..., k].astype(bool), decode_rle(entry["rle"]))
        assert "Doe" not in str(record) and "P-0042" not in str(record)

    png = app.request("POST", "/v1/predict", params={"format": "dicom-seg"}, content=png_bytes(1))
    assert png.status_code == 415 and "DICOM" in png.text


def test_drift_window_gets_area_and_confidence_features_of_dense_answers(app: AppHarness) -> None:
    grey = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(grey, format="PNG")
    # Random images, and flat grey ones on which this model predicts an empty right lung: no confidence there.
    for image in [png_bytes(seed, shape=(32, 32)) for seed in range(8)] + [grey.getvalue()] * 4:
        assert app.request("POST", "/v1/predict", content=image).status_code == 200
    monitoring = app.request("GET", "/v1/monitoring")
    assert monitoring.status_code == 200, monitoring.text
    (report,) = monitoring.json()["drift"]["models"].values()
    assert report["status"] in ("ok", "alert"), report
    outputs = {s["feature"] for s in report["scores"] if s["group"] == "output"}
    assert {f"area:{s}" for s in ("Left Lung", "Right Lung", "Lesion")} <= outputs
    assert "confidence:Left Lung" in outputs
    # the grey images' undefined confidences are left out, not scored as a shift (PSI) or NaN (KS)
    assert all(isinstance(s["score"], float) and np.isfinite(s["score"]) for s in report["scores"]), report["scores"]


def test_v2_returns_the_probability_maps_and_logs_masks_at_model_size(app: AppHarness, seg_model: Path) -> None:
    model = RadflowModel.load(seg_model)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(seed, shape=(32, 32))))) for seed in (20, 21)])
    tensor = to_model_input(pixels, model.spec)
    body = {
        "inputs": [{"name": "image", "shape": list(tensor.shape), "datatype": "FP32", "data": tensor.ravel().tolist()}]
    }
    arm = app.service.require_router().champion
    response = app.request("POST", f"/v2/models/{arm.name}/infer", json=body)
    assert response.status_code == 200, response.text
    (out,) = [o for o in response.json()["outputs"] if o["name"] == model.meta.output]
    maps = np.asarray(out["data"], np.float32).reshape(out["shape"])
    assert maps.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(maps, model.run(pixels, cam=False)[0], atol=1e-5)
    rows = [r for r in app.service.require_store().predictions() if r["input_format"] == "tensor"]
    assert len(rows) == 2 and all(s["rle"]["size"] == [32, 32] for r in rows for s in r["outputs"]["structures"])
