"""DICOM Structured Report answers: a model's findings as a TID 1500 Measurement Report on the source image.

A PACS files the report with its source, and a reader's viewer lists it beside the image, only when
the report names the same patient and study and references the source instance; so, as for a DICOM
SEG (:mod:`radflow.runtime.dicom_seg`), highdicom is given :func:`~radflow.runtime.dicom_seg.reference_attributes`
of the source alone (``REFERENCE_KEYWORDS`` + ``PATIENT_STUDY_KEYWORDS``), never the full source.

The report (a Comprehensive 3D SR, TID 1500 "Imaging Measurement Report") holds:

* the observer: a device, radflow, with the model's name and version as its model name and serial number;
* one measurement group (TID 1501) per finding of a classification answer: the finding as finding type
  (SNOMED CT from pydicom's dictionary where it has the name, else a ``99RADFLOW`` code, as for SEG
  segments), its probability (DCM 122157 "Probability", UCUM ``1``) and, for a label the model has an
  operating point for, a qualitative evaluation Present/Absent at that threshold;
* one group for a regression answer's value, in its unit (UCUM where radflow knows the unit);
* one planar ROI group (TID 1410) per detection box: a closed SCOORD polyline in the source's pixels
  referencing the source instance, the box's label as finding type and its score as probability;
* the model's name and version as the algorithm identification of every group and measurement;
* a Qualitative Evaluations text, :data:`AI_STATEMENT`, also the series description; the report is
  written unverified and partial (Verification Flag ``UNVERIFIED``): no one has reviewed it.

New Series and SOP Instance UIDs are made under ``uid_root`` (a site's own root, ending in ``.``;
default: pydicom's UUID-derived ``2.25.``). The identifying attributes are in the report because
the archive matches on them; this module never logs them nor writes them to paths.

Torch-free: the serving runtime imports this module (highdicom is imported when a report is built).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from radflow.errors import DataError
from radflow.runtime.dicom_seg import PRIVATE_SCHEME, reference_attributes, structure_code

if TYPE_CHECKING:
    from highdicom.sr import Comprehensive3DSR

__all__ = ["AI_STATEMENT", "build_dicom_sr", "check_uid_root", "encode_dicom_sr", "new_uid", "read_source", "ucum_unit"]

AI_STATEMENT = "AI-generated result, not reviewed"
"""The statement every report carries: what made it and that no reader has checked it."""
DEFAULT_SERIES_NUMBER = 901
"""Series number of the report: after the SEG's 900, so viewers list it after the acquired series."""
_UCUM = {
    "months": ("mo", "month"),
    "month": ("mo", "month"),
    "mo": ("mo", "month"),
    "years": ("a", "year"),
    "year": ("a", "year"),
    "days": ("d", "day"),
    "mm": ("mm", "millimeter"),
    "cm": ("cm", "centimeter"),
    "mm2": ("mm2", "square millimeter"),
    "%": ("%", "percent"),
}
_QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def new_uid(uid_root: str | None = None) -> str:
    """A new UID under ``uid_root`` (ending in ``.``, at most 64 characters in all); ``None``: ``2.25.`` + UUID."""
    from pydicom.uid import generate_uid

    if uid_root is None:
        return str(generate_uid(prefix=None))
    return str(generate_uid(prefix=check_uid_root(uid_root)))


def check_uid_root(uid_root: str) -> str:
    """``uid_root`` when it can prefix UIDs (numbers and dots, ending in ``.``, room for 10 more digits)."""
    parts = uid_root[:-1].split(".")
    if not uid_root.endswith(".") or len(uid_root) > 54 or not all(p.isdigit() and p == str(int(p)) for p in parts):
        raise DataError(
            f"UID root {uid_root!r} must be dot-separated numbers without leading zeros, ending in '.', "
            "at most 54 characters (e.g. 1.2.826.0.1.3680043.10.1234.)"
        )
    return uid_root


def ucum_unit(unit: str | None) -> Code:
    """The UCUM code of a regression unit: known names mapped (months -> ``mo``), others as a UCUM annotation."""
    if not unit:
        return Code("1", "UCUM", "no units")
    known = _UCUM.get(unit.strip().lower())
    if known is not None:
        return Code(known[0], "UCUM", known[1])
    # {text} is UCUM's annotation: dimensionless, with the unit's name kept for the reader
    return Code("{" + unit.strip()[:60] + "}", "UCUM", unit.strip()[:64])


def _value_code(name: str) -> Code:
    keyword = structure_code(name)
    if keyword.scheme_designator != PRIVATE_SCHEME:
        return keyword
    return Code(value=keyword.value, scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def build_dicom_sr(
    source: Dataset,
    answer: Mapping[str, Any],
    *,
    model_name: str,
    model_version: str,
    value_name: str = "Predicted value",
    uid_root: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    software_version: str | None = None,
) -> Comprehensive3DSR:
    """A TID 1500 report of ``answer`` (``InferenceService.predict``'s) on ``source`` (parsed, pixels not needed).

    ``answer`` holds ``findings`` (label, probability, positive, threshold), ``prediction`` (value, unit)
    and/or ``boxes`` (label, score, ``box`` = [x0, y0, x1, y1] in the source's pixels); ``value_name``
    names a regression value (the model's label, e.g. "Bone age").
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ref = reference_attributes(source)
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name[:64], version=model_version[:64] or "unversioned", family=codes.DCM.ArtificialIntelligence
    )
    groups: list[Any] = []
    for i, finding in enumerate(answer.get("findings") or []):
        label = _field(finding, "label", str, f"findings[{i}]")
        probability = _field(finding, "probability", float, f"findings[{i}]")
        concept = _value_code(label)
        evaluations = []
        if finding.get("threshold") is not None and not finding.get("untrained"):
            evaluations.append(
                hd.sr.QualitativeEvaluation(
                    name=concept, value=codes.SCT.Present if finding.get("positive") else codes.SCT.Absent
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=label[:64]),
                finding_type=concept,
                algorithm_id=algorithm,
                measurements=[_probability(hd, codes, probability, algorithm)],
                qualitative_evaluations=evaluations or None,
            )
        )
    prediction = answer.get("prediction")
    if prediction is not None:
        value = _field(prediction, "value", float, "prediction")
        name = _value_code(value_name)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=value_name[:64]),
                finding_type=name,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=name, value=value, unit=ucum_unit(prediction.get("unit")), algorithm_id=algorithm
                    )
                ],
            )
        )
    for i, box in enumerate(answer.get("boxes") or []):
        groups.append(_box_group(hd, codes, ref, box, i, algorithm, uid_root))
    if not groups:
        raise DataError("the answer holds no findings, prediction or boxes: there is nothing to report in a DICOM SR.")

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(uid_root),
            name="radflow",
            manufacturer_name="radflow",
            model_name=model_name[:64],
            serial_number=model_version[:64] or "unversioned",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    statement = hd.sr.ContainerContentItem(
        name=_QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    statement.ContentSequence = [
        hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=AI_STATEMENT, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    ]
    report[0].ContentSequence.append(statement)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[ref],
        content=report,
        series_instance_uid=new_uid(uid_root),
        series_number=series_number,
        sop_instance_uid=new_uid(uid_root),
        instance_number=1,
        manufacturer="radflow",
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=AI_STATEMENT,
        manufacturer_model_name=model_name[:64],
        software_versions=software_version or _radflow_version(),
        device_serial_number=model_version[:64] or "unversioned",
    )
    return sr


def _field(item: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(item, Mapping) or item.get(key) is None:
        raise DataError(f"answer {where} has no {key!r}: cannot report it in a DICOM SR.")
    try:
        value = kind(item[key])
    except (TypeError, ValueError):
        raise DataError(f"answer {where} {key!r} is {item[key]!r}, not a {kind.__name__}.") from None
    if kind is float and not np.isfinite(value):
        raise DataError(f"answer {where} {key!r} is {value}, not a finite number.")
    return value


def _probability(hd: Any, codes: Any, value: float, algorithm: Any) -> Any:
    if not 0.0 <= value <= 1.0:
        raise DataError(f"a probability of {value} is outside [0, 1].")
    return hd.sr.Measurement(name=codes.DCM.Probability, value=value, unit=codes.UCUM.NoUnits, algorithm_id=algorithm)


def _box_group(hd: Any, codes: Any, ref: Dataset, box: Any, i: int, algorithm: Any, uid_root: str | None) -> Any:
    where = f"boxes[{i}]"
    label = _field(box, "label", str, where)
    score = _field(box, "score", float, where)
    coords = box.get("box")
    try:
        x0, y0, x1, y1 = (float(v) for v in coords)
    except (TypeError, ValueError):
        raise DataError(f"answer {where} 'box' is {coords!r}, not [x0, y0, x1, y1] in pixels.") from None
    rows, columns = int(ref.Rows), int(ref.Columns)
    if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows):
        raise DataError(f"answer {where} 'box' {coords!r} is not inside the {columns} x {rows} source image.")
    polyline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=polyline,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(ref.SOPClassUID), referenced_sop_instance_uid=str(ref.SOPInstanceUID)
        ),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=f"{label} {i + 1}"[:64]),
        referenced_region=region,
        finding_type=_value_code(label),
        algorithm_id=algorithm,
        measurements=[_probability(hd, codes, score, algorithm)],
    )


def encode_dicom_sr(sr: Dataset) -> bytes:
    """The Part-10 file bytes of a report (``application/dicom``)."""
    out = io.BytesIO()
    sr.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read_source(data: bytes) -> Dataset:
    """The source DICOM of a report parsed from its Part-10 bytes, pixels left unread."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on a corrupt file; all mean the same here
        raise DataError(f"the source is not a readable DICOM file ({type(exc).__name__}).") from None


def _radflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radflow")
    except PackageNotFoundError:
        return "unknown"
