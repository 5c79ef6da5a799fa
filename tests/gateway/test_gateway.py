"""``radflow gateway``: real associations over loopback with pynetdicom's own SCU against a node on a free port."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pydicom
import pytest
from prometheus_client import generate_latest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import BasicTextSRStorage, Verification  # type: ignore[attr-defined]

from radflow.data.dicom import write_dicom
from radflow.errors import ConfigError
from radflow.gateway import Gateway, GatewaySettings, Rule, SeriesInfo, load_rules, route, study_hash
from radflow.gateway.assembly import Assembler
from radflow.inference import ServeSettings
from tests.serve.harness import metric_value

T = TypeVar("T")

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-4711-SECRET"
CALLING = "MODALITY1"


def make_instance(
    tmp: Path, study: str, series: str, index: int, *, modality: str = "DX", attributes: dict[str, Any] | None = None
) -> Dataset:
    """A 32x32 12-bit radiograph with a patient's name and ID, in the given study and series."""
    path = tmp / f"{series}-{index}.dcm"
    stored = (np.random.default_rng(index).integers(0, 4096, (32, 32))).astype(np.uint16)
    write_dicom(
        path,
        stored,
        bits_stored=12,
        uid_seed=f"{series}-{index}",
        attributes={
            "Modality": modality,
            "PatientName": PATIENT_NAME,
            "PatientID": PATIENT_ID,
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "BodyPartExamined": "CHEST",
            "SeriesDescription": "PA chest",
            **(attributes or {}),
        },
    )
    return pydicom.dcmread(path)


class Running:
    """A started gateway on its own event loop thread, driven from the synchronous test."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.run(gateway.start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(generate_latest(self.gateway.registry).decode(), name, **labels)

    def wait_scored(self, images: int, timeout: float = 20) -> None:
        """Wait until ``images`` images have been scored (ok or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.metric("radflow_gateway_images_scored_total", outcome="ok") + self.metric(
                "radflow_gateway_images_scored_total", outcome="failed"
            )
            if done >= images:
                return
            time.sleep(0.02)
        raise AssertionError(f"{images} images not scored within {timeout}s")

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.run(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture()
def serve(tmp_path: Path, onnx_pair: tuple[Path, Path]) -> ServeSettings:
    return ServeSettings(model=str(onnx_pair[0]), store_url=f"sqlite:///{tmp_path / 'serving.db'}", drift=False)


def start(serve: ServeSettings, **fields: Any) -> Running:
    settings = GatewaySettings(**{"port": 0, "allowed_aes": [CALLING], "stable_after_s": 0.2, **fields})
    return Running(Gateway(settings, serve))


@pytest.fixture()
def node(serve: ServeSettings) -> Iterator[Running]:
    running = start(serve)
    yield running
    running.close()


def associate(port: int, calling: str = CALLING, contexts: list[Any] | None = None) -> Any:
    ae = AE(ae_title=calling)
    for context in contexts or [*StoragePresentationContexts[:100], Verification]:
        ae.add_requested_context(context if isinstance(context, str) else context.abstract_syntax)
    return ae.associate("127.0.0.1", port, ae_title="RADFLOW")


def store_rows(db: Path) -> str:
    """Every row of every table of the store, as one text."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(repr(row) for t in tables for row in conn.execute(f"SELECT * FROM {t}"))


def test_echo_and_calling_ae_check(node: Running) -> None:
    assoc = associate(node.gateway.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()

    refused = associate(node.gateway.port, calling="INTRUDER")
    assert refused.is_rejected
    rejection = refused.acceptor.primitive
    # permanent rejection by the service user: calling AE title not recognised
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)
    wrong_called = AE(ae_title=CALLING)
    wrong_called.add_requested_context(Verification)
    misaddressed = wrong_called.associate("127.0.0.1", node.gateway.port, ae_title="OTHERNODE")
    assert misaddressed.is_rejected and misaddressed.acceptor.primitive.diagnostic == 0x07  # called AE not recognised
    assert node.metric("radflow_gateway_associations_total", outcome="rejected") == 2


def test_bad_instances_get_their_status_and_are_not_kept(node: Running, tmp_path: Path, serve: ServeSettings) -> None:
    study, series = generate_uid(), generate_uid()
    no_pixels = make_instance(tmp_path, study, series, 1)
    del no_pixels.PixelData
    truncated = make_instance(tmp_path, study, series, 2)
    truncated.PixelData = truncated.PixelData[:100]
    report = Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID = BasicTextSRStorage
    report.SOPInstanceUID = generate_uid()
    report.StudyInstanceUID, report.SeriesInstanceUID, report.Modality = study, series, "SR"
    report.PatientName = PATIENT_NAME
    no_study = make_instance(tmp_path, study, series, 3)
    del no_study.StudyInstanceUID

    # a data set that cannot be parsed: a sequence whose items are garbage, sent as the file's raw bytes
    good = tmp_path / "good.dcm"
    make_instance(tmp_path, study, series, 4).save_as(good, enforce_file_format=True)
    raw = good.read_bytes()
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(
        raw[: raw.find(b"\xe0\x7f\x10\x00")] + b"\x08\x00\x15\x11SQ\x00\x00\x10\x00\x00\x00\x01\x02\x03"
    )

    raw_sender = AE(ae_title=CALLING)  # the file's own transfer syntax only, so the SCU sends its bytes unparsed
    raw_sender.add_requested_context(no_pixels.SOPClassUID, ExplicitVRLittleEndian)
    assoc = raw_sender.associate("127.0.0.1", node.gateway.port, ae_title="RADFLOW")
    assert assoc.send_c_store(corrupt).Status == 0xC000
    assoc.release()

    assoc = associate(node.gateway.port)
    statuses = {
        name: assoc.send_c_store(ds)
        for name, ds in [("no_pixels", no_pixels), ("truncated", truncated), ("report", report), ("no_study", no_study)]
    }
    assoc.release()
    assert {k: v.Status for k, v in statuses.items()} == {
        "no_pixels": 0xA900,
        "truncated": 0xC001,
        "report": 0x0122,
        "no_study": 0xA900,
    }
    assert "Pixel Data" in statuses["no_pixels"].ErrorComment
    for outcome, count in [("no_pixel_data", 1), ("undecodable", 2), ("non_image", 1), ("mismatch", 1), ("stored", 0)]:
        assert node.metric("radflow_gateway_instances_total", outcome=outcome) == count, outcome
    assert node.gateway.assembler.pending == 0


def test_stable_study_is_scored_into_the_store_without_phi(
    node: Running, tmp_path: Path, serve: ServeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="radflow")
    study, series = generate_uid(), generate_uid()
    instances = [make_instance(tmp_path, study, series, i) for i in range(3)]
    assoc = associate(node.gateway.port)
    assert [assoc.send_c_store(ds).Status for ds in instances] == [0, 0, 0]
    assoc.release()
    # acknowledged, held until no new instance came for stable_after_s
    assert node.metric("radflow_gateway_images_scored_total", outcome="ok") == 0
    node.wait_scored(3)
    assert node.metric("radflow_gateway_series_total", outcome="scored", rule="default") == 1
    assert node.metric("radflow_gateway_studies_total", reason="stable") == 1
    node.close()

    db = Path(serve.resolved_store_url().removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        keys = [r[0] for r in conn.execute("SELECT study_key FROM predictions")]
        formats = {r[0] for r in conn.execute("SELECT input_format FROM predictions")}
    assert keys == [hashlib.sha256(study_hash(study).encode()).hexdigest()] * 3
    assert formats == {"dicom"}
    rows = store_rows(db)
    stored_files = b"".join(p.read_bytes() for p in serve.resolved_inputs_dir().rglob("*") if p.is_file())
    secrets = [PATIENT_NAME, PATIENT_ID, "Doe", study, series, *(str(ds.SOPInstanceUID) for ds in instances)]
    for secret in secrets:
        assert secret not in rows, secret
        assert secret.encode() not in stored_files, secret
        assert secret not in caplog.text, secret
    assert f"study {study_hash(study)[:12]}: 1 series, 3 instances, 3 scored" in caplog.text


def test_routing_rules_pick_the_model_or_drop_the_series(
    tmp_path: Path, serve: ServeSettings, onnx_pair: tuple[Path, Path]
) -> None:
    rules = [
        Rule(name="cr", modality=["CR"], model=str(onnx_pair[1])),
        Rule(name="chest", body_part=["CHEST"], series_description="^PA"),
    ]
    running = start(serve, rules=rules)
    study = generate_uid()
    cr, dx, knee = generate_uid(), generate_uid(), generate_uid()
    sent = [
        make_instance(tmp_path, study, cr, 1, modality="CR"),
        make_instance(tmp_path, study, dx, 2),
        make_instance(tmp_path, study, knee, 3, attributes={"BodyPartExamined": "KNEE"}),
    ]
    try:
        assoc = associate(running.gateway.port)
        assert [assoc.send_c_store(ds).Status for ds in sent] == [0, 0, 0]
        assoc.release()
        running.wait_scored(2)
        assert running.metric("radflow_gateway_series_total", outcome="scored", rule="cr") == 1
        assert running.metric("radflow_gateway_series_total", outcome="scored", rule="chest") == 1
        assert running.metric("radflow_gateway_series_total", outcome="unrouted", rule="") == 1
    finally:
        running.close()
    with sqlite3.connect(serve.resolved_store_url().removeprefix("sqlite:///")) as conn:
        models = [r for r in conn.execute("SELECT model_name, model_version FROM predictions")]
    # the CR series by the rule's model, the DX chest by the served one, the knee series by none
    assert len(models) == 2 and len(set(models)) == 2


def test_assembly_waits_for_a_quiet_study() -> None:
    now = [0.0]
    assembler = Assembler(0.2, study_hash, clock=lambda: now[0])
    info = SeriesInfo("DX", "CHEST", "", "1.2.840.10008.5.1.4.1.1.1.1")
    assembler.add("1.2.3", "1.2.3.1", "1.2.3.1.1", info, b"a")
    now[0] = 0.15
    assert assembler.take_stable() == ([], [])
    assembler.add("1.2.3", "1.2.3.2", "1.2.3.2.1", info, b"b")
    assembler.add("1.2.3", "1.2.3.2", "1.2.3.2.1", info, b"b again")  # a resend replaces, not adds
    now[0] = 0.3
    assert assembler.take_stable() == ([], [])  # 0.15 s since the last instance
    now[0] = 0.36
    (study,), old = assembler.take_stable()
    assert old == []
    assert study.key == study_hash("1.2.3") and study.instance_count == 2
    assert study.series["1.2.3.2"].instances["1.2.3.2.1"] == b"b again"
    assert assembler.pending == 0


def test_a_study_that_never_goes_quiet_is_taken_at_max_age() -> None:
    now = [0.0]
    assembler = Assembler(0.2, study_hash, max_age_s=1.0, clock=lambda: now[0])
    info = SeriesInfo("CT", "", "", "1.2.840.10008.5.1.4.1.1.2")
    for i in range(11):  # an instance every 0.1 s: never 0.2 s quiet
        now[0] = i / 10
        assembler.add("9", "9.1", f"9.1.{i}", info, b"x")
        stable, old = assembler.take_stable()
        assert stable == [] and (old == [] if now[0] < 1.0 else [s.instance_count for s in old] == [11])
    assert assembler.pending == 0


def test_assembly_holds_at_most_max_bytes() -> None:
    assembler = Assembler(0.0, study_hash, max_bytes=10, clock=lambda: 0.0)
    info = SeriesInfo("DX", "", "", "1.2.840.10008.5.1.4.1.1.1.1")
    assert assembler.add("1", "1.1", "1.1.1", info, b"123456")
    assert not assembler.add("1", "1.1", "1.1.2", info, b"12345")  # 11 bytes: refused, nothing added
    assert assembler.add("1", "1.1", "1.1.1", info, b"1234567890")  # a resend replaces: 10 bytes
    assert assembler.pending_bytes == 10
    assert [s.key for s in assembler.take_stable()[0]] == [study_hash("1")]  # taken: its bytes no longer count
    assert assembler.pending_bytes == 0 and assembler.add("2", "2.1", "2.1.1", info, b"12345")
    assert [s.key for s in assembler.take_all()] == [study_hash("2")]
    assert not assembler.add("3", "3.1", "3.1.1", info, b"1")  # closed at shutdown: the sender is told to retry


def test_a_full_gateway_answers_out_of_resources(tmp_path: Path, serve: ServeSettings) -> None:
    first = make_instance(tmp_path, generate_uid(), generate_uid(), 1)
    size_mb = len(first.PixelData) / 2**20
    running = start(serve, max_pending_mb=size_mb * 1.5, stable_after_s=30)
    try:
        assoc = associate(running.gateway.port)
        second = make_instance(tmp_path, generate_uid(), generate_uid(), 2)
        statuses = [assoc.send_c_store(ds).Status for ds in (first, second)]
        assoc.release()
        assert statuses == [0x0000, 0xA700]
        assert running.metric("radflow_gateway_instances_total", outcome="out_of_resources") == 1
    finally:
        running.close()  # the acknowledged study is still scored at shutdown
    with sqlite3.connect(serve.resolved_store_url().removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 1


def test_route_first_match_and_rule_files(tmp_path: Path) -> None:
    chest = SeriesInfo("DX", "chest", "PA erect", "1.2.840.10008.5.1.4.1.1.1.1")
    ct = SeriesInfo("CT", "CHEST", "axial", "1.2.840.10008.5.1.4.1.1.2")
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - {modality: [CR, DX], series_description: 'pa|ap', model: chest.onnx}\n"
        "  - {sop_class: CT Image Storage, score: false}\n"
    )
    rules = load_rules(path)
    assert [r.name for r in rules] == ["rule 1", "rule 2"]
    assert route(rules, chest) is rules[0]
    assert route(rules, ct) is rules[1]
    assert route(rules, SeriesInfo("MR", "", "", "1.2.840.10008.5.1.4.1.1.4")) is None
    assert route([], ct) is not None  # no rules: everything goes to the served model

    path.write_text("- {modality: DX, series_descripton: x}\n")
    with pytest.raises(ConfigError, match=r"rule 1, field 'series_descripton'"):
        load_rules(path)
    path.write_text("- {series_description: '(unclosed'}\n")
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_rules(path)


def test_settings_refuse_bad_ae_titles() -> None:
    with pytest.raises(ValueError, match="not a DICOM AE title"):
        GatewaySettings(ae_title="A-TITLE-LONGER-THAN-16")
    with pytest.raises(ValueError, match="not a DICOM AE title"):
        GatewaySettings(allowed_aes=[""])


def test_image_sop_classes_are_the_image_storage_ones() -> None:
    from pynetdicom import sop_class

    from radflow.gateway.node import is_image_storage

    images = ["ComputedRadiography", "DigitalXRay", "CT", "MR", "SecondaryCapture", "BreastProjectionXRay"]
    for name in images:
        uid = getattr(sop_class, f"{name}ImageStorage", None) or getattr(
            sop_class, f"{name}ImageStorageForPresentation"
        )
        assert is_image_storage(uid), name
    for name in ["BasicTextSRStorage", "EncapsulatedPDFStorage", "SegmentationStorage", "RawDataStorage"]:
        assert not is_image_storage(getattr(sop_class, name)), name


def test_a_destination_refusing_the_result_is_answered_with_its_status(node: Running, tmp_path: Path) -> None:
    """A DICOM node that refuses SRs (this gateway's own: 0x0122) -> outcome refused, status and comment kept."""
    from prometheus_client import CollectorRegistry, generate_latest

    from radflow.pacs import ResultSettings, ResultWriter

    source = make_instance(tmp_path, generate_uid(), generate_uid(), 0)
    answer = {
        "model": {"name": "m", "version": "1"},
        "findings": [{"label": "Effusion", "probability": 0.3, "positive": False, "threshold": 0.5}],
    }
    registry = CollectorRegistry()
    settings = ResultSettings(calling_ae=CALLING, destination_ae="RADFLOW", destination_port=node.gateway.port)
    [delivery] = node.run(ResultWriter(settings, registry).deliver(_part10(source), answer))
    assert (delivery.outcome, delivery.status) == ("refused", "0x0122")
    assert "not an image SOP class" in delivery.reason
    text = generate_latest(registry).decode()
    assert metric_value(text, "radflow_pacs_results_total", kind="SR", outcome="refused") == 1
    assert node.metric("radflow_gateway_instances_total", outcome="non_image") == 1


def _part10(ds: Dataset) -> bytes:
    import io

    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
