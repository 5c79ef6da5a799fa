"""DICOM Segmentation (SEG) answers: a model's masks as a SEG instance that references the source radiograph.

A PACS or viewer files a SEG with its source only when the SEG names the same patient and study and
references the source instance, so the SEG carries exactly what that needs and nothing else of the
source. :func:`reference_attributes` is that selection; :func:`build_dicom_seg` hands highdicom
(which copies the Patient and General Study modules of whatever dataset it is given) that selection
alone, never the full source:

* referencing: ``SOPClassUID``, ``SOPInstanceUID``, ``StudyInstanceUID``, ``SeriesInstanceUID``,
  ``FrameOfReferenceUID`` (when the source has one), ``Modality``, ``Rows``, ``Columns``;
* ``PatientOrientation`` (the General Image module's Type 2C attribute of images without a patient
  orientation matrix, as radiographs are), empty when the source has none;
* the Patient module's Type 2 attributes highdicom requires: ``PatientName``, ``PatientID``,
  ``PatientBirthDate``, ``PatientSex``;
* the General Study module's Type 2 attributes it requires: ``StudyDate``, ``StudyTime``,
  ``StudyID``, ``AccessionNumber``, ``ReferringPhysicianName``; and ``SpecificCharacterSet`` so the
  names decode as in the source.

Type 2 attributes the source lacks are written empty. No pixel spacing is copied: the SEG has the
source's rows and columns and declares spatial locations preserved, so a viewer lays it on the
source's own grid (and a Pixel Measures item would also need a slice thickness, which a projection
radiograph does not have). Areas in mm^2 are in the JSON answer. The SEG is new: new Series and SOP Instance
UIDs, radflow as manufacturer, the model's name and version as the algorithm identification of
every segment (family "Artificial Intelligence", DCM 123110), one segment per structure.

The identifying attributes are in the answer because the requester's archive matches on them;
they are never logged nor written to paths by this module.

Segments are ``BINARY`` (masks) or ``FRACTIONAL`` ``PROBABILITY`` (maps in [0, 1], 8 bits). A
structure whose name pydicom's SNOMED CT dictionary knows (``Lung``, ``Heart``, ``Pneumothorax``,
``Pleural Effusion``, ``Nodule``, ...) gets that code as its segmented property type; other names
get a code of the private scheme ``99RADFLOW`` (value = the name's keyword, meaning = the name).
The category is SCT "Anatomical Structure", or "Morphologically Abnormal Structure" for lesion
structures.

Torch-free: the serving runtime imports this module (highdicom is imported when a SEG is built).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from radflow.errors import DataError

if TYPE_CHECKING:
    from highdicom.seg import Segmentation

__all__ = [
    "PATIENT_STUDY_KEYWORDS",
    "PRIVATE_SCHEME",
    "REFERENCE_KEYWORDS",
    "build_dicom_seg",
    "encode_dicom_seg",
    "reference_attributes",
    "structure_code",
]

REFERENCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "Rows",
    "Columns",
    "SpecificCharacterSet",
)
"""Attributes copied when the source has them: the reference and its character set."""
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientOrientation",
)
"""Type 2 attributes of the Patient, General Study and General Image modules: copied, or written empty."""
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns")
PRIVATE_SCHEME = "99RADFLOW"
"""Coding scheme of structures SNOMED CT has no code for in pydicom's dictionary."""
DEFAULT_SERIES_NUMBER = 900
"""Series number of the SEG: high, so viewers list it after the acquired series."""


def reference_attributes(source: Dataset) -> Dataset:
    """A new dataset holding only the source attributes a SEG needs (module docstring); the rest is dropped."""
    missing = [kw for kw in _REQUIRED if kw not in source or source[kw].value in (None, "")]
    if missing:
        raise DataError(f"the source DICOM lacks {', '.join(missing)}; a DICOM SEG must reference its source by them.")
    out = Dataset()
    for keyword in REFERENCE_KEYWORDS + PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            out[keyword] = source[keyword]
        elif keyword in PATIENT_STUDY_KEYWORDS:
            setattr(out, keyword, None)
    return out


def _keyword(name: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in re.findall(r"[A-Za-z0-9]+", name))


def structure_code(name: str) -> Code:
    """The segmented property type of a structure: SNOMED CT from pydicom's dictionary, else ``99RADFLOW``."""
    from pydicom.sr.codedict import codes

    keyword = _keyword(name)
    try:
        code: Code = getattr(codes.SCT, keyword)
        return code
    except AttributeError:
        return Code(value=keyword[:16] or "Structure", scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def build_dicom_seg(
    source: Dataset,
    masks: np.ndarray,
    structures: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    lesion_structures: Sequence[str] = (),
    series_number: int = DEFAULT_SERIES_NUMBER,
    software_version: str | None = None,
) -> Segmentation:
    """A SEG of ``masks`` ``(K, Rows, Columns)`` on ``source`` (a parsed DICOM radiograph, pixels not needed).

    Boolean (or 0/1 integer) masks make a ``BINARY`` SEG, float maps in [0, 1] a ``FRACTIONAL``
    ``PROBABILITY`` one. The masks are at the source's resolution
    (:func:`radflow.runtime.masks.original_masks`).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    ref = reference_attributes(source)
    masks = np.asarray(masks)
    rows, columns = int(ref.Rows), int(ref.Columns)
    if masks.ndim != 3 or masks.shape[1:] != (rows, columns):
        raise DataError(
            f"masks of shape {masks.shape} do not fit the source DICOM: it is {rows} x {columns}, "
            f"so masks must be ({len(structures)}, {rows}, {columns})."
        )
    if masks.shape[0] != len(structures) or not structures:
        raise ValueError(f"{masks.shape[0]} masks for {len(structures)} structures.")
    fractional = np.issubdtype(masks.dtype, np.floating)
    if fractional and not (np.isfinite(masks).all() and masks.min() >= 0.0 and masks.max() <= 1.0):
        raise ValueError("fractional masks must be probabilities in [0, 1].")
    if not fractional and masks.size and not np.isin(masks, (0, 1)).all():
        raise ValueError("binary masks must hold only 0 and 1 (or booleans).")

    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, version=model_version, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=(
                codes.SCT.MorphologicallyAbnormalStructure
                if name in lesion_structures
                else codes.SCT.AnatomicalStructure
            ),
            segmented_property_type=structure_code(name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(structures, start=1)
    ]
    # (1, Rows, Columns, K): one frame (the radiograph), the segments along the last axis.
    pixels = np.moveaxis(masks, 0, -1)[None]
    pixels = pixels.astype(np.float32) if fractional else pixels.astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=[ref],
        pixel_array=pixels,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="radflow",
        manufacturer_model_name=model_name[:64],
        software_versions=software_version or _radflow_version(),
        device_serial_number=model_version[:64] or "unversioned",
        series_description=f"{model_name} segmentation"[:64],
        omit_empty_frames=False,
    )
    # highdicom leaves the General Image module's Type 2C PatientOrientation out; radiographs need it.
    seg.PatientOrientation = ref.PatientOrientation
    return seg


def encode_dicom_seg(seg: Dataset) -> bytes:
    """The Part-10 file bytes of a SEG (``application/dicom``)."""
    out = io.BytesIO()
    seg.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _radflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radflow")
    except PackageNotFoundError:
        return "unknown"
