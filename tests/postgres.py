"""A throwaway PostgreSQL server for tests: Debian's PostgreSQL, a fresh cluster in a temp folder, loopback only.

The binaries come from Debian's ``postgresql`` package, installed with apt-get when missing;
tests are skipped, with the reason, only where that fails. When the tests run as root the
cluster belongs to the ``postgres`` user (initdb refuses root) and is started through runuser.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.debian import ensure_debian_package

__all__ = ["postgres_server"]


def _bin_dir() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: p.parent.name)
    return versions[-1] if versions else None


def _ensure_binaries() -> Path:
    ensure_debian_package("postgresql", lambda: _bin_dir() is not None)
    found = _bin_dir()
    assert found is not None
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_server() -> Iterator[str]:
    """Start a cluster in a fresh temp folder; yields its SQLAlchemy URL (psycopg 3), then stops and removes it.

    The folder is made directly under the system temp dir: pytest's own temp tree is private to
    the test user, and the ``postgres`` user could not reach a cluster inside it.
    """
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e .)")
    bin_dir = _ensure_binaries()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: initdb cannot run as root.")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="radflow-pg-"))
    data, sock_dir = root / "pgdata", root / "pgsock"
    sock_dir.mkdir()
    if as_postgres:
        shutil.chown(root, "postgres")
        shutil.chown(sock_dir, "postgres")
    init = subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "radflow", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({init.returncode}): {init.stderr[-300:]}")
    port = _free_port()
    options = f"-p {port} -k {sock_dir} -c listen_addresses=127.0.0.1 -c fsync=on"
    ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    start = subprocess.run(
        [*ctl, "-o", options, "-l", str(root / "postgres.log"), "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    if start.returncode != 0:
        log = (root / "postgres.log").read_text() if (root / "postgres.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {start.stderr[-300:]} {log[-500:]}")
    url = f"postgresql+psycopg://radflow@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
