"""The simulated clinic's own patients: phantom films of people the dataset has never seen.

Traffic that readers label may come back as training data (``radflow feedback export``), so the
simulator must not send the held-out films models are gated on. By default it sends a pool of
new phantoms instead, made by the same generators and ingested by the same code as a synthetic
workspace (so they look like the dataset's images and carry its labels), under their own
pseudonymisation key: their patient and study ids cannot be any of the dataset's. Their seed is
offset far beyond the seeds a dataset is synthesised with (``CLINIC_SEED_OFFSET``), and every pool
image is checked against every held-out (val and test; before a split, every) dataset image (pixel
copy or perceptual near-duplicate, :mod:`radflow.data.neardup`); any that match are left out of the
pool and counted.

Phantoms exist for chest films (CheXpert findings) and hand films (bone age). A dataset with
other labels has no clinic pool: :func:`clinic_kind` says so, and the user sends a split explicitly.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radflow.data.dataset import Dataset
from radflow.data.labels import CHEXPERT_LABELS
from radflow.errors import ConfigError

__all__ = ["CLINIC_SEED_OFFSET", "ClinicPool", "build_clinic_pool", "clinic_kind"]

CLINIC_SEED_OFFSET = 1 << 40
"""Added to the simulator's seed: phantom seeds of this size are never a dataset's."""
_MIN_SYNTH_SIZE = 64


def clinic_kind(dataset: Dataset) -> str:
    """``"chest"`` or ``"hand"``: which phantoms can stand in for ``dataset``'s patients; ConfigError if none can."""
    labels = dataset.labels
    if dataset.task == "multilabel" and labels and set(labels) <= set(CHEXPERT_LABELS):
        return "chest"
    if dataset.task == "regression" and labels == ["boneage"]:
        return "hand"
    raise ConfigError(
        f"the simulator has no clinic of new patients for a {dataset.task} dataset with labels {labels} "
        "(phantoms exist for CheXpert chest findings and bone age only); send a split explicitly with "
        "--split train|val|test — val and test traffic is held out and `radflow feedback export` refuses it."
    )


@dataclass
class ClinicPool:
    """A dataset of new phantom patients (in a temporary folder kept while the pool lives)."""

    dataset: Dataset
    kind: str
    seed: int
    dropped: int
    """Phantoms left out because they copy (or nearly copy) one of the dataset's held-out images."""
    _tmp: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        patients = int(self.dataset.manifest["patient_id"].nunique())
        return {"kind": self.kind, "images": len(self.dataset.manifest), "patients": patients, "dropped": self.dropped}


def _salt(seed: int) -> str:
    # A key of the pool's own: its HMACs cannot equal ids made with a workspace's random key.
    return hashlib.sha256(f"radflow-clinic-pool:{seed}".encode()).hexdigest()


def build_clinic_pool(dataset: Dataset, n: int = 200, seed: int = 0) -> ClinicPool:
    """``n`` phantoms of new patients, preprocessed like ``dataset``, none of them resembling a held-out image."""
    import numpy as np

    from radflow.data.ingest import IngestOptions, ingest
    from radflow.data.neardup import NearDuplicateIndex
    from radflow.data.synth import synth_chest, synth_hand

    if n < 1:
        raise ConfigError(f"--clinic-images must be at least 1, got {n}.")
    kind = clinic_kind(dataset)
    pool_seed = CLINIC_SEED_OFFSET + seed
    spec = dataset.spec
    tmp = tempfile.TemporaryDirectory(prefix="radflow-clinic-")
    root = Path(tmp.name)
    # Drawn at twice the training size and resampled by ingest, as synthetic workspaces draw theirs: the same
    # sharpness, so the clinic does not look like acquisition drift to the monitors.
    size = min(max(2 * spec.size, _MIN_SYNTH_SIZE), 1024)
    if kind == "chest":
        raw = root / "CheXpert-clinic"
        synth_chest(raw, n, seed=pool_seed, size=size, valid_fraction=0.0, workers=1)
        fmt = "chexpert"
    else:
        raw = root / "boneage-clinic"
        synth_hand(raw, n, seed=pool_seed, size=size, workers=1)
        fmt = "boneage"
    salt = root / "salt"
    salt.write_text(_salt(pool_seed) + "\n")
    policy = dataset.info.get("source", {}).get("label_policy", {})
    options = IngestOptions(
        size=spec.size,
        labels=dataset.labels if kind == "chest" else None,
        uncertain=str(policy.get("uncertain_default", "zeros")),
        salt_file=salt,
        workers=1,
    )
    ingest(raw, fmt, root / "pool", options)
    pool = Dataset.open(root / "pool")
    ids = set(dataset.manifest["patient_id"]) | set(dataset.manifest["study_id"])
    clash = pool.manifest["patient_id"].isin(ids) | pool.manifest["study_id"].isin(ids)
    if clash.any():  # impossible with distinct keys; a guard, because the promise is what feedback relies on
        raise ConfigError(f"{int(clash.sum())} clinic phantoms share an id with {dataset.root}; choose another --seed.")
    held = dataset.indices("all")  # before a split, any image may end up held out
    if dataset.is_split:
        held = np.flatnonzero(dataset.manifest["split"].isin(["val", "test"]).to_numpy())
    index = NearDuplicateIndex(dataset.images(held))
    keep = np.array([index.find(pool.image(i)) is None for i in range(len(pool.manifest))], dtype=bool)
    if not keep.any():
        raise ConfigError(
            f"every clinic phantom resembles a held-out image of {dataset.root}; send a split explicitly with --split."
        )
    if not keep.all():
        pool.manifest = pool.manifest[keep].reset_index(drop=True)
        pool._location = None
    return ClinicPool(dataset=pool, kind=kind, seed=pool_seed, dropped=int((~keep).sum()), _tmp=tmp)
