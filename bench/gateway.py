"""Gateway latency: C-STORE of a study by dcmtk's storescu -> its SRs queryable (QIDO-RS) in a real Orthanc.

Two paths, one model (small_cnn at 256 px, random weights, exported as bench/serve.py does), studies of
``--instances`` 256x256 12-bit DX images sent one study at a time (``--studies`` of them):

1. in-process: the gateway scores each stable study itself (``InferenceService``) and sends the SRs;
2. Kafka mode: the gateway publishes the images to a Tansu broker, a ``Worker`` (same process, own
   consumer group) scores them, the gateway matches the answers and sends the SRs.

Orthanc and Tansu are started by the tests' own starters (tests/orthanc.py, tests/tansu.py: importable
without running pytest). A study's latency runs from just before storescu starts to the moment QIDO-RS
lists all its SR series (polled every 20 ms); it includes the gateway's ``stable_after_s`` (``--stable``,
0.3 s by default), the wait that tells a study is complete, which is printed beside the figures.

    .venv/bin/python bench/gateway.py [--studies 20] [--instances 2] [--stable 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.*: the PACS and broker the tests run

from pydicom.uid import generate_uid

from radflow.data.dicom import write_dicom
from radflow.gateway import Gateway, GatewaySettings
from radflow.inference import InferenceService, ServeSettings
from radflow.kafka import KafkaSettings, Worker
from radflow.pacs import DicomWebSource, ResultSettings
from serve import _export
from tests.e2e.test_pacs import _storescu
from tests.gateway.test_gateway import CALLING, Running
from tests.orthanc import ORTHANC_AE, Orthanc, orthanc_server
from tests.tansu import tansu_broker

from _table import print_ratio, print_table


def _study(folder: Path, instances: int) -> tuple[str, list[Path]]:
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    for i in range(instances):
        pixels = np.random.default_rng(i).integers(0, 4096, (256, 256)).astype(np.uint16)
        attributes = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "Modality": "DX"}
        write_dicom(folder / f"{i}.dcm", pixels, bits_stored=12, uid_seed=f"{series}-{i}", attributes=attributes)
    return study, sorted(folder.glob("*.dcm"))


def _latencies(running: Running, pacs: Orthanc, studies: int, instances: int, tmp: Path) -> list[float]:
    source = DicomWebSource(pacs.dicomweb_url)
    out = []
    for n in range(studies + 1):  # the first is a warm-up (model, connections, group), not counted
        study, files = _study(tmp / f"s{n}", instances)
        start = time.perf_counter()
        _storescu(running.gateway.port, "RADFLOW", files)
        deadline = time.monotonic() + 60
        while len(source.series_of(study, "SR")) < instances:
            if time.monotonic() > deadline:
                raise RuntimeError(f"study {n}: {instances} SRs not in Orthanc within 60 s")
            time.sleep(0.02)
        if n:
            out.append(time.perf_counter() - start)
    return out


def _results(pacs: Orthanc) -> ResultSettings:
    return ResultSettings(destination_ae=ORTHANC_AE, destination_port=pacs.dicom_port)


def _in_process(onnx: Path, pacs: Orthanc, args: argparse.Namespace, tmp: Path) -> list[float]:
    serve = ServeSettings(model=str(onnx), store_url=f"sqlite:///{tmp / 'direct.db'}", drift=False)
    settings = GatewaySettings(port=0, allowed_aes=[CALLING], stable_after_s=args.stable, results=_results(pacs))
    running = Running(Gateway(settings, serve))
    try:
        return _latencies(running, pacs, args.studies, args.instances, tmp / "direct")
    finally:
        running.close()


def _kafka(onnx: Path, pacs: Orthanc, bootstrap: str, args: argparse.Namespace, tmp: Path) -> list[float]:
    kafka = KafkaSettings(bootstrap=bootstrap, session_timeout_s=2)
    settings = GatewaySettings(
        port=0, allowed_aes=[CALLING], stable_after_s=args.stable, results=_results(pacs), kafka=kafka, drain_s=1
    )
    from radflow.kafka import ensure_topics

    asyncio.run(ensure_topics(kafka))
    running = Running(Gateway(settings))
    service = InferenceService(ServeSettings(model=str(onnx), store_url=f"sqlite:///{tmp / 'kafka.db'}", drift=False))
    worker = Worker(kafka, service)
    stop = asyncio.Event()

    async def start() -> asyncio.Task[None]:
        await service.start()
        await worker.start()
        return asyncio.create_task(worker.run(stop))

    task = running.run(start())
    try:
        return _latencies(running, pacs, args.studies, args.instances, tmp / "kafka")
    finally:
        running.loop.call_soon_threadsafe(stop.set)
        running.run(asyncio.wait_for(asyncio.shield(task), 30))
        running.run(service.stop())
        running.close()


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20, help="Studies measured per path (after one warm-up).")
    parser.add_argument("--instances", type=int, default=2, help="Images per study.")
    parser.add_argument("--stable", type=float, default=0.3, help="The gateway's stable_after_s (in the latency).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radflow-bench-gateway-") as name:
        tmp = Path(name)
        onnx = _export("small_cnn", 256, tmp)
        pacs_run, broker_run = orthanc_server(), tansu_broker()
        pacs = next(pacs_run)
        try:
            direct = _in_process(onnx, pacs, args, tmp)
            broker = next(broker_run)
            try:
                remote = _kafka(onnx, pacs, broker.bootstrap, args, tmp)
            finally:
                broker_run.close()
        finally:
            pacs_run.close()
    rows = [
        [f"in-process gateway (stable {args.stable:g} s)", _ms(direct, 50), _ms(direct, 99)],
        [f"gateway -> Kafka -> worker (stable {args.stable:g} s)", _ms(remote, 50), _ms(remote, 99)],
    ]
    print(f"{args.studies} studies of {args.instances} images each, C-STORE -> SRs queryable in Orthanc")
    print_table(["path", "p50 ms", "p99 ms"], rows)
    print_ratio("kafka / in-process p50 latency", _ms(remote, 50) / _ms(direct, 50))


if __name__ == "__main__":
    main()
