"""The prediction/feedback store: schema, versioned migrations and the reads the rest of radflow makes.

Written by the inference service (predictions, feedback, alerts); read by online evaluation
(:mod:`radflow.monitor`), the feedback export (:mod:`radflow.feedback`) and the web UI. It imports
none of them, nor the web server: each of those imports this package. Torch-free.

- :mod:`radflow.store.schema`: the tables at :data:`SCHEMA_VERSION`, and UTC normalisation of times.
- :mod:`radflow.store.migrations`: the ordered migrations applied when a store opens.
- :mod:`radflow.store.store`: :class:`Store`, the writer and the single-row reads and writes
  (idempotent by prediction id: :func:`prediction_id_scope`).
- :mod:`radflow.store.queries`: predictions joined to the feedback that counts (latest wins).
- :mod:`radflow.store.access`: API token records and the append-only audit log (policy: :mod:`radflow.auth`).
"""

from __future__ import annotations

from radflow.store.access import (
    add_token,
    append_audit,
    audit_events,
    get_token,
    list_tokens,
    revoke_tokens,
)
from radflow.store.migrations import MIGRATIONS, Migration, SchemaVersionError, migrate, schema_version
from radflow.store.queries import (
    LabelledPrediction,
    ModelKey,
    labelled_predictions,
    prediction_counts,
    recent_predictions,
)
from radflow.store.schema import SCHEMA_VERSION, iso_utc, utc
from radflow.store.store import (
    PredictionRecord,
    Store,
    StoreUnavailableError,
    input_path,
    materialize_crop,
    new_prediction_ids,
    plain_grey_png,
    prediction_id_scope,
    sqlite_file,
    study_key,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "LabelledPrediction",
    "Migration",
    "ModelKey",
    "PredictionRecord",
    "SchemaVersionError",
    "Store",
    "StoreUnavailableError",
    "add_token",
    "append_audit",
    "audit_events",
    "get_token",
    "input_path",
    "iso_utc",
    "labelled_predictions",
    "list_tokens",
    "materialize_crop",
    "migrate",
    "new_prediction_ids",
    "plain_grey_png",
    "prediction_counts",
    "prediction_id_scope",
    "recent_predictions",
    "revoke_tokens",
    "schema_version",
    "sqlite_file",
    "study_key",
    "utc",
]
