"""``radflow loop``: one turn of closing the loop in a workspace, from reader feedback to a canary.

1. Export the feedback of the workspace's prediction store to ``data/feedback`` (CheXpert layout, or a
   ``--format masks`` folder of corrected masks in a segmentation workspace; see :mod:`radflow.feedback`),
   refusing every image that is (or nearly is) one of the split dataset's val or test images (counted
   per reason and printed), list it in ``data.extra``, track it with ``dvc add`` and commit the new data
   version (params.yaml, dvc.yaml and ``data/feedback.dvc``; nothing else).
2. ``radflow run``: ingest adds the feedback images as training-only rows, split keeps the test
   set exactly as it was, and train / evaluate / export / register follow. An unchanged feedback
   folder changes no hash, so nothing reruns.
3. The register stage gates the new model against the champion on that same test split (the
   registry compares models by the test split's own hash) and makes it ``@challenger`` if it passes.
4. Optionally a running server loads the challenger (``POST /admin/reload``) and sends it a share of
   traffic (``PUT /admin/routing``): a canary, watched by online evaluation before any promotion.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from radflow.errors import ConfigError, RadflowError
from radflow.modelref import model_uri

__all__ = ["LOOP_FORMATS", "run_loop", "start_canary"]

LOOP_FORMATS = ("chexpert", "masks", "coco-boxes")
"""Workspace ingest formats whose feedback export is read back as an extra source of the same format."""


def _dataset_state(root: Path) -> dict[str, Any]:
    """Version, size, extra (feedback) rows and test-split hash of the workspace's split dataset, if built."""
    from radflow.data.dataset import Dataset
    from radflow.data.split import EXTRA_SPLIT, held_out_version
    from radflow.pipeline.dvc_yaml import SPLIT_DATASET

    try:
        ds = Dataset.open(root / SPLIT_DATASET)
    except RadflowError:
        return {"version": None, "images": 0, "extra_images": 0, "held_out_version": None, "test_images": 0}
    manifest = ds.manifest
    return {
        "version": ds.version,
        "images": len(manifest),
        "extra_images": int((manifest["official_split"] == EXTRA_SPLIT).sum()),
        "held_out_version": held_out_version(ds),
        "test_images": int((manifest["split"] == "test").sum()),
    }


def start_canary(
    serve_url: str, model: str, weight: float, admin_token: str | None, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Load ``model`` as the challenger of the server at ``serve_url`` and route ``weight`` of traffic to it."""
    import httpx

    from radflow.inference.settings import ServeSettings

    secret = ServeSettings().admin_token  # RADFLOW_ADMIN_TOKEN, read where every server setting is
    token = admin_token or (secret.get_secret_value() if secret else None)
    if not token:
        raise ConfigError("starting a canary needs the server's admin token: --admin-token or RADFLOW_ADMIN_TOKEN.")
    headers = {"Authorization": f"Bearer {token}"}
    base = serve_url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout_s) as http:
            reload = http.post("/admin/reload", json={"challenger": model})
            if reload.status_code != 200:
                raise RadflowError(f"{base}/admin/reload answered {reload.status_code}: {_error(reload)}")
            routing = http.put("/admin/routing", json={"challenger_weight": weight})
            if routing.status_code != 200:
                raise RadflowError(f"{base}/admin/routing answered {routing.status_code}: {_error(routing)}")
    except httpx.HTTPError as exc:
        raise RadflowError(f"cannot reach the server at {base} to start the canary: {exc}") from None
    return {"server": base, "challenger": model, "weight": weight, "routing": routing.json()}


def _error(response: Any) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return str(response.text)


def run_loop(
    workspace: Path | None = None,
    *,
    store_url: str | None = None,
    since: datetime | None = None,
    canary: float | None = None,
    serve_url: str | None = None,
    admin_token: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One cycle in ``workspace``: export feedback, new data version, run, gate, register, optional canary.

    ``canary`` is the share of traffic (0-1] for the challenger on ``serve_url``. Returns ``{"workspace",
    "export", "data_version": {"before", "after", "md5", "commit"}, "dataset": {"before", "after"},
    "rows_added", "test_split_unchanged", "run", "registration", "new_version", "canary"}``.
    """
    from radflow.config import load_params
    from radflow.feedback import FEEDBACK_DIR, export_feedback, screen_dataset, store_location
    from radflow.pipeline.run import run_pipeline
    from radflow.pipeline.workspace import commit_paths, dvc_add, find_workspace, use_extra_source

    if canary is not None and not 0 < canary <= 1:
        raise ConfigError(f"--canary is a share of traffic in (0, 100] percent, got {canary * 100:g}.")
    if canary is not None and not serve_url:
        raise ConfigError("--canary needs --serve-url: the running server that should route traffic to the model.")
    root = find_workspace(workspace)
    params = load_params(root / "params.yaml")
    # Feedback is exported in the layout the workspace's own source is ingested in (extra sources share it).
    layout = params.data.format
    if layout not in LOOP_FORMATS:
        raise ConfigError(
            f"radflow loop retrains on feedback exported as findings (CheXpert's layout: a chexpert or synthetic "
            f"workspace), as corrected masks (a masks or synthetic segmentation workspace) or as corrected boxes "
            f"(a synthetic detection workspace); this workspace's data.source is {params.data.source!r}."
        )
    before = _dataset_state(root)
    url, inputs_dir = store_location(root, store_url)
    # Screened against the split dataset the gates use: its val and test images never come back as training data.
    exported = export_feedback(
        root / FEEDBACK_DIR, url, inputs_dir, since=since, dataset=screen_dataset(root), format=layout
    )
    use_extra_source(root, FEEDBACK_DIR)
    md5 = dvc_add(root, FEEDBACK_DIR)
    commit = commit_paths(
        root,
        ["params.yaml", "dvc.yaml", f"{FEEDBACK_DIR}.dvc", "data/.gitignore"],
        f"feedback data version {md5[:12]} ({exported['images']} images)",
    )
    run = run_pipeline(root, on_line=on_line)
    after = _dataset_state(root)
    registration = run.get("registration", {})
    new_version = "register" in run["ran"] and bool(registration)
    canary_result: dict[str, Any] | None = None
    if canary is not None and serve_url:
        if not new_version:
            canary_result = {"started": False, "reason": "no new model version was registered"}
        elif not registration.get("passed"):
            canary_result = {"started": False, "reason": "the new version failed its gates (no @challenger)"}
        else:
            model = model_uri(registration["name"], version=registration["version"])
            canary_result = {"started": True, **start_canary(serve_url, model, canary, admin_token)}
    return {
        "workspace": str(root),
        "export": exported,
        "data_version": {"md5": md5, "commit": commit},
        "dataset": {"before": before, "after": after},
        "rows_added": after["extra_images"] - before["extra_images"],
        "test_split_unchanged": before["held_out_version"] in (None, after["held_out_version"]),
        "run": {k: run[k] for k in ("ran", "skipped", "experiment", "seconds")},
        "registration": registration,
        "new_version": new_version,
        "canary": canary_result,
    }
