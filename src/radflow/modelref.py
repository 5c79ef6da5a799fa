"""One model reference: the MODEL argument every command and the server accept, parsed and resolved once.

A reference is a checkpoint path, an ONNX path, an MLflow run (a bare 32-hex id or
``runs:/ID[/artifact]``), a registry alias (``models:/NAME@ALIAS``) or a registry version
(``models:/NAME/N``). :func:`parse_model_ref` reads the text without touching MLflow;
:func:`resolve_model_ref` makes exactly one registry (or run) read and returns a
:class:`ResolvedModel`: the identity (registered name, version, alias, run id, dataset version)
together with the run the artifacts come from.

Why one read: an alias moves (``radflow promote``), so resolving it twice — once to fetch the
ONNX file, once more to name the model in logs and metrics — can pair the file of one version
with the label of another. Everything after resolution is keyed by the resolved run id and
artifact path, never by the alias again.

MLflow is imported only inside the functions that talk to it: the serving and runtime import
path stays light.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radflow.errors import NotFoundError, did_you_mean

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = [
    "ACCEPTED_FORMS",
    "CHALLENGER",
    "CHAMPION",
    "CHECKPOINT_ARTIFACT",
    "CHECKPOINT_SUFFIXES",
    "DATASET_VERSION_TAG",
    "ArtifactNotFoundError",
    "ModelRef",
    "RefKind",
    "ResolvedModel",
    "cache_dir",
    "get_run",
    "get_version",
    "model_uri",
    "parse_model_ref",
    "registered_model",
    "resolve_model_ref",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
"""Run artifact of the PyTorch checkpoint written by ``radflow train``."""
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
DATASET_VERSION_TAG = "radflow.dataset_version"
"""Run tag set by training, copied onto every registered version: the dataset version trained on."""
ACCEPTED_FORMS = (
    "a checkpoint or ONNX file, an MLflow run id, runs:/RUN_ID[/ARTIFACT], models:/NAME@ALIAS or models:/NAME/N"
)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


class RefKind(StrEnum):
    CHECKPOINT = "checkpoint"
    ONNX = "onnx"
    RUN = "run"
    ALIAS = "alias"
    VERSION = "version"


@dataclass(frozen=True)
class ModelRef:
    """A parsed MODEL argument; only the fields of its ``kind`` are set."""

    text: str
    kind: RefKind
    path: Path | None = None
    run_id: str | None = None
    artifact: str | None = None
    """The artifact of ``runs:/ID/ARTIFACT`` (``None`` for a bare run id)."""
    name: str | None = None
    alias: str | None = None
    version: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind in (RefKind.CHECKPOINT, RefKind.ONNX)

    @property
    def in_registry(self) -> bool:
        return self.kind in (RefKind.ALIAS, RefKind.VERSION)

    @property
    def in_mlflow(self) -> bool:
        """True for runs and registry references: their files (and drift reference) live in MLflow."""
        return not self.is_local

    def __str__(self) -> str:
        return self.text


def model_uri(name: str, *, version: str | int | None = None, alias: str | None = None) -> str:
    """The text of a registry reference: ``models:/NAME/N`` or ``models:/NAME@ALIAS``."""
    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version and alias.")
    return f"models:/{name}@{alias}" if alias is not None else f"models:/{name}/{version}"


def _bad(text: str, why: str) -> NotFoundError:
    return NotFoundError(f"{text!r} {why}; give {ACCEPTED_FORMS}.")


def _parse_registry(text: str) -> ModelRef:
    rest = text.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if not name or not alias or "/" in alias:
            raise _bad(text, "is not models:/NAME@ALIAS")
        return ModelRef(text, RefKind.ALIAS, name=name, alias=alias)
    name, _, number = rest.rpartition("/")
    if not name or not number.isdigit():
        raise _bad(text, "names no alias or version (models:/NAME@ALIAS or models:/NAME/N)")
    return ModelRef(text, RefKind.VERSION, name=name, version=str(int(number)))


def parse_model_ref(text: str | Path | ModelRef) -> ModelRef:
    """Parse a MODEL argument; raises NotFoundError naming the text and the accepted forms.

    Local paths are told apart by suffix (``.pt``/``.pth``/``.ckpt`` or a folder: checkpoint;
    anything else: ONNX); whether the file exists is checked when it is resolved.
    """
    if isinstance(text, ModelRef):
        return text
    raw = str(text).strip()
    if not raw:
        raise _bad(raw, "is empty")
    if raw.startswith("models:/"):
        return _parse_registry(raw)
    if raw.startswith("runs:/"):
        run_id, _, artifact = raw.removeprefix("runs:/").partition("/")
        if not _RUN_ID.match(run_id):
            raise _bad(raw, "does not start with a 32-hex run id after runs:/")
        return ModelRef(raw, RefKind.RUN, run_id=run_id, artifact=artifact.strip("/") or None)
    if _RUN_ID.match(raw):
        return ModelRef(raw, RefKind.RUN, run_id=raw)
    if _SCHEME.match(raw):
        raise _bad(raw, "has an unknown scheme")
    path = Path(raw).expanduser()
    kind = RefKind.CHECKPOINT if path.suffix in CHECKPOINT_SUFFIXES or path.is_dir() else RefKind.ONNX
    return ModelRef(raw, kind, path=path)


# ---------------------------------------------------------------------------------------------
# Lookups with the errors a user can act on


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(exc).lower()


def get_run(client: MlflowClient, run_id: str, uri: str) -> Run:
    """The run ``run_id``, or NotFoundError saying where it was looked for."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if _missing(exc) or "run" in str(exc).lower():
            raise NotFoundError(
                f"no MLflow run {run_id!r} in tracking store {uri}; check the id (`radflow ui` lists runs) "
                "or pass --tracking-uri."
            ) from None
        raise


def registered_model(client: MlflowClient, name: str, uri: str) -> Any:
    """The registered model ``name``, or NotFoundError listing those that exist (with a did-you-mean)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if not _missing(exc):
            raise
    names = sorted(m.name for m in client.search_registered_models())
    known = f" Registered models: {', '.join(names)}." if names else " The registry is empty."
    raise NotFoundError(
        f"no registered model {name!r} in {uri}.{did_you_mean(name, names)}{known} "
        "Register one with `radflow register RUN_ID --name NAME`."
    )


def get_version(client: MlflowClient, name: str, version: str | int, uri: str) -> ModelVersion:
    """Version ``version`` of ``name``, or NotFoundError listing the versions there are."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _missing(exc) and "version" not in str(exc).lower():
            raise
    registered_model(client, name, uri)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    raise NotFoundError(
        f"model {name!r} has no version {version}; its versions are {', '.join(map(str, versions)) or 'none'}."
    ) from None


def _alias_missing(client: MlflowClient, ref: ModelRef, uri: str) -> NotFoundError:
    name, alias = str(ref.name), str(ref.alias)
    aliases = {a: str(v) for a, v in dict(registered_model(client, name, uri).aliases or {}).items()}
    listed = f" Its aliases: {', '.join(f'@{a} (version {v})' for a, v in sorted(aliases.items())) or 'none'}."
    if alias == CHAMPION and CHALLENGER in aliases:
        version = aliases[CHALLENGER]
        return NotFoundError(
            f"{ref.text} not found: no version holds @{CHAMPION} yet; version {version} holds @{CHALLENGER} — "
            f"promote it with `radflow promote {name} {version}`."
        )
    if alias in (CHAMPION, CHALLENGER):
        hint = (
            f" no version holds @{alias} yet (`radflow register` sets @{CHALLENGER} on a version that passes "
            f"its gates, `radflow promote NAME VERSION` sets @{CHAMPION})."
        )
    else:
        hint = f" model {name!r} has no alias {alias!r}.{did_you_mean(alias, sorted({*aliases, CHAMPION, CHALLENGER}))}"
    return NotFoundError(f"{ref.text} not found:{hint}{listed}")


def _alias_version(client: MlflowClient, ref: ModelRef, uri: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(str(ref.name), str(ref.alias))
    except MlflowException as exc:
        if not _missing(exc) and "alias" not in str(exc).lower():
            raise
    raise _alias_missing(client, ref, uri) from None


# ---------------------------------------------------------------------------------------------
# Resolution


class ArtifactNotFoundError(NotFoundError):
    """The run exists but has no such artifact (callers reword it for what they were looking for)."""


@dataclass(frozen=True)
class ResolvedModel:
    """A reference with what one registry read said about it, and the means to fetch its files.

    For a local file only ``ref`` and ``path`` are set. For a run, ``tags`` are the run's tags;
    for a registry version, the version's (the run's when a tag was not copied onto the version).
    """

    ref: ModelRef
    path: Path | None = None
    run_id: str | None = None
    name: str | None = None
    """Registered model name (registry references only)."""
    version: str | None = None
    alias: str | None = None
    """The alias the reference asked for; ``aliases`` are all the version held when it was read."""
    aliases: tuple[str, ...] = ()
    dataset_version: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None

    @property
    def uri(self) -> str:
        """The pinned reference: ``models:/NAME/N`` for a registry reference, else the text given."""
        if self.name is not None and self.version is not None:
            return model_uri(self.name, version=self.version)
        return self.ref.text

    def describe(self) -> str:
        """How errors name the model: the text given, with the version an alias resolved to."""
        if self.ref.kind is RefKind.ALIAS:
            return f"{self.ref.text} (version {self.version}, run {self.run_id})"
        if self.ref.kind is RefKind.VERSION:
            return f"{self.ref.text} (run {self.run_id})"
        return self.ref.text if self.run_id is None else f"run {self.run_id}"

    def _client(self) -> MlflowClient:
        from radflow.tracking import client

        return client(str(self.tracking_uri))

    def tag(self, key: str) -> str | None:
        """A tag of the version (or run); for a version, the run's tag when the version lacks it.

        The run is read by its resolved id, so the answer belongs to the version resolved.
        """
        if key in self.tags:
            return self.tags[key]
        if self.ref.in_registry and self.run_id:
            return self._client().get_run(self.run_id).data.tags.get(key)
        return None

    def download(self, artifact: str) -> Path:
        """Download ``artifact`` of the resolved run into the model cache (no progress bar)."""
        if self.run_id is None:
            raise ArtifactNotFoundError(f"{self.ref.text} is a local file; it has no MLflow artifacts.")
        from radflow.tracking import quiet_downloads

        dst = cache_dir(self.run_id)
        try:
            with quiet_downloads():
                return Path(self._client().download_artifacts(self.run_id, artifact, str(dst)))
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise ArtifactNotFoundError(
                f"{self.describe()} has no artifact {artifact} ({type(exc).__name__})."
            ) from None

    def checkpoint(self) -> Path:
        """A local PyTorch checkpoint: the file (or ``best.pt`` in the folder) or the run's ``checkpoint/best.pt``."""
        if self.path is not None:
            return _local_checkpoint(self.ref, self.path)
        try:
            return self.download(CHECKPOINT_ARTIFACT)
        except ArtifactNotFoundError:
            raise NotFoundError(
                f"{self.describe()} has no {CHECKPOINT_ARTIFACT} artifact; only runs made by `radflow train` "
                "can be used here."
            ) from None


def cache_dir(run_id: str) -> Path:
    """Where a run's downloaded artifacts are kept: ``<tmp>/radflow-models/<run id>/``."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "radflow-models" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _local_checkpoint(ref: ModelRef, path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "best.pt", path / CHECKPOINT_ARTIFACT):
            if candidate.is_file():
                return candidate
        raise NotFoundError(f"{path} is a folder without best.pt or {CHECKPOINT_ARTIFACT}; give the checkpoint file.")
    raise NotFoundError(f"{ref.text!r} is not a checkpoint file; give {ACCEPTED_FORMS}.")


def resolve_model_ref(ref: str | Path | ModelRef, tracking_uri: str | None = None) -> ResolvedModel:
    """Resolve a reference with one registry (or run) read; a local path is checked by whoever opens it.

    Registry and run references raise NotFoundError with the fix for an unknown model, version,
    alias or run: a missing ``@champion`` while ``@challenger`` exists names the promote command,
    an unknown model name lists the registered ones.
    """
    parsed = parse_model_ref(ref)
    if parsed.is_local:
        return ResolvedModel(parsed, path=parsed.path)

    from radflow.tracking import client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(uri)
    if parsed.kind is RefKind.RUN:
        run = get_run(mlflow_client, str(parsed.run_id), uri)
        tags = dict(run.data.tags)
        return ResolvedModel(
            parsed, run_id=parsed.run_id, dataset_version=tags.get(DATASET_VERSION_TAG), tags=tags, tracking_uri=uri
        )
    if parsed.kind is RefKind.ALIAS:
        found = _alias_version(mlflow_client, parsed, uri)
    else:
        found = get_version(mlflow_client, str(parsed.name), str(parsed.version), uri)
    if not found.run_id:
        raise NotFoundError(f"{parsed.text} was not registered from a run; radflow has no files for it.")
    tags = dict(found.tags or {})
    return ResolvedModel(
        parsed,
        run_id=str(found.run_id),
        name=str(found.name),
        version=str(found.version),
        alias=parsed.alias,
        aliases=tuple(getattr(found, "aliases", None) or ()),
        dataset_version=tags.get(DATASET_VERSION_TAG),
        tags=tags,
        tracking_uri=uri,
    )
