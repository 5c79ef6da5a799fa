"""Debian packages a test needs (Chromium, PostgreSQL): apt-get installs them when missing, else the test skips."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["ensure_debian_package"]

# The package lists are fetched once per test session: `apt-get update` takes tens of seconds and
# its answer does not change between the packages one session installs. The session's xdist workers share
# that (a stamp named by the run's id) and take turns at apt-get (dpkg's lock refuses a second apt-get).
_lists_updated = False
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")


@contextmanager
def _apt_turn() -> Iterator[None]:
    with open(Path(tempfile.gettempdir()) / "radflow-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _updated_stamp() -> Path | None:
    return Path(tempfile.gettempdir()) / f"radflow-tests-apt-{_RUN}.updated" if _RUN else None


def _run(cmd: list[str], package: str) -> None:
    """Run one apt-get command; skip the test, saying why, where it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not install {package} ({' '.join(cmd)}: {exc}).")
    if done.returncode != 0:
        reason = f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-300:]}"
        pytest.skip(f"could not install {package} ({reason}).")


def ensure_debian_package(package: str, present: Callable[[], bool]) -> None:
    """Make ``present()`` true by ``apt-get install package``; skip the test, saying why, where that fails."""
    global _lists_updated
    if present():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{package} is not installed and apt-get is not available to install it.")
    with _apt_turn():
        if present():  # another worker installed it while this one waited
            return
        stamp = _updated_stamp()
        if not _lists_updated and not (stamp is not None and stamp.exists()):
            _run(["apt-get", "update"], package)
            if stamp is not None:
                stamp.touch()
        _lists_updated = True
        _run(["apt-get", "install", "-y", package], package)
    if not present():
        pytest.skip(f"apt-get installed {package} but it is still not usable here.")
