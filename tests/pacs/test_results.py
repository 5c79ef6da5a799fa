"""Results back to a real Orthanc: SR and SEG by STOW-RS found by QIDO-RS; a refusing PACS is recorded, never silent."""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset

from radflow.data.dicom import write_dicom
from radflow.errors import DataError
from radflow.pacs import DicomWebSource, ResultSettings, ResultWriter
from radflow.runtime.masks import encode_rle
from tests.orthanc import ORTHANC_AE, Orthanc, free_port, orthanc  # noqa: F401  (the fixture)
from tests.runtime.test_dicom_seg import check_with_dciodvfy
from tests.serve.harness import metric_value

ROOT = "1.2.826.0.1.3680043.10.777."
PATIENT = {"PatientName": "Roe^Richard", "PatientID": "MRN-0099-PHI", "PatientBirthDate": "19610203"}
ANSWER = {
    "model": {"name": "seg-small", "version": "2", "alias": "champion"},
    "findings": [{"label": "Pneumothorax", "probability": 0.8, "positive": True, "threshold": 0.5}],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, bytes]:
    path = tmp_path_factory.mktemp("pacs-src") / "source.dcm"
    stored = (np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 3) % 4096
    write_dicom(path, stored, bits_stored=12, uid_seed="pacs-results", attributes={**PATIENT, "StudyDate": "20250101"})
    return pydicom.dcmread(path), path.read_bytes()


def _metric(registry: CollectorRegistry, **labels: str) -> float:
    from prometheus_client import generate_latest

    return metric_value(generate_latest(registry).decode(), "radflow_pacs_results_total", **labels)


def test_sr_and_seg_by_stow_land_in_orthanc(orthanc: Orthanc, source: tuple[Dataset, bytes], tmp_path: Path) -> None:  # noqa: F811
    ds, data = source
    mask = np.zeros((32, 40), dtype=bool)
    mask[4:20, 6:30] = True
    answer = {**ANSWER, "structures": [{"structure": "Lung", "rle": encode_rle(mask)}]}
    registry = CollectorRegistry()
    writer = ResultWriter(ResultSettings(stow_url=orthanc.dicomweb_url, uid_root=ROOT), registry)

    deliveries = _run(writer.deliver(data, answer))

    assert [d.outcome for d in deliveries] == ["delivered", "delivered"]
    assert _metric(registry, kind="SR", outcome="delivered") == 1
    assert _metric(registry, kind="SEG", outcome="delivered") == 1
    pacs = DicomWebSource(orthanc.dicomweb_url)
    for modality in ("SR", "SEG"):
        series = pacs.series_of(ds.StudyInstanceUID, modality)
        assert len(series) == 1, modality
        assert series[0]["0020000E"]["Value"][0].startswith(ROOT)
    for result in pacs.retrieve(ds.StudyInstanceUID):
        back = pydicom.dcmread(io.BytesIO(result))
        path = tmp_path / f"{back.Modality}.dcm"
        path.write_bytes(result)
        assert check_with_dciodvfy(path) == [], back.Modality
        assert back.StudyInstanceUID == ds.StudyInstanceUID
        if back.Modality == "SEG":
            seg = hd.seg.Segmentation.from_dataset(back)
            assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
                ds.SOPInstanceUID
            )
            pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1])
            assert np.array_equal(pixels[0, :, :, 0].astype(bool), mask)


def test_a_refusing_pacs_is_counted_logged_and_dead_lettered(
    orthanc: Orthanc,  # noqa: F811
    source: tuple[Dataset, bytes],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, data = source
    registry = CollectorRegistry()
    dead = tmp_path / "dead"
    # Orthanc checks the called AE title: an association to another title is rejected
    wrong = ResultSettings(
        destination_ae="NOT" + ORTHANC_AE, destination_port=orthanc.dicom_port, dead_letter_dir=dead, timeout_s=30
    )  # the rejection comes at once; 5 s timed out once while a loaded CI machine ran other e2e tests beside it
    closed = ResultSettings(destination_ae=ORTHANC_AE, destination_port=free_port(), timeout_s=5)
    with caplog.at_level("WARNING", logger="radflow.pacs"):
        refused = _run(ResultWriter(wrong, registry).deliver(data, ANSWER))
        unreachable = _run(ResultWriter(closed, CollectorRegistry()).deliver(data, ANSWER))

    assert [(d.outcome, d.status) for d in refused] == [("refused", "association rejected")]
    assert [d.outcome for d in unreachable] == ["unreachable"]
    assert _metric(registry, kind="SR", outcome="refused") == 1
    records = [json.loads(line) for line in (dead / "dead-letter.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "association rejected" and records[0]["kind"] == "SR"
    kept = pydicom.dcmread(dead / records[0]["file"])
    assert kept.Modality == "SR"  # the result itself, ready to send again
    assert "SR refused by dicom:NOTORTHANC" in caplog.text and "not kept" in caplog.text
    # what radflow wrote beside the result names no one
    for text in [caplog.text, (dead / "dead-letter.jsonl").read_text()]:
        for value in PATIENT.values():
            assert value not in text and value.split("^")[0] not in text


def test_an_answer_without_results_is_a_clear_error(source: tuple[Dataset, bytes]) -> None:
    registry = CollectorRegistry()
    writer = ResultWriter(ResultSettings(stow_url="http://127.0.0.1:9/dicom-web"), registry)
    with pytest.raises(DataError, match="no DICOM result to send"):
        _run(writer.deliver(source[1], {"model": {"name": "m", "version": "1"}}))
    with pytest.raises(DataError, match="not a readable DICOM"):
        _run(writer.deliver(b"not dicom", ANSWER))


def _run(coro):  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.run(coro)


def test_studies_are_found_by_date_and_a_dead_pacs_is_a_clear_error(
    orthanc: Orthanc,  # noqa: F811
    tmp_path: Path,
) -> None:
    from datetime import datetime

    from radflow.pacs import DicomWebError, send_stow

    path = tmp_path / "dated.dcm"
    stored = np.zeros((16, 16), dtype=np.uint16)
    write_dicom(
        path, stored, bits_stored=12, uid_seed="dated", attributes={"StudyDate": "20230615", "StudyTime": "120000"}
    )
    ds = pydicom.dcmread(path)
    settings = ResultSettings(stow_url=orthanc.dicomweb_url)
    assert send_stow(ds, settings).outcome == "delivered"

    pacs = DicomWebSource(orthanc.dicomweb_url)
    assert ds.StudyInstanceUID in pacs.studies_since(datetime(2023, 6, 15, 11, 0))
    assert ds.StudyInstanceUID not in pacs.studies_since(datetime(2023, 6, 15, 13, 0))  # same day, later time
    assert ds.StudyInstanceUID not in pacs.studies_since(datetime(2023, 6, 16))
    assert [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in pacs.retrieve(ds.StudyInstanceUID)] == [
        ds.SOPInstanceUID
    ]

    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomWebError, match=f"QIDO-RS at {dead} failed"):
        DicomWebSource(dead, timeout_s=5).studies_since()
    assert send_stow(ds, ResultSettings(stow_url=dead, timeout_s=5)).outcome == "unreachable"
