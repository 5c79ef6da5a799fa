"""Hospital integration end to end: dcmtk's storescu -> radflow gateway -> DICOM SR in a real Orthanc, and pull;
a segmentation model's masks as a DICOM SEG over gateway -> Kafka (Tansu) -> radflow worker -> Orthanc.

The modality is dcmtk's ``storescu``, the PACS Debian's Orthanc with its DICOMweb plugin: a study
sent to the gateway is scored and its SRs land in Orthanc (C-STORE), found there by QIDO-RS,
valid for dciodvfy and referencing the source instances; a study already in Orthanc is found by
polling (QIDO-RS), retrieved (WADO-RS), scored and reported the same way. The sources carry a fake
patient's name, id and birth date: none of them may appear in anything radflow wrote outside
the DICOM results (the store, the stored inputs, the logs).
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from radflow.gateway import Gateway, GatewaySettings
from radflow.inference import InferenceService, ServeSettings
from radflow.pacs import DicomWebSource, ResultSettings
from tests.gateway.test_gateway import CALLING, Running, make_instance
from tests.kafka.topics import kafka_settings, rows
from tests.orthanc import ORTHANC_AE, Orthanc, ensure_storescu, orthanc  # noqa: F401  (the fixture)
from tests.runtime.test_dicom_seg import check_with_dciodvfy
from tests.serve.models import make_onnx
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)

ROOT = "1.2.826.0.1.3680043.10.4242."
PHI = {"PatientName": "Smith^Alice", "PatientID": "MRN-31337-PHI", "PatientBirthDate": "19480512"}
TODAY = datetime.now().strftime("%Y%m%d")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pacs-e2e")


@pytest.fixture(scope="module")
def gateway(orthanc: Orthanc, onnx_pair: tuple[Path, Path], workdir: Path) -> Iterator[Running]:  # noqa: F811
    serve = ServeSettings(
        model=str(onnx_pair[0]), store_url=f"sqlite:///{workdir / 'store' / 'serving.db'}", drift=False
    )
    (workdir / "store").mkdir()
    settings = GatewaySettings(
        port=0,
        allowed_aes=[CALLING],
        stable_after_s=0.3,
        results=ResultSettings(
            destination_ae=ORTHANC_AE,
            destination_port=orthanc.dicom_port,
            uid_root=ROOT,
            dead_letter_dir=workdir / "dead-letter",
        ),
        pull_url=orthanc.dicomweb_url,
        poll_every_s=0.3,
        pull_since=datetime.now() - timedelta(days=1),
    )
    running = Running(Gateway(settings, serve))
    yield running
    running.close()


def _study(folder: Path, n: int) -> tuple[str, list[Path]]:
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    attributes = {**PHI, "StudyDate": TODAY, "StudyTime": "000001"}
    for i in range(n):
        make_instance(folder, study, series, i, attributes=attributes)
    return study, sorted(folder.glob("*.dcm"))


def _storescu(port: int, called: str, files: list[Path]) -> None:
    done = subprocess.run(
        [ensure_storescu(), "-aet", CALLING, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _srs(pacs: DicomWebSource, study: str, count: int, timeout: float = 20) -> list[pydicom.Dataset]:
    """The study's SRs in the PACS once QIDO-RS lists ``count`` SR series (retrieved by WADO-RS)."""
    deadline = time.monotonic() + timeout
    while len(pacs.series_of(study, "SR")) < count:
        assert time.monotonic() < deadline, f"{count} SR series not in the PACS within {timeout} s"
        time.sleep(0.1)
    return [d for d in map(pydicom.dcmread, map(io.BytesIO, pacs.retrieve(study))) if d.Modality == "SR"]


def _check_results(srs: list[pydicom.Dataset], sources: list[Path], folder: Path) -> None:
    by_sop = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in sources}
    referenced = set()
    for i, sr in enumerate(srs):
        assert sr.SOPInstanceUID.startswith(ROOT) and sr.VerificationFlag == "UNVERIFIED"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        series = evidence.ReferencedSeriesSequence[0]
        sop = series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        source = by_sop[sop]
        assert (evidence.StudyInstanceUID, series.SeriesInstanceUID) == (
            source.StudyInstanceUID,
            source.SeriesInstanceUID,
        )
        assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
        referenced.add(sop)
        path = folder / f"sr-{i}.dcm"
        path.write_bytes(_part10(sr))
        assert check_with_dciodvfy(path) == []
    assert referenced == set(by_sop)


def _part10(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_study_sent_by_storescu_comes_back_as_srs_in_orthanc(
    gateway: Running,
    orthanc: Orthanc,  # noqa: F811
    workdir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="radflow")
    study, files = _study(workdir / "pushed", 2)
    _storescu(gateway.gateway.port, "RADFLOW", files)
    gateway.wait_scored(2)

    srs = _srs(DicomWebSource(orthanc.dicomweb_url), study, 2)
    _check_results(srs, files, workdir)
    assert gateway.metric("radflow_pacs_results_total", kind="SR", outcome="delivered") >= 2
    _assert_no_phi(workdir, caplog.text)


def test_a_study_already_in_orthanc_is_polled_pulled_and_reported(
    gateway: Running,
    orthanc: Orthanc,  # noqa: F811
    workdir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="radflow")
    study, files = _study(workdir / "in-pacs", 1)
    _storescu(orthanc.dicom_port, ORTHANC_AE, files)

    srs = _srs(DicomWebSource(orthanc.dicomweb_url), study, 1)
    _check_results(srs, files, workdir)
    assert gateway.metric("radflow_gateway_studies_total", reason="pulled") >= 1
    assert gateway.metric("radflow_gateway_pulled_instances_total", outcome="taken") >= 1
    _assert_no_phi(workdir, caplog.text)


def _assert_no_phi(workdir: Path, logs: str) -> None:
    """Nothing radflow wrote outside the DICOM results names the patient: store, stored inputs, dead letters, logs."""
    written = [p for p in (workdir / "store").rglob("*") if p.is_file()]
    written += [p for p in (workdir / "dead-letter").rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert written, "the store wrote nothing: the check would be empty"
    for path in written:
        data = path.read_bytes()
        for value in PHI.values():
            assert value.encode() not in data and value.split("^")[0].encode() not in data, path.name
    for value in PHI.values():
        assert value not in logs and value.split("^")[0] not in logs


def test_a_segmentation_models_masks_come_back_over_kafka_as_a_seg_in_orthanc(
    tansu: TansuBroker,  # noqa: F811
    orthanc: Orthanc,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from radflow.kafka import Worker
    from radflow.runtime.masks import decode_rle

    caplog.set_level(logging.INFO, logger="radflow")
    kafka = kafka_settings(tansu, session_timeout_s=2)
    tansu.topics(kafka.topics())
    db = tmp_path / "store" / "serving.db"
    db.parent.mkdir()
    results = ResultSettings(destination_ae=ORTHANC_AE, destination_port=orthanc.dicom_port, uid_root=ROOT)
    settings = GatewaySettings(
        port=0,
        allowed_aes=[CALLING],
        stable_after_s=0.3,
        results=results,
        kafka=kafka,
        kafka_group_id=f"{kafka.group_id}.gateway",
        drain_s=2,
    )
    running = Running(Gateway(settings))  # Kafka mode: the worker holds the segmentation model
    model = make_onnx(tmp_path / "seg-model", task="segmentation", n=8)
    service = InferenceService(ServeSettings(model=str(model), store_url=f"sqlite:///{db}", drift=False))
    worker = Worker(kafka, service)
    stop = asyncio.Event()

    async def start_worker() -> asyncio.Task[None]:
        await service.start()
        await worker.start()
        return asyncio.create_task(worker.run(stop))

    task = running.run(start_worker())
    try:
        study, files = _study(tmp_path / "seg-study", 1)
        _storescu(running.gateway.port, "RADFLOW", files)
        pacs = DicomWebSource(orthanc.dicomweb_url)
        deadline = time.monotonic() + 25
        while not pacs.series_of(study, "SEG"):
            assert time.monotonic() < deadline, "no SEG series in the PACS within 25 s"
            time.sleep(0.1)
        found = [pydicom.dcmread(io.BytesIO(b)) for b in pacs.retrieve(study)]
        source = pydicom.dcmread(files[0])
        logged = service.require_store().predictions()
        assert len(logged) == 1 and len(rows(db)) == 1  # one image, one prediction row
        assert logged[0]["modality"] == "DX"  # from the gateway, in the message: the worklist's filter
    finally:
        running.loop.call_soon_threadsafe(stop.set)
        running.run(asyncio.wait_for(asyncio.shield(task), 30))
        running.run(service.stop())
        running.close()

    (seg_ds,) = [d for d in found if d.Modality == "SEG"]
    path = tmp_path / "seg.dcm"
    path.write_bytes(_part10(seg_ds))
    assert check_with_dciodvfy(path) == []
    seg = hd.seg.segread(path)
    assert seg.SOPInstanceUID.startswith(ROOT) and seg.StudyInstanceUID == study
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    structures = logged[0]["outputs"]["structures"]
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [s["structure"] for s in structures]
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
    for k, structure in enumerate(structures):  # the SEG holds the worker's masks at the source's size
        assert np.array_equal(pixels[0, :, :, k].astype(bool), decode_rle(structure["rle"], structure["structure"]))
    _assert_no_phi(tmp_path, caplog.text)
