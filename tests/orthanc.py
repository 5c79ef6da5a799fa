"""A throwaway Orthanc PACS for tests: Debian's ``orthanc`` + ``orthanc-dicomweb``, a fresh store in a temp folder.

Orthanc listens on free loopback ports (DICOM and HTTP, remote access off, no authentication),
with the DICOMweb plugin at ``/dicom-web/`` and a modality entry ``radflow`` for the radflow
gateway's AE title, a known peer. dcmtk's
``storescu`` (Debian ``dcmtk``) plays the modality. Both are installed with apt-get when missing;
the tests skip, saying why, only where that fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.debian import ensure_debian_package

__all__ = ["GATEWAY_AE", "ORTHANC_AE", "Orthanc", "ensure_storescu", "free_port", "orthanc", "orthanc_server"]

ORTHANC_AE = "ORTHANC"
GATEWAY_AE = "RADFLOW"
_BINARY = "/usr/sbin/Orthanc"
_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _dicomweb_plugin() -> Path | None:
    for folder in _PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def ensure_storescu() -> str:
    """dcmtk's storescu (not pynetdicom's script of the same name that a virtualenv may put first on PATH)."""
    ensure_debian_package("dcmtk", lambda: Path("/usr/bin/storescu").exists())
    return "/usr/bin/storescu"


@dataclass
class Orthanc:
    """A running Orthanc: its DICOM port, its REST root and its DICOMweb root."""

    dicom_port: int
    http_url: str
    root: Path

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"


def orthanc_server() -> Iterator[Orthanc]:
    """Start Orthanc on a fresh store; yields it, then stops it and removes the store."""
    ensure_debian_package("orthanc", lambda: Path(_BINARY).exists())
    ensure_debian_package("orthanc-dicomweb", lambda: _dicomweb_plugin() is not None)
    plugin = _dicomweb_plugin()
    assert plugin is not None
    root = Path(tempfile.mkdtemp(prefix="radflow-orthanc-"))
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "radflow-test-pacs",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "StableAge": 1,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "DicomModalities": {"radflow": [GATEWAY_AE, "127.0.0.1", 11112]},
        "DicomModalitiesInDatabase": True,
        "HttpDescribeErrors": True,
    }
    config_path = root / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (root / "orthanc.log").open("w")
    process = subprocess.Popen([_BINARY, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited {process.returncode}: {(root / 'orthanc.log').read_text()[-600:]}")
            try:
                # both doors: HTTP answers /system and the DICOM port takes connections
                if httpx.get(f"{url}/system", timeout=2).status_code == 200 and _listens(dicom_port):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer /system in 30 s: {(root / 'orthanc.log').read_text()[-600:]}")
            time.sleep(0.1)
        yield Orthanc(dicom_port, url, root)
        if process.poll() is not None:
            pytest.fail(
                f"Orthanc exited {process.returncode} during the tests: {(root / 'orthanc.log').read_text()[-600:]}"
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def orthanc() -> Iterator[Orthanc]:
    """One Orthanc for the session's PACS tests (it starts in well under a second, so modules may each get one)."""
    yield from orthanc_server()
