"""Where MLflow runs go: the embedded SQLite store by default, a tracking server when asked.

Order of precedence: an explicit URI (``--tracking-uri``) > ``MLFLOW_TRACKING_URI`` > the
workspace store ``sqlite:///<absolute workspace>/mlflow.db`` with artifacts in ``mlartifacts/``
beside it. A server that cannot be reached is reported before any training starts, so a long run
never dies at its first ``log_metric``.

A command that only reads (register, promote, lineage, models, serve, ...) never creates a store:
MLflow would otherwise leave an empty ``mlflow.db`` in whatever folder the command ran in, which
later commands would then mistake for a workspace's store. Only the training run creates one
(:func:`ensure_experiment`); elsewhere a missing SQLite store is a clear error (:func:`require_store`).

A team shares one server instead (:func:`tracking_server_command`, ``radflow tracking-server``): runs and
registry in PostgreSQL, artifacts proxied through the server (``mlflow-artifacts:/`` URIs); a workspace
points at it with ``MLFLOW_TRACKING_URI=http://HOST:PORT``.

This module owns MLflow's environment: telemetry off, its log level and download progress bars
(:func:`set_mlflow_verbosity`, quiet unless ``radflow -v``), and ``MLFLOW_TRACKING_URI``.
:func:`env_scope` is radflow's one way to change environment variables for a block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radflow.errors import RadflowError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "ARTIFACT_DIR",
    "DEFAULT_DB",
    "PROGRESS_ENV",
    "artifact_root",
    "artifacts_destination",
    "check_database",
    "check_tracking",
    "client",
    "database_uri",
    "ensure_experiment",
    "env_scope",
    "git_state",
    "quiet_downloads",
    "require_store",
    "resolve_tracking_uri",
    "server_command",
    "set_mlflow_verbosity",
    "telemetry_off",
    "tracking_server_command",
    "tracking_uri_scope",
]

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"

_TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}


def telemetry_off(env: dict[str, str] | None = None) -> dict[str, str]:
    """Switch MLflow's and DVC's usage reporting off in ``env`` (default: this process), unless set already."""
    target: Any = os.environ if env is None else env
    for key, value in _TELEMETRY_OFF.items():
        target.setdefault(key, value)
    return dict(target)


# Telemetry off before mlflow is imported anywhere through this module.
telemetry_off()


def set_mlflow_verbosity(verbose: bool) -> None:
    """MLflow's INFO logs (store creation, migrations) and progress bars: shown only when ``verbose``.

    Written into the environment, so the DVC stages a command starts (their own radflow processes,
    importing MLflow afresh) are as quiet as the command; the logger is set too in case MLflow is
    already imported.
    """
    level = "INFO" if verbose else "WARNING"
    os.environ["MLFLOW_LOGGING_LEVEL"] = level
    os.environ[PROGRESS_ENV] = "true" if verbose else "false"
    logging.getLogger("mlflow").setLevel(level)
    logging.getLogger("alembic").setLevel(level)


def resolve_tracking_uri(explicit: str | None = None, workspace: Path | None = None) -> str:
    """The tracking URI to use: explicit > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<abs>/mlflow.db``."""
    if explicit:
        return explicit
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(workspace) if workspace is not None else Path.cwd()
    return f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def artifact_root(uri: str) -> str | None:
    """Artifact location for new experiments: ``mlartifacts/`` beside a SQLite db; server default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR).resolve().as_uri()
    return None


def check_tracking(uri: str, timeout: float = 3.0) -> None:
    """Fail fast with a clear message when a tracking server cannot be reached (or a local store not made)."""
    if uri.startswith(("http://", "https://")):
        probe = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=timeout):
                return
        except urllib.error.HTTPError:
            # The server answered (e.g. 404 on /health behind a proxy): it is reachable.
            return
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RadflowError(
                f"MLflow tracking server {uri} is unreachable ({reason}). Start it (e.g. `radflow tracking-server` "
                "or `radflow ui`), fix --tracking-uri / MLFLOW_TRACKING_URI, or unset them to use the local "
                "sqlite store.",
                status_code=503,
            ) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise RadflowError(f"tracking store folder {db.parent} does not exist; create it or pick another URI.")


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def require_store(uri: str) -> None:
    """Raise NotFoundError when ``uri`` is a SQLite store that does not exist (servers are not checked here)."""
    from radflow.errors import NotFoundError

    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        raise NotFoundError(
            f"no MLflow store at {db}: run this inside a radflow workspace (`radflow init`; its first run "
            "creates the store), or point --tracking-uri / MLFLOW_TRACKING_URI at an existing one."
        )


def client(uri: str, *, create: bool = False) -> MlflowClient:
    """An MlflowClient for ``uri``; a SQLite store that does not exist is created only when ``create``."""
    from mlflow.tracking import MlflowClient

    if not create:
        require_store(uri)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """Experiment id of ``name``, creating it (artifacts beside a SQLite db) when missing, and the store with it."""
    mlflow_client = client(uri, create=True)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(mlflow_client.create_experiment(name, artifact_location=artifact_root(uri)))


def git_state(path: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the git checkout holding ``path`` (default: cwd); ("unknown", False) outside git."""
    cwd = str(path) if path is not None else None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit or "unknown", bool(status.strip())


def _mlflow_server(backend_store_uri: str, host: str, port: int, workers: int) -> list[str]:
    """``python -m mlflow server`` on a store, address and worker count: what both server commands start with."""
    where = ["--host", host, "--port", str(port), "--workers", str(workers)]
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri, *where]


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` invocation that shows the runs and models of store ``uri``."""
    if uri.startswith(("http://", "https://")):
        raise RadflowError(f"{uri} is already an MLflow server; open it in a browser instead of starting a UI.")
    # One worker: a personal UI needs no more, and it starts far faster than the default four.
    command = _mlflow_server(uri, host, port, workers=1)
    artifacts = artifact_root(uri)
    if artifacts is not None:
        # Experiments made in the UI then keep their artifacts in mlartifacts/ too.
        command += ["--artifacts-destination", artifacts]
    return command


@contextlib.contextmanager
def tracking_uri_scope(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.artifacts``) at ``uri`` for a block only.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the process environment,
    where every later subprocess would inherit it — a DVC stage of another workspace would then log
    and register into this store. The previous URI and environment are restored on exit.
    """
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    with env_scope(MLFLOW_TRACKING_URI=env_before):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(env_before)  # None clears the variable and the setting


@contextlib.contextmanager
def env_scope(**values: str | None) -> Iterator[None]:
    """Set (or, for ``None``, remove) environment variables for a block; the previous values come back on exit."""
    before = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quiet_downloads() -> contextlib.AbstractContextManager[None]:
    """No MLflow artifact progress bar for a block unless asked for (``radflow -v``, see :func:`set_mlflow_verbosity`).

    A bar would land in the middle of radflow's output (and of ``--json``) or of the server's log.
    """
    return env_scope(**{PROGRESS_ENV: os.environ.get(PROGRESS_ENV) or "false"})


# --- A shared tracking server: `radflow tracking-server` -------------------------------------------------------------

_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "sqlite")


def database_uri(uri: str) -> str:
    """``uri`` as SQLAlchemy should open it: a bare ``postgresql://`` gets radflow's driver (psycopg 3).

    SQLAlchemy's default PostgreSQL driver is psycopg2, which radflow does not install; anything but a
    database URL (a server's http URL, a folder) is refused with what to pass instead.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme.split("+", 1)[0] not in _DATABASE_SCHEMES:
        raise RadflowError(
            f"--backend-store-uri {uri!r} is not a database URL: pass postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
            "(the shared store a team's runs and registry live in)."
        )
    if scheme == "postgresql":
        return "postgresql+psycopg://" + uri.split("://", 1)[1]
    return uri


def check_database(uri: str, timeout: float = 5.0) -> None:
    """Connect once to the backend store ``uri``; an unreachable or refusing database is a clear RadflowError."""
    import sqlalchemy

    args = {"connect_timeout": int(max(1, timeout))} if uri.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(uri, connect_args=args)
    try:
        with engine.connect():
            return
    except Exception as exc:  # SQLAlchemy wraps every driver's failure differently: name the database and why
        shown = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RadflowError(
            f"the tracking server's backend store {shown} is unreachable ({reason}). Start the database, or fix "
            "--backend-store-uri.",
            status_code=503,
        ) from None
    finally:
        engine.dispose()


def artifacts_destination(destination: str) -> str:
    """Where a tracking server keeps the artifacts it proxies: a URI as given, a local path as a ``file://`` URI."""
    if "://" in destination:
        return destination
    # Not created here (a --dry-run makes nothing): MLflow makes the folders as artifacts arrive.
    return Path(destination).expanduser().resolve().as_uri()


def tracking_server_command(
    backend_store_uri: str,
    artifacts: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    allowed_hosts: str | None = None,
) -> list[str]:
    """The ``mlflow server`` a team shares: runs and registry in a database, artifacts proxied by the server.

    ``--serve-artifacts`` makes new experiments' artifact URIs ``mlflow-artifacts:/...``: clients upload
    and download through the server, so no workspace needs credentials for (or a path to) the store behind it.
    """
    command = _mlflow_server(database_uri(backend_store_uri), host, port, workers)
    command += ["--serve-artifacts", "--artifacts-destination", artifacts_destination(artifacts)]
    if allowed_hosts:
        # MLflow's security middleware answers only these Host headers (default: localhost), e.g. a container's name.
        command += ["--allowed-hosts", allowed_hosts]
    return command
