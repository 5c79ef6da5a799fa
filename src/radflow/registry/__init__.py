"""The model registry: gated registration, champion/challenger aliases, rollback, and model lookup.

A thin layer over the MLflow Model Registry (``MlflowClient``, aliases API), one module per concept:

* :mod:`~radflow.registry.gates` — :func:`check_gates`, the quality gates of :class:`GateConfig`
  (pure; compares with the champion only on the same test split, by a paired test on labels with
  enough positives and negatives);
* :mod:`~radflow.registry.registration` — :func:`register` adds a run's model as a new version,
  tags it with its lineage (dataset version, git commit, headline test metrics) and gates it;
  passing versions get ``challenger``;
* :mod:`~radflow.registry.comparison` — both runs' per-image test scores for the paired champion comparison;
* :mod:`~radflow.registry.aliases` — :func:`promote` and :func:`rollback` of ``champion``;
* :mod:`~radflow.registry.listing` — :func:`list_models`: models, versions, aliases, gate verdicts;
* :mod:`~radflow.registry.resolution` — :func:`resolve_model` turns any MODEL argument into a local
  checkpoint through :mod:`radflow.modelref`, the one parser and resolver of model references.
"""

from __future__ import annotations

from radflow.modelref import CHALLENGER, CHAMPION, CHECKPOINT_ARTIFACT
from radflow.registry.aliases import PREVIOUS_CHAMPION_TAG, promote, rollback
from radflow.registry.gates import EVAL_DATASET_TAG, EVAL_HELD_OUT_TAG, EVAL_SPLIT_TAG, PairedScores, check_gates
from radflow.registry.listing import list_models
from radflow.registry.registration import GATE_TAG, HEADLINE_METRICS, LINEAGE_TAGS, register, registration_summary
from radflow.registry.resolution import resolve_model, resolve_model_run

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CHECKPOINT_ARTIFACT",
    "EVAL_DATASET_TAG",
    "EVAL_HELD_OUT_TAG",
    "EVAL_SPLIT_TAG",
    "GATE_TAG",
    "HEADLINE_METRICS",
    "LINEAGE_TAGS",
    "PREVIOUS_CHAMPION_TAG",
    "PairedScores",
    "check_gates",
    "list_models",
    "promote",
    "register",
    "registration_summary",
    "resolve_model",
    "resolve_model_run",
    "rollback",
]
