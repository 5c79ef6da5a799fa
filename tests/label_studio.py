"""A real Label Studio for tests: once per session, loopback, a temp data folder, a user and token made at start.

It runs from ``.venv-label-studio`` (``make install`` makes it, with the migrated template database that
makes a start take ~15 s instead of ~65 s) through :func:`radflow.annotate.server.start_label_studio`, the
code ``radflow annotate server`` runs: offline (no version check, no analytics), allowed to call an ML
backend on this machine. Tests are skipped, with the reason, only where Label Studio is not installed.
"""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path

import pytest

from radflow.annotate.server import LabelStudioServer, make_template, start_label_studio
from radflow.errors import ConfigError
from radflow.hardware import free_port

__all__ = ["PASSWORD", "TOKEN", "USER", "label_studio_server"]

USER = "tests@radflow.local"
PASSWORD = "radflow-tests-pw"
TOKEN = "radflow-tests-token-0123456789"

_started: dict[str, LabelStudioServer] = {}


def label_studio_server() -> LabelStudioServer:
    """The session's Label Studio (started on first use, stopped at exit)."""
    if "server" not in _started:
        try:
            make_template()  # normally made by `make install`; made here once otherwise (~40 s)
        except ConfigError as exc:
            pytest.skip(f"Label Studio is not installed: {exc}")
        data = Path(tempfile.mkdtemp(prefix="radflow-label-studio-"))
        server = start_label_studio(data, port=free_port(), username=USER, password=PASSWORD, token=TOKEN)
        atexit.register(server.stop)
        _started["server"] = server
    return _started["server"]
