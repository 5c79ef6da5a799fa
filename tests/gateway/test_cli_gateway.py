"""``radflow gateway``: bad arguments are one line (exit 2); the real command receives, scores and stops on SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation, Verification  # type: ignore[attr-defined]
from typer.testing import CliRunner

from radflow.cli import app
from radflow.gateway import study_hash
from radflow.serve.server import free_port
from tests.gateway.test_gateway import CALLING, make_instance
from tests.kafka.topics import kafka_settings, read_topic, topic_env
from tests.tansu import TansuBroker, tansu  # noqa: F401  (the session's broker)


def _one_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["gateway", *args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_gateway_refuses_bad_arguments(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {modalty: DX}\n")
    assert "rule 1, field 'modalty'" in _one_line(["--model", "m.onnx", "--rules", str(rules)])
    assert "not a DICOM AE title" in _one_line(["--model", "m.onnx", "--ae-title", "X" * 17])
    assert "stable_after_s" in _one_line(["--model", "m.onnx", "--stable-after", "0"])
    assert "needs both its AE title and its port" in _one_line(["--model", "m.onnx", "--result-port", "104"])
    assert "UID root '1.2.x.'" in _one_line(["--model", "m.onnx", "--result-stow", "http://x/", "--uid-root", "1.2.x."])
    assert "need a result destination" in _one_line(["--model", "m.onnx", "--dead-letter", str(tmp_path)])
    assert "needs a DICOMweb root (--pull-from)" in _one_line(["--model", "m.onnx", "--pull-study", "1.2.3"])
    assert "not a DICOMweb root" in _one_line(["--model", "m.onnx", "--pull-from", "pacs:8042"])
    assert "give --kafka-bootstrap too" in _one_line(["--kafka-group-id", "gw"])
    assert "'nohost' is not host:port" in _one_line(["--kafka-bootstrap", "nohost"])
    rules.write_text("- {modality: DX, model: other.onnx}\n")
    assert "routing rules name a model (rule 1)" in _one_line(["--kafka-bootstrap", "h:9092", "--rules", str(rules)])
    assert "answer_timeout_s" in _one_line(["--kafka-bootstrap", "h:9092", "--answer-timeout", "0"])


def test_gateway_command_scores_a_study_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, onnx_pair: tuple[Path, Path]
) -> None:
    port, db = free_port(), tmp_path / "serving.db"
    command = [
        sys.executable,
        "-c",
        "from radflow.cli import main; main()",
        "gateway",
        "--model",
        str(onnx_pair[0]),
        "--port",
        str(port),
    ]
    command += ["--allow-ae", CALLING, "--stable-after", "0.2", "--store-url", f"sqlite:///{db}"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "400"})
    try:
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(Verification)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        deadline = time.monotonic() + 60
        while True:  # until the node listens (models load first)
            assoc = ae.associate("127.0.0.1", port, ae_title="RADFLOW")
            if assoc.is_established or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert assoc.is_established, proc.stderr.read() if proc.stderr else ""
        study, series = generate_uid(), generate_uid()
        assert [assoc.send_c_store(make_instance(tmp_path, study, series, i)).Status for i in range(2)] == [0, 0]
        assoc.release()
        # Ctrl-C at once: the acknowledged, not yet stable study is still scored before exit
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"DICOM node RADFLOW on 127.0.0.1:{port}" in " ".join(err.split())
    assert "1 series, 2 instances, 2 scored" in err and study not in err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 2


def test_gateway_command_in_kafka_mode_publishes_without_a_model_and_stops_cleanly(
    tansu: TansuBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    kafka = kafka_settings(tansu)
    tansu.topics(kafka.topics())
    port = free_port()
    command = [sys.executable, "-c", "from radflow.cli import main; main()", "gateway", "--port", str(port)]
    command += ["--allow-ae", CALLING, "--stable-after", "0.2", "--kafka-bootstrap", kafka.bootstrap]
    env = {**os.environ, **topic_env(kafka), "COLUMNS": "400"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        deadline = time.monotonic() + 60
        while True:  # until the node listens (the producer connects first; no model loads)
            assoc = ae.associate("127.0.0.1", port, ae_title="RADFLOW")
            if assoc.is_established or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert assoc.is_established, proc.stdout.read() if proc.stdout else ""
        study = generate_uid()
        assert assoc.send_c_store(make_instance(tmp_path, study, generate_uid(), 0)).Status == 0
        assoc.release()
        published = asyncio.run(read_topic(kafka, kafka.images_topic, 1))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"publishing to {kafka.images_topic} on {kafka.bootstrap}" in " ".join(out.split())
    assert "1 series, 1 instances, 1 published" in out and study not in out
    assert [m["study"] for m in published] == [study_hash(study)]
