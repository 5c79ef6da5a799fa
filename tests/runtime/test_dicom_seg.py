"""DICOM SEG answers: built on a tiny synthetic radiograph, read back pixel-exact by highdicom, valid for dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from radflow.data.dicom import write_dicom
from radflow.errors import DataError
from radflow.runtime.dicom_seg import (
    PATIENT_STUDY_KEYWORDS,
    PRIVATE_SCHEME,
    build_dicom_seg,
    encode_dicom_seg,
    reference_attributes,
    structure_code,
)
from tests.debian import ensure_debian_package

ROWS, COLUMNS = 48, 64
STRUCTURES = ["Lung", "Heart", "Left Clavicle"]
SOURCE_ATTRIBUTES = {
    "PatientID": "P-0042",
    "PatientName": "Doe^Jane",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "StudyID": "S1",
    "AccessionNumber": "ACC1",
    "ReferringPhysicianName": "Ref^Doc",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.1",
    "PixelSpacing": [0.5, 0.5],
    "PatientOrientation": ["L", "F"],
    # Attributes a SEG has no need for: none of them may reach it.
    "PatientAge": "054Y",
    "InstitutionName": "Hospital",
    "OtherPatientIDs": "X-1",
    "PatientComments": "private note",
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    path = tmp_path_factory.mktemp("seg") / "source.dcm"
    stored = np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS) % 4096
    write_dicom(path, stored, bits_stored=12, attributes=SOURCE_ATTRIBUTES, uid_seed="seg-test")
    return pydicom.dcmread(path)


def masks() -> np.ndarray:
    out = np.zeros((3, ROWS, COLUMNS), dtype=bool)
    out[0, 5:40, 3:30] = True
    out[1, 20:35, 25:50] = True  # overlaps the lung: segments are independent
    return out  # the clavicle is empty


def check_with_dciodvfy(path: Path) -> list[str]:
    """dciodvfy's error lines about the file (none expected) after its warnings are set aside."""
    ensure_debian_package("dicom3tools", lambda: shutil.which("dciodvfy") is not None)
    done = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def test_binary_seg_references_the_source_and_reads_back_exactly(source: Dataset, tmp_path: Path) -> None:
    truth = masks()
    seg = build_dicom_seg(source, truth, STRUCTURES, model_name="unet-small", model_version="7")
    data = encode_dicom_seg(seg)
    back = hd.seg.segread(io.BytesIO(data))

    assert back.SegmentationType == "BINARY" and back.Modality == "SEG"
    assert back.SOPInstanceUID != source.SOPInstanceUID and back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.FrameOfReferenceUID == source.FrameOfReferenceUID
    referenced = back.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    for keyword in PATIENT_STUDY_KEYWORDS:
        assert back.get(keyword) == source.get(keyword), keyword
    for keyword in ("PatientAge", "InstitutionName", "OtherPatientIDs", "PatientComments"):
        assert keyword not in back, keyword

    labels = [s.SegmentLabel for s in back.SegmentSequence]
    assert labels == STRUCTURES
    algorithm = back.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("unet-small", "7")
    assert back.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "80891009"  # SCT Heart

    pixels = back.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2, 3])
    assert pixels.shape == (1, ROWS, COLUMNS, 3)
    assert np.array_equal(np.moveaxis(pixels[0], -1, 0).astype(bool), truth)

    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    assert check_with_dciodvfy(path) == []


def test_fractional_seg_keeps_probabilities_to_8_bits(source: Dataset, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((2, ROWS, COLUMNS)).astype(np.float32)
    seg = build_dicom_seg(source, probs, ["Lung", "Heart"], model_name="unet-small", model_version="7")
    data = encode_dicom_seg(seg)
    back = hd.seg.segread(io.BytesIO(data))
    assert (back.SegmentationType, back.SegmentationFractionalType) == ("FRACTIONAL", "PROBABILITY")
    pixels = back.get_pixels_by_source_instance([source.SOPInstanceUID], rescale_fractional=True)
    assert np.abs(np.moveaxis(pixels[0], -1, 0) - probs).max() <= 0.5 / 255 + 1e-6
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    assert check_with_dciodvfy(path) == []


def test_reference_attributes_keep_only_what_a_seg_needs(source: Dataset) -> None:
    ref = reference_attributes(source)
    assert ref.SOPInstanceUID == source.SOPInstanceUID and ref.Rows == ROWS
    assert "PixelData" not in ref and "PatientAge" not in ref and "InstitutionName" not in ref
    bare = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        setattr(bare, keyword, source.get(keyword))
    bare.Rows, bare.Columns = ROWS, COLUMNS
    minimal = reference_attributes(bare)
    assert minimal.PatientName is None and minimal.StudyDate is None  # Type 2: present, empty
    del bare.SOPInstanceUID
    with pytest.raises(DataError, match="lacks SOPInstanceUID"):
        reference_attributes(bare)


def test_structure_codes_and_bad_masks(source: Dataset) -> None:
    assert structure_code("Pleural Effusion").value == "60046008"
    assert structure_code("pneumothorax").value == "36118008"
    private = structure_code("Left Lung")
    assert (private.scheme_designator, private.value, private.meaning) == (PRIVATE_SCHEME, "LeftLung", "Left Lung")
    with pytest.raises(DataError, match=r"it is 48 x 64, so masks must be \(3, 48, 64\)"):
        build_dicom_seg(source, np.zeros((3, 64, 48), bool), STRUCTURES, model_name="m", model_version="1")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        build_dicom_seg(source, np.full((1, ROWS, COLUMNS), 1.5), ["Lung"], model_name="m", model_version="1")
