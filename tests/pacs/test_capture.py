"""Heatmaps back to PACS: a positive finding's CAM as a DICOM Secondary Capture, dciodvfy-clean, landing in Orthanc."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset

from radflow.data.dicom import write_dicom
from radflow.errors import DataError
from radflow.pacs import DicomWebSource, ResultSettings, ResultWriter
from radflow.pacs.capture import NOT_DIAGNOSTIC, build_heatmap_capture, heatmap_labels, heatmap_overlays
from radflow.runtime import RadflowModel
from tests.orthanc import Orthanc, orthanc  # noqa: F401  (the fixture)
from tests.pacs.test_results import _metric, _run
from tests.runtime.test_dicom_seg import check_with_dciodvfy

ROOT = "1.2.826.0.1.3680043.10.778."
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042-PHI", "PatientBirthDate": "19700101"}
EXTRA = {"InstitutionName": "St Example Hospital", "OtherPatientIDs": "OTHER-77", "PatientAge": "055Y"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, bytes]:
    path = tmp_path_factory.mktemp("capture-src") / "source.dcm"
    stored = np.random.default_rng(5).integers(200, 3800, (48, 40), dtype=np.uint16)
    write_dicom(path, stored, bits_stored=12, uid_seed="capture", attributes={**PATIENT, **EXTRA, "Laterality": "L"})
    return pydicom.dcmread(path), path.read_bytes()


def test_a_heatmap_capture_references_its_source_and_copies_nothing_else(
    source: tuple[Dataset, bytes], onnx_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    ds, data = source
    model = RadflowModel.load(onnx_pair[0])
    label = model.labels[0]
    overlays = heatmap_overlays(model, data, [label])
    assert overlays[label].shape == (48, 40, 3) and overlays[label].dtype == np.uint8
    sc = build_heatmap_capture(ds, overlays[label], label, model_name="chest", model_version="4", uid_root=ROOT)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert check_with_dciodvfy(path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and back.PhotometricInterpretation == "RGB"
    assert back.StudyInstanceUID == ds.StudyInstanceUID and back.SeriesInstanceUID.startswith(ROOT)
    assert back.SOPInstanceUID.startswith(ROOT) and back.SeriesInstanceUID != ds.SeriesInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert NOT_DIAGNOSTIC in back.SeriesDescription and label in back.ImageComments
    assert back.BurnedInAnnotation == "NO" and back.Laterality == "L"
    assert np.array_equal(back.pixel_array, overlays[label])
    for keyword in PATIENT:  # the archive files it by these (as for SR and SEG) ...
        assert back.get(keyword) == ds.get(keyword), keyword
    for keyword in EXTRA:  # ... and nothing else of the source
        assert keyword not in back, keyword

    with pytest.raises(DataError, match="RGB uint8"):
        build_heatmap_capture(ds, np.zeros((4, 4)), label, model_name="m", model_version="1")
    answer = {"findings": [{"label": "A", "probability": 0.6, "positive": True}, {"label": "B", "positive": False}]}
    assert heatmap_labels(answer) == ["A"] and heatmap_labels({"prediction": 3.0}) == []


def test_heatmaps_go_to_pacs_with_the_sr_when_asked(
    orthanc: Orthanc,  # noqa: F811
    source: tuple[Dataset, bytes],
    onnx_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    ds, data = source
    model = RadflowModel.load(onnx_pair[0])
    labels = model.labels[:2]
    answer = {
        "model": {"name": "chest", "version": "4"},
        "findings": [{"label": x, "probability": 0.9 - i / 10, "positive": True} for i, x in enumerate(labels)],
    }
    registry = CollectorRegistry()
    writer = ResultWriter(ResultSettings(stow_url=orthanc.dicomweb_url, uid_root=ROOT, heatmaps=True), registry)
    deliveries = _run(writer.deliver(data, answer, model))
    assert [d.outcome for d in deliveries] == ["delivered"] * 3
    assert _metric(registry, kind="SC", outcome="delivered") == 2 and _metric(registry, kind="SR", outcome="delivered")
    # without the model (Kafka mode's gateway loads none) or without the setting: the SR alone
    plain = ResultWriter(ResultSettings(stow_url=orthanc.dicomweb_url, uid_root=ROOT), CollectorRegistry())
    assert len(_run(plain.deliver(data, answer, model))) == 1

    pacs = DicomWebSource(orthanc.dicomweb_url)
    assert len(pacs.series_of(ds.StudyInstanceUID, "OT")) == 1  # the answer's heatmaps in one series
    captures = [pydicom.dcmread(io.BytesIO(b)) for b in pacs.retrieve(ds.StudyInstanceUID)]
    captures = [c for c in captures if c.Modality == "OT"]
    assert sorted(c.ImageComments.split(" (")[0] for c in captures) == sorted(f"AI heatmap of {x}" for x in labels)
    assert sorted(int(c.InstanceNumber) for c in captures) == [1, 2]
    for i, capture in enumerate(captures):
        path = tmp_path / f"sc{i}.dcm"
        capture.save_as(path, enforce_file_format=True)
        assert check_with_dciodvfy(path) == []
