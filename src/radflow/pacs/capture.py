"""A finding's heatmap back to the PACS: the model's class activation map over the source as a DICOM Secondary Capture.

The overlay is the one the reader UI shows (:func:`radflow.runtime.cam.render_overlay`: the CAM of one
label, JET colours blended over the radiograph, at most :data:`radflow.runtime.cam.DEFAULT_MAX_SIDE` a
side), stored as an RGB Secondary Capture Image (highdicom ``SCImage``) in the source's study:

* identification as every radflow result (:mod:`radflow.runtime.dicom_seg`): highdicom is given
  :func:`~radflow.runtime.dicom_seg.reference_attributes` of the source alone, so only the referencing
  UIDs and the Type 2 patient/study attributes a PACS files it by are copied; nothing else of the source;
* new Series and SOP Instance UIDs under the site's UID root (one series for an answer's heatmaps, an
  instance per finding), series number :data:`SERIES_NUMBER`;
* ``ImageType`` ``DERIVED\\SECONDARY``, the source instance in ``SourceImageSequence`` (purpose "Source
  image for image processing operation"), radflow as manufacturer, the model's name and version;
* marked for what it is: the series description, ``ImageComments`` and ``DerivationDescription`` say
  "AI heatmap of <label> (<model> v<version>), not for diagnostic use"; ``BurnedInAnnotation`` NO (no
  text is drawn into the pixels), ``RecognizableVisualFeatures`` NO.

Torch-free: the CAM comes from the ONNX model that answered (``RadflowModel.cam``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from radflow.errors import DataError

if TYPE_CHECKING:
    from radflow.runtime import RadflowModel

__all__ = ["NOT_DIAGNOSTIC", "SERIES_NUMBER", "build_heatmap_capture", "heatmap_labels", "heatmap_overlays"]

NOT_DIAGNOSTIC = "not for diagnostic use"
SERIES_NUMBER = 902
"""After the SEG's 900 and the SR's 901."""


def heatmap_labels(answer: Mapping[str, Any]) -> list[str]:
    """The findings a heatmap is sent for: those the answer calls positive, most probable first."""
    found = [f for f in answer.get("findings") or [] if f.get("positive")]
    return [str(f["label"]) for f in sorted(found, key=lambda f: -float(f.get("probability", 0.0)))]


def heatmap_overlays(model: RadflowModel, source_bytes: bytes, labels: list[str]) -> dict[str, np.ndarray]:
    """``{label: RGB uint8 overlay}`` of each label's CAM on the source image (empty for a model without CAMs)."""
    import cv2

    from radflow.runtime.cam import render_overlay

    if not labels or not model.has_cam:
        return {}
    decoded = model.decode(source_bytes)
    out = {}
    for label in labels:
        bgr = render_overlay(decoded.pixels, model.cam(decoded, label))
        out[label] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out


def build_heatmap_capture(
    source: Dataset,
    overlay: np.ndarray,
    label: str,
    *,
    model_name: str,
    model_version: str,
    uid_root: str | None = None,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> Dataset:
    """The Secondary Capture of one RGB ``overlay`` ``(h, w, 3)`` uint8 of ``label`` on the parsed ``source``.

    The heatmaps of one answer share a series (``series_instance_uid``; none: a new one), one instance each.
    """
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian

    from radflow.runtime.dicom_seg import reference_attributes
    from radflow.runtime.dicom_sr import new_uid

    pixels = np.asarray(overlay)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise DataError(f"a heatmap overlay is an RGB uint8 image (h, w, 3), got {pixels.dtype} {pixels.shape}.")
    ref = reference_attributes(source)
    what = f"AI heatmap of {label} ({model_name} v{model_version}), {NOT_DIAGNOSTIC}"
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or new_uid(uid_root),
        series_number=SERIES_NUMBER,
        sop_instance_uid=new_uid(uid_root),
        instance_number=instance_number,
        manufacturer="radflow",
        # highdicom insists on an orientation for patient coordinates; the source's own (often empty) replaces it
        patient_orientation=_orientation(ref) or ("A", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.PatientOrientation = ref.PatientOrientation
    # General Series' Type 2C Laterality: the source's side when it states one (R/L), else empty
    side = str(source.get("Laterality") or source.get("ImageLaterality") or "")
    sc.Laterality = side if side in ("R", "L") else None
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = f"AI heatmap, {NOT_DIAGNOSTIC}"[:64]
    sc.ImageComments = what
    sc.DerivationDescription = what
    sc.BurnedInAnnotation = "NO"
    sc.RecognizableVisualFeatures = "NO"
    sc.ManufacturerModelName = model_name[:64]
    sc.DeviceSerialNumber = model_version[:64] or "unversioned"
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    sc.SourceImageSequence = DicomSequence([item])
    return sc


def _orientation(ref: Dataset) -> tuple[str, str] | None:
    value = ref.get("PatientOrientation")
    if value and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return None
