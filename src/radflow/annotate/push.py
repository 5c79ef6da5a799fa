"""``radflow annotate push``: the images worth labelling, with radflow's answers as pre-annotations, to Label Studio.

1. Connect (an unreachable server or a refused token fails here, before anything is scored or sent).
2. Start the workspace's inference core (:class:`radflow.inference.InferenceService`: the served champion,
   or ``model``) and make the labelling config from its task kind and labels
   (:func:`radflow.annotate.config.label_config`); an existing project must have that config.
3. Score the pool dataset's candidate rows (de-identified pixels from its shards; never its val/test rows,
   never images already in the project) and rank them by the strategy (:mod:`radflow.annotate.selection`).
4. Each chosen image goes through ``InferenceService.predict`` as a plain grey PNG of its pixels (no header,
   no file name, no patient id), routed by its hashed study id as the simulator routes: the answer is logged
   in the workspace's store like any served prediction, so the expert's label comes back as that
   prediction's feedback and ``radflow feedback export`` screens it against the held-out images.
5. One task per image: ``data.image`` (the PNG as a data URI), ``data.radflow_prediction`` (the prediction id)
   and ``data.radflow_image`` (the pool's pseudonymous image id), and one prediction tagged with the model's
   ``name/version``.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np

from radflow.annotate.client import LabelStudio
from radflow.annotate.config import IMAGE, LabelConfig, check_config, label_config
from radflow.errors import ConfigError

__all__ = ["IMAGE_KEY", "PREDICTION_KEY", "default_title", "push", "task_config"]

PREDICTION_KEY = "radflow_prediction"
"""Task data key of the logged prediction the task's annotation becomes feedback of."""
IMAGE_KEY = "radflow_image"
"""Task data key of the pool dataset's (pseudonymous) image id."""


def default_title(model_name: str) -> str:
    return f"radflow {model_name}"


def task_config(model: Any) -> LabelConfig:
    """The labelling config of a loaded :class:`radflow.runtime.RadflowModel`."""
    return label_config(model.task, model.labels, model.meta.target_unit)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _project(client: LabelStudio, title: str, config: LabelConfig, model: str) -> tuple[dict[str, Any], bool]:
    found = client.find_project(title)
    if found is not None:
        check_config(str(found.get("label_config", "")), config, f"{found['id']} ({title!r})")
        return found, False
    description = f"Labels for radflow model {model}; pre-annotations are that model's answers."
    return client.create_project(title, config.xml, description), True


def push(
    workspace: Path,
    *,
    pool: Path,
    url: str,
    token: str,
    project: str | None = None,
    strategy: str = "uncertainty",
    n: int = 20,
    seed: int = 0,
    model: str | None = None,
    challenger: str | None = None,
    store_url: str | None = None,
    ml_backend: str | None = None,
) -> dict[str, Any]:
    """Send ``n`` images of the ``pool`` dataset to the Label Studio project ``project``; returns what was sent."""
    if n < 1:
        raise ConfigError(f"--n is how many images to send, at least 1; got {n}.")
    with LabelStudio(url, token) as client:
        user = client.connect()
        return asyncio.run(
            _push(client, user, workspace, pool, project, strategy, n, seed, model, challenger, store_url, ml_backend)
        )


async def _push(
    client: LabelStudio,
    user: dict[str, Any],
    workspace: Path,
    pool: Path,
    title: str | None,
    strategy: str,
    n: int,
    seed: int,
    model: str | None,
    challenger: str | None,
    store_url: str | None,
    ml_backend: str | None,
) -> dict[str, Any]:
    from radflow.annotate.selection import rank, score_pool
    from radflow.data.dataset import Dataset
    from radflow.inference.service import InferenceService
    from radflow.inference.settings import ServeSettings
    from radflow.monitor.reference import load_reference
    from radflow.runtime.cam import encode_png

    settings = ServeSettings(
        workspace=workspace,
        model=model,
        challenger=challenger,
        challenger_weight=0.0,
        shadow=False,
        drift=True,  # the drift tracker fetches each version's reference, which the drift strategy reads
        auto_rule=False,
        store_url=store_url,
    )
    service = InferenceService(settings)
    await service.start()
    try:
        router = service.require_router()
        champion = router.champion.loaded
        loaded = champion.model
        config = task_config(loaded)
        title = title or default_title(champion.name)
        project, created = _project(client, title, config, f"{champion.name}/{champion.version}")
        pid = int(project["id"])
        sent = {str(t.get("data", {}).get(IMAGE_KEY)) for t in client.tasks(pid)} if not created else set()

        ds = Dataset.open(pool)
        manifest = ds.manifest
        held_out = manifest["split"].isin(["val", "test"]).to_numpy()
        fresh = ~manifest["image_id"].astype(str).isin(sent).to_numpy()
        rows = np.flatnonzero(~held_out & fresh)
        if rows.size == 0:
            raise ConfigError(
                f"the pool {pool} has no image left to send: {int(held_out.sum())} are val/test images (never "
                f"sent) and {int((~fresh).sum())} are in project {pid} already."
            )
        pixels = ds.images(rows)
        sexes = manifest["sex"].astype(str).iloc[rows].tolist() if "sex" in manifest else None
        scored = challenged = None
        if strategy != "random":
            scored = await asyncio.to_thread(score_pool, loaded, pixels, sexes)
            if strategy == "disagreement" and router.challenger is not None:
                challenged = await asyncio.to_thread(score_pool, router.challenger.loaded.model, pixels, sexes)
        reference = load_reference(loaded.source, loaded.labels)[0] if strategy == "drift" else None
        order, scores = rank(
            strategy, loaded, scored, challenger=challenged, reference=reference, n=len(rows), seed=seed
        )
        chosen = order[:n]
        tasks = []
        for position, score in zip(chosen, scores[: len(chosen)], strict=True):
            row = int(rows[position])
            png = encode_png(np.ascontiguousarray(pixels[position]))
            answer = await service.predict(
                png, routing_key=str(manifest["study_id"].iloc[row]), sex=_sex(sexes, position)
            )
            height, width = pixels[position].shape
            tasks.append(
                {
                    "data": {
                        IMAGE: data_uri(png),
                        PREDICTION_KEY: answer["id"],
                        IMAGE_KEY: str(manifest["image_id"].iloc[row]),
                    },
                    "predictions": [
                        {
                            "model_version": f"{answer['model']['name']}/{answer['model']['version']}",
                            "score": round(float(score), 6),
                            "result": _prediction(answer, config, (height, width)),
                        }
                    ],
                }
            )
        await asyncio.to_thread(service.require_store().flush)
        made = client.import_tasks(pid, tasks)
        backend = client.connect_ml_backend(pid, ml_backend) if ml_backend else None
    finally:
        await service.stop()
    return {
        "server": client.url,
        "user": user.get("email") or user.get("username"),
        "project": {"id": pid, "title": title, "created": created},
        "task": config.task,
        "labels": list(config.labels),
        "model": {"name": champion.name, "version": champion.version},
        "strategy": strategy,
        "pool": str(pool),
        "candidates": int(rows.size),
        "held_out_skipped": int(held_out.sum()),
        "already_sent": int((~fresh).sum()),
        "sent": made,
        "ml_backend": None if backend is None else {"id": backend.get("id"), "url": backend.get("url")},
    }


def _sex(sexes: list[str] | None, position: int) -> str | None:
    if sexes is None:
        return None
    value = sexes[int(position)]
    return value if value in ("M", "F") else None


def _prediction(answer: dict[str, Any], config: LabelConfig, size: tuple[int, int]) -> list[dict[str, Any]]:
    from radflow.annotate.results import prediction_result

    return prediction_result(answer, config, size)
