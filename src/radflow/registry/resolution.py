"""Model lookup for training-side commands: any MODEL argument as a local PyTorch checkpoint.

Parsing and the one registry read are :mod:`radflow.modelref`'s; this is the checkpoint end of it.
"""

from __future__ import annotations

from pathlib import Path

from radflow.modelref import resolve_model_ref

__all__ = ["resolve_model", "resolve_model_run"]


def resolve_model_run(uri: str, tracking_uri: str | None = None) -> tuple[Path, str | None]:
    """Like :func:`resolve_model`, also returning the MLflow run id (``None`` for a local file)."""
    resolved = resolve_model_ref(uri, tracking_uri)
    return resolved.checkpoint(), resolved.run_id


def resolve_model(uri: str, tracking_uri: str | None = None) -> Path:
    """A local checkpoint for a path, run id, ``runs:/ID``, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Registry and run models are downloaded (their ``checkpoint/best.pt`` artifact) into a cache
    folder under the system temp directory; unknown runs, models and aliases raise NotFoundError.
    """
    return resolve_model_run(uri, tracking_uri)[0]
