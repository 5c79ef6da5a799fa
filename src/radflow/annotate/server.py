"""``radflow annotate server``: Label Studio started from its own virtual environment, locally and offline.

Label Studio pins older NumPy and PyArrow than radflow uses, so it is installed apart, into
``.venv-label-studio`` beside radflow's ``.venv`` (``make install`` does it: ``make label-studio``), and
started from there (or from ``RADFLOW_LABEL_STUDIO_BIN``, or a ``label-studio`` on PATH). The server:

* listens on loopback unless told otherwise, keeps everything in ``--data-dir`` (its SQLite database and
  media), and sends nothing out: no version check, no analytics, offline feature flags;
* has one user made without a prompt (``--username --password --user-token``) whose legacy API token
  radflow calls it with (``--enable-legacy-api-token``);
* may call a radflow ML backend on this machine (``ML_BLOCK_LOCAL_IP=false``; Label Studio refuses local
  addresses by default).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from radflow.errors import ConfigError, RadflowError

__all__ = ["LabelStudioServer", "label_studio_binary", "label_studio_env", "start_label_studio"]

VENV_NAME = ".venv-label-studio"


def label_studio_binary() -> Path:
    """The ``label-studio`` executable: ``RADFLOW_LABEL_STUDIO_BIN``, the project's own venv, else PATH."""
    configured = os.environ.get("RADFLOW_LABEL_STUDIO_BIN")
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise ConfigError(f"RADFLOW_LABEL_STUDIO_BIN={configured} is not a file.")
        return path
    # .venv/bin/python -> the project root holding .venv and .venv-label-studio
    for root in (Path(sys.prefix).parent, Path.cwd()):
        candidate = root / VENV_NAME / "bin" / "label-studio"
        if candidate.is_file():
            return candidate
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise ConfigError(
        f"Label Studio is not installed: run `make install` (it creates {VENV_NAME}/ with label-studio), "
        "or set RADFLOW_LABEL_STUDIO_BIN to a label-studio executable."
    )


def label_studio_env(data_dir: Path, allow_local_ml: bool = True) -> dict[str, str]:
    """The environment Label Studio runs in: its data in ``data_dir``, nothing sent out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "VIRTUAL_ENV"))}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "FEATURE_FLAGS_OFFLINE": "true",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "ML_BLOCK_LOCAL_IP": "false" if allow_local_ml else "true",
            "SSRF_PROTECTION_ENABLED": "false" if allow_local_ml else "true",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


@dataclass
class LabelStudioServer:
    """A started Label Studio: its URL, API token and process."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    started_s: float = field(default=0.0)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def start_label_studio(
    data_dir: Path,
    *,
    port: int,
    username: str,
    password: str,
    token: str,
    host: str = "127.0.0.1",
    log: Path | None = None,
    timeout_s: float = 300.0,
    allow_local_ml: bool = True,
) -> LabelStudioServer:
    """Start Label Studio on ``host:port`` with its data in ``data_dir``; returns once ``/health`` answers.

    The first start in a data folder creates its database (about a minute on two cores); later starts reuse it.
    """
    import httpx

    if len(token) <= 5:
        raise ConfigError("the Label Studio API token must be longer than 5 characters (Label Studio ignores it).")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log or data_dir / "label-studio.log"
    command = [
        str(label_studio_binary()),
        "start",
        "--no-browser",
        "--internal-host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        username,
        "--password",
        password,
        "--user-token",
        token,
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    start = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=label_studio_env(data_dir, allow_local_ml),
        )
    url = f"http://{host}:{port}"
    deadline = start + timeout_s
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise RadflowError(f"Label Studio exited ({process.returncode}) before answering; its log {log}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RadflowError(f"Label Studio did not answer {url}/health within {timeout_s:.0f} s; see {log}.")
        time.sleep(0.25)
    return LabelStudioServer(url, token, process, data_dir, log, round(time.monotonic() - start, 2))
