"""Ingest of DICOM sources: identity from headers, labels CSV, equivalence of encodings, no PHI written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from radflow.data.dataset import Dataset
from radflow.data.dicom import write_dicom
from radflow.data.ingest import SALT_FILE, IngestOptions, ingest, source_paths
from radflow.errors import DataError

PHI = {
    "PatientName": "DOE^JANE^PHANTOMPHI",
    "PatientBirthDate": "19450317",
    "InstitutionName": "ST PHANTOM GENERAL HOSPITAL",
    "PatientAddress": "12 PHANTOM LANE",
}


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(200, 3800, (40, 36), dtype=np.uint16)


def _write(path: Path, seed: int, patient: str, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    attributes = {"PatientID": patient, "PatientSex": "F", "PatientAge": "061Y", "ViewPosition": "PA", **PHI}
    write_dicom(
        path,
        kw.pop("stored", _image(seed)),  # type: ignore[arg-type]
        bits_stored=12,
        window=(2000.0, 3600.0),
        attributes=attributes,
        uid_seed=f"{patient}-{seed}",
        **kw,  # type: ignore[arg-type]
    )
    return path


def test_dicom_dir_with_labels_by_path_and_identity_from_headers(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    for i in range(4):
        _write(src / f"series{i // 2}" / f"img{i}", i, patient=f"MRN{i // 2:04d}")
    (src / "notes.txt").write_text("not an image")
    (src / "labels.csv").write_text("path,Nodule\nseries0/img0,1\nseries0/img1,0\nseries1/img2,\n")
    info = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=32))
    ds = Dataset.open(tmp_path / "ds")
    assert info["counts"]["images"] == 4 and info["counts"]["patients"] == 2
    assert ds.labels == ["Nodule"]
    paths = {k: p.relative_to(src.resolve()).as_posix() for k, p in source_paths(tmp_path / SALT_FILE).items()}
    by_path = {paths[k]: y for k, y in zip(ds.manifest["source_key"], ds.targets()[:, 0], strict=True)}
    assert by_path["series0/img0"] == 1 and by_path["series0/img1"] == 0
    assert np.isnan(by_path["series1/img2"]) and np.isnan(by_path["series1/img3"])
    assert set(ds.manifest["sex"]) == {"F"} and set(ds.manifest["age"]) == {61.0}
    assert set(ds.manifest["projection"]) == {"PA"} and set(ds.manifest["view"]) == {"frontal"}


def test_labels_csv_keyed_by_sop_instance_uid(tmp_path: Path) -> None:
    import pydicom

    src = tmp_path / "pacs"
    paths = [_write(src / f"{i}.dcm", i, patient="P1") for i in range(2)]
    uid = str(pydicom.dcmread(paths[1], stop_before_pixels=True).SOPInstanceUID)
    (tmp_path / "labels.csv").write_text(f"SOPInstanceUID,Effusion\n{uid},1\n")
    ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=32, labels_csv=tmp_path / "labels.csv"))
    ds = Dataset.open(tmp_path / "ds")
    labelled = ds.manifest.loc[ds.manifest["Effusion"] == 1, "source_key"].tolist()
    assert [source_paths(tmp_path / SALT_FILE)[k].name for k in labelled] == ["1.dcm"]


def test_labels_csv_without_key_column_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    _write(src / "a.dcm", 0, patient="P1")
    (src / "labels.csv").write_text("file,Effusion\na.dcm,1\n")
    with pytest.raises(DataError, match=r"labels\.csv.*key column named SOPInstanceUID or path"):
        ingest(src, "dicom", tmp_path / "ds")


def test_monochrome1_and_compressed_copies_ingest_to_the_same_pixels(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    stored = _image(7)
    _write(src / "mono2.dcm", 7, patient="P1", stored=stored)
    _write(src / "rle.dcm", 7, patient="P1", stored=stored, transfer_syntax=RLELossless)
    _write(src / "j2k.dcm", 7, patient="P1", stored=stored, transfer_syntax=JPEG2000Lossless)
    # MONOCHROME1: stored values inverted, so the window centre moves to the mirrored value
    write_dicom(
        src / "mono1.dcm",
        (4095 - stored).astype(np.uint16),
        bits_stored=12,
        photometric="MONOCHROME1",
        window=(4095.0 - 2000.0, 3600.0),
        attributes={"PatientID": "P1"},
        uid_seed="mono1",
    )
    info = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=32))
    assert info["counts"]["images"] == 4 and not info["skipped"]
    ds = Dataset.open(tmp_path / "ds")
    pixels = ds.images(range(4)).astype(int)
    for other in pixels[1:]:
        assert np.abs(other - pixels[0]).max() <= 1


def test_no_phi_in_anything_ingest_writes(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    for i in range(3):
        _write(src / f"{i}.dcm", i, patient=f"MRN-SECRET-{i}")
    (src / "labels.csv").write_text("path,Nodule\n0.dcm,1\n1.dcm,0\n2.dcm,0\n")
    ingest(src, "dicom", tmp_path / "out" / "ds", IngestOptions(size=32))
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "manifest.parquet" for p in written)
    needles = [v.encode() for v in PHI.values()] + [b"MRN-SECRET", b"DOE^JANE", b"19450317"]
    for path in written:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path}"
    # parquet compresses, so also look at the decoded manifest cells
    cells = Dataset.open(tmp_path / "out" / "ds").manifest.to_numpy().ravel()
    text = "\n".join(map(str, cells)).encode()  # astype(str) keeps NaN a float in pandas 3
    for needle in needles:
        assert needle not in text


def _files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in sorted(root.rglob("*")) if p.is_file()]


def test_phi_in_folder_and_file_names_never_reaches_the_dataset(tmp_path: Path) -> None:
    """A hospital export whose folders and files are named after the patient: no path part is written."""
    from typer.testing import CliRunner

    from radflow.cli import app
    from radflow.data.split import split_dataset
    from tests.data.sources_fixtures import write_png

    name, mrn, born = "DOE^JANE^PHANTOMPHI", "MRN12345678", PHI["PatientBirthDate"]
    patient_dir = tmp_path / "export" / f"{name}_{mrn}" / f"{born}_DOE_JANE"
    src = tmp_path / "export"
    for i in range(3):
        _write(patient_dir / f"IMG_{mrn}_{i}.dcm", i, patient=mrn)
    _write(src / "SMITH^JOHN_MRN87654321" / "IMG_MRN87654321.dcm", 9, patient="MRN87654321")
    broken = patient_dir / f"{mrn}_broken.dcm"
    broken.write_bytes((patient_dir / f"IMG_{mrn}_0.dcm").read_bytes()[:-500])
    (patient_dir / f"copy_of_{mrn}.dcm").write_bytes((patient_dir / f"IMG_{mrn}_1.dcm").read_bytes())
    rel = f"{name}_{mrn}/{born}_DOE_JANE"
    (src / "labels.csv").write_text(f"path,Nodule\n{rel}/IMG_{mrn}_0.dcm,1\n{rel}/IMG_{mrn}_1.dcm,0\n{rel}/x.dcm,zz\n")
    ds = tmp_path / "datasets" / "ds"
    info = ingest(src, "dicom", ds, IngestOptions(size=32, workers=1))
    assert info["counts"]["images"] == 4 and info["counts"]["patients"] == 2
    errors = sorted(e["error"] for e in info["skipped"])
    assert [e.split(" ")[0] for e in errors] == ["bad", "corrupt", "duplicate"], errors
    split_dataset(ds, val=0.25, test=0.25)

    # a folder source whose class sub-folders hold patient-named folders and files, through the CLI
    folder = tmp_path / "pngs"
    write_png(folder / "normal" / f"{name}_{mrn}" / f"{born}.png", seed=1)
    write_png(folder / "abnormal" / f"{mrn}_DOE_JANE.png", seed=2)
    (folder / "abnormal" / f"{mrn}_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    folder_ds = tmp_path / "datasets" / "folder-ds"
    result = CliRunner().invoke(app, ["ingest", str(folder), "--format", "folder", "--out", str(folder_ds)])
    assert result.exit_code == 0, result.output
    assert "skipped 1" in result.output

    needles = [b"DOE^JANE", b"DOE_JANE", b"JANE", b"SMITH", b"MRN12345678", b"12345678", b"87654321", born.encode()]
    needles += [v.encode() for v in PHI.values()]
    written = _files_under(ds, folder_ds)
    assert {p.name for p in written} >= {"manifest.parquet", "dataset.json", "pixels-00000.npy"}
    for path in written:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} found in {path}"
    cells = [Dataset.open(d).manifest.astype(str).to_numpy().ravel() for d in (ds, folder_ds)]
    text = "\n".join(str(c) for group in cells for c in group).upper().encode()
    for needle in needles:
        assert needle not in text
    for needle in needles:
        assert needle.decode() not in result.output
    # the way back from key to file exists only beside the salt, outside the datasets
    located = source_paths(tmp_path / "datasets" / SALT_FILE)
    manifest = Dataset.open(ds).manifest
    assert {located[k].name for k in manifest["source_key"]} == {
        f"IMG_{mrn}_0.dcm",
        f"IMG_{mrn}_1.dcm",
        f"IMG_{mrn}_2.dcm",
        "IMG_MRN87654321.dcm",
    }
    assert broken.resolve() in set(located.values())


def test_reingest_reusing_pixels_keeps_identity_and_attributes_from_the_headers(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    for i in range(4):
        _write(src / f"img{i}.dcm", i, patient=f"MRN{i // 2:04d}")
    first = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=32, workers=1))
    before = Dataset.open(tmp_path / "ds").manifest
    again = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=32, workers=1))
    assert again["ingest"]["reused_images"] == 4
    assert again["version"] == first["version"] and again["counts"]["patients"] == 2
    after = Dataset.open(tmp_path / "ds").manifest
    assert after.equals(before) and set(after["sex"]) == {"F"} and set(after["projection"]) == {"PA"}


def test_images_smaller_than_the_training_size_are_reported_as_upsampled(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    _write(src / "big", 0, patient="MRN0001", stored=_image(0).repeat(2, axis=0))  # 80 x 36: longer side 80
    _write(src / "small", 1, patient="MRN0002")  # 40 x 36
    _write(src / "smaller", 2, patient="MRN0003", stored=_image(2)[:30, :20])  # longer side 30
    upsampled = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=64))["warnings"]
    assert [w for w in upsampled if "upsampled" in w] == [
        "2 image(s) are smaller than data.image_size (64 px; the smallest is 30 px on its longer side): they are "
        "upsampled to 64 x 64; pass --size (data.image_size) to train at their own resolution"
    ]
    native = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=30))["warnings"]
    assert not [w for w in native if "upsampled" in w]  # every longer side is at least 30 px


def test_pixel_spacing_is_kept_at_training_size_and_unknown_is_nan(tmp_path: Path) -> None:
    src = tmp_path / "pacs"
    src.mkdir()
    spacings = [{"PixelSpacing": [0.2, 0.3]}, {"ImagerPixelSpacing": [0.5, 0.5], "PixelSpacing": [0, 0]}, {}]
    for i, spacing in enumerate(spacings):
        attributes = {"PatientID": f"MRN{i}", **spacing}
        write_dicom(src / f"img{i}.dcm", _image(i), bits_stored=12, attributes=attributes, uid_seed=f"s{i}")
    for reingest in (False, True):  # the second ingest reuses the pixels and reads the headers again
        info = ingest(src, "dicom", tmp_path / "ds", IngestOptions(size=32, workers=1))
        assert info["ingest"]["reused_images"] == (3 if reingest else 0)
        ds = Dataset.open(tmp_path / "ds")
        spacing = ds.manifest[["spacing_row_mm", "spacing_col_mm"]].to_numpy()
        # 40 x 36 pixels pad to a 40-pixel square, resampled to 32: each pixel grows by 40 / 32
        known = sorted(tuple(row) for row in spacing[np.isfinite(spacing[:, 0])].round(6).tolist())
        assert known == [(0.25, 0.375), (0.625, 0.625)]
        assert int(np.isnan(spacing[:, 0]).sum()) == 1
        assert ds.spacing(range(3)) is None  # one unknown: distances in pixels for all
        finite = np.flatnonzero(np.isfinite(spacing[:, 0]))
        assert ds.spacing(finite).shape == (2, 2)  # type: ignore[union-attr]
