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

__all__ = [
    "DATABASE",
    "LabelStudioServer",
    "label_studio_binary",
    "label_studio_env",
    "make_template",
    "start_label_studio",
    "template_dir",
]

VENV_NAME = ".venv-label-studio"
DATABASE = "label_studio.sqlite3"
"""Label Studio's SQLite database in its data folder."""
TEMPLATE = "data-template"
"""A migrated, empty database inside Label Studio's venv (``make install`` makes it): a new data folder starts
from a copy of it instead of running Label Studio's migrations (most of a first start: ~40 s on two cores)."""


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


def template_dir(binary: Path | None = None) -> Path:
    """Where the migrated template database of the Label Studio install at ``binary`` lives."""
    return (binary or label_studio_binary()).resolve().parent.parent / TEMPLATE


def make_template(binary: Path | None = None) -> Path:
    """Run Label Studio's migrations once into :func:`template_dir` (an empty database, no user); returns it."""
    binary = binary or label_studio_binary()
    target = template_dir(binary)
    if (target / DATABASE).is_file():
        return target
    python = binary.parent / "python"
    found = subprocess.run(
        [str(python), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    )
    package = Path(found.stdout.strip())
    staging = target.with_name(TEMPLATE + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = {**label_studio_env(staging), "DJANGO_SETTINGS_MODULE": "core.settings.label_studio"}
    done = subprocess.run(
        [str(python), "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not (staging / DATABASE).is_file():
        raise RadflowError(f"Label Studio's migrations failed ({done.returncode}): {done.stderr[-800:]}")
    (staging / ".env").unlink(missing_ok=True)  # a generated SECRET_KEY: each data folder makes its own
    staging.rename(target)
    return target


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

    A new data folder starts from the migrated template (:func:`make_template`) when there is one; without it
    the first start runs Label Studio's migrations (about a minute on two cores).
    """
    import httpx

    if len(token) <= 5:
        raise ConfigError("the Label Studio API token must be longer than 5 characters (Label Studio ignores it).")
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = label_studio_binary()
    template = template_dir(binary) / DATABASE
    if not (data_dir / DATABASE).exists() and template.is_file():
        shutil.copyfile(template, data_dir / DATABASE)
    log = log or data_dir / "label-studio.log"
    command = [
        str(binary),
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


if __name__ == "__main__":  # `make install`: python -m radflow.annotate.server --make-template
    if sys.argv[1:] != ["--make-template"]:
        sys.exit("usage: python -m radflow.annotate.server --make-template")
    print(f"Label Studio template database: {make_template()}")
