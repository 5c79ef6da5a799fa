"""Debian packages a test needs (Chromium, PostgreSQL): apt-get installs them when missing, else the test skips."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest

__all__ = ["ensure_debian_package"]


def ensure_debian_package(package: str, present: Callable[[], bool]) -> None:
    """Make ``present()`` true by ``apt-get install package``; skip the test, saying why, where that fails."""
    if present():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{package} is not installed and apt-get is not available to install it.")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not install {package} ({' '.join(cmd)}: {exc}).")
        if done.returncode != 0:
            reason = f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-300:]}"
            pytest.skip(f"could not install {package} ({reason}).")
    if not present():
        pytest.skip(f"apt-get installed {package} but it is still not usable here.")
