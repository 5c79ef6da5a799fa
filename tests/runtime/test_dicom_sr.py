"""DICOM SR answers: a TID 1500 report on a tiny synthetic radiograph, read back by highdicom, valid for dciodvfy."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from radflow.data.dicom import write_dicom
from radflow.errors import DataError
from radflow.runtime.dicom_seg import PRIVATE_SCHEME
from radflow.runtime.dicom_sr import AI_STATEMENT, build_dicom_sr, encode_dicom_sr, new_uid, ucum_unit
from tests.runtime.test_dicom_seg import SOURCE_ATTRIBUTES, check_with_dciodvfy

ROWS, COLUMNS = 48, 64
ROOT = "1.2.826.0.1.3680043.10.999."
ANSWER = {
    "model": {"name": "cxr-small", "version": "3", "alias": "champion"},
    "findings": [
        {"label": "Pneumothorax", "probability": 0.91, "positive": True, "threshold": 0.5},
        {"label": "Support Devices", "probability": 0.12, "positive": False, "threshold": 0.4},
        {"label": "Fracture", "probability": 0.02, "positive": False, "threshold": None, "untrained": True},
    ],
    "boxes": [{"label": "Nodule", "score": 0.77, "box": [4.0, 6.0, 30.5, 40.0]}],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    path = tmp_path_factory.mktemp("sr") / "source.dcm"
    stored = np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS) % 4096
    write_dicom(path, stored, bits_stored=12, attributes=SOURCE_ATTRIBUTES, uid_seed="sr-test")
    return pydicom.dcmread(path)


def _groups(report: hd.sr.ComprehensiveSR) -> list[Dataset]:
    root = report.ContentSequence
    measurements = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    return list(measurements.ContentSequence)


def _named(items: list[Dataset], value: str) -> list[Dataset]:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == value]


def test_report_holds_findings_boxes_and_the_ai_statement(source: Dataset, tmp_path: Path) -> None:
    sr = build_dicom_sr(source, ANSWER, model_name="cxr-small", model_version="3", uid_root=ROOT)
    data = encode_dicom_sr(sr)
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.SOPInstanceUID.startswith(ROOT) and back.SeriesInstanceUID.startswith(ROOT)
    assert back.VerificationFlag == "UNVERIFIED" and back.SeriesDescription == AI_STATEMENT
    # the reference and the patient/study the archive files it under; nothing else of the source
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.PatientID == source.PatientID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for keyword in ("PatientAge", "InstitutionName", "OtherPatientIDs", "PatientComments", "PixelData"):
        assert keyword not in back, keyword

    report = hd.sr.srread(io.BytesIO(data))
    groups = _groups(report)
    assert len(groups) == 4
    by_finding = {g.ContentSequence and _finding(g): g for g in groups}
    pneumothorax = by_finding["Pneumothorax"]
    probability = _named(list(pneumothorax.ContentSequence), "122157")[0]
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.91)
    assert probability.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert _finding_code(pneumothorax).CodingSchemeDesignator == "SCT"  # pydicom's SNOMED CT has it
    assert _evaluations(pneumothorax) == [codes.SCT.Present.value]
    support = by_finding["Support Devices"]
    assert _finding_code(support).CodingSchemeDesignator == PRIVATE_SCHEME
    assert _evaluations(support) == [codes.SCT.Absent.value]
    # a label without an operating point gets its probability and no decision
    fracture = by_finding["Fracture"]
    assert _evaluations(fracture) == []
    algorithm = [i for i in pneumothorax.ContentSequence if i.ValueType == "TEXT" and i.TextValue == "cxr-small"]
    assert algorithm, "the model's name identifies the algorithm"

    nodule = by_finding["Nodule"]
    region = next(i for i in nodule.ContentSequence if i.ValueType == "SCOORD")
    assert region.GraphicType == "POLYLINE"
    assert np.allclose(np.array(region.GraphicData).reshape(-1, 2)[[0, 2]], [[4.0, 6.0], [30.5, 40.0]])
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    statements = [
        t.TextValue
        for i in report.ContentSequence
        if i.ValueType == "CONTAINER"
        for t in i.get("ContentSequence", [])
        if t.ValueType == "TEXT"
    ]
    assert AI_STATEMENT in statements

    path = tmp_path / "sr.dcm"
    path.write_bytes(data)
    assert check_with_dciodvfy(path) == []


def _finding_code(group: Dataset) -> Dataset:
    item = _named(list(group.ContentSequence), "121071")[0]
    return item.ConceptCodeSequence[0]


def _evaluations(group: Dataset) -> list[str]:
    """The qualitative evaluations' values: CODE items named by the group's own finding."""
    concept = _finding_code(group).CodeValue
    return [i.ConceptCodeSequence[0].CodeValue for i in _named(list(group.ContentSequence), concept)]


def _finding(group: Dataset) -> str:
    return str(_finding_code(group).CodeMeaning)


def test_regression_value_in_its_unit(source: Dataset, tmp_path: Path) -> None:
    answer = {"prediction": {"value": 131.5, "unit": "months"}}
    sr = build_dicom_sr(source, answer, model_name="boneage", model_version="1", value_name="Bone age")
    group = _groups(hd.sr.srread(io.BytesIO(encode_dicom_sr(sr))))[0]
    value = next(i for i in group.ContentSequence if i.ValueType == "NUM")
    assert float(value.MeasuredValueSequence[0].NumericValue) == pytest.approx(131.5)
    assert value.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mo"
    path = tmp_path / "value.dcm"
    path.write_bytes(encode_dicom_sr(sr))
    assert check_with_dciodvfy(path) == []


def test_bad_answers_name_the_field(source: Dataset) -> None:
    with pytest.raises(DataError, match="nothing to report"):
        build_dicom_sr(source, {"model": {}}, model_name="m", model_version="1")
    with pytest.raises(DataError, match=r"findings\[0\] has no 'probability'"):
        build_dicom_sr(source, {"findings": [{"label": "A"}]}, model_name="m", model_version="1")
    with pytest.raises(DataError, match=r"boxes\[0\] 'box' .* not inside the 64 x 48"):
        build_dicom_sr(
            source, {"boxes": [{"label": "A", "score": 0.5, "box": [0, 0, 65, 10]}]}, model_name="m", model_version="1"
        )
    with pytest.raises(DataError, match="UID root"):
        new_uid("1.2.x.")
    assert ucum_unit("furlongs").value == "{furlongs}" and ucum_unit(None).value == "1"
