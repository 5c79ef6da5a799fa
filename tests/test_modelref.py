"""The one model reference: parsing every MODEL form, one-read resolution, and a promotion racing a load.

The registry tests run against a real SQLite MLflow store. Versions are registered straight from
runs that carry an exported ONNX file (tagged as ``radflow export`` tags them), so no model is
trained or pickled; each version's ONNX has its own labels, which tells which file was loaded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from radflow.errors import NotFoundError
from radflow.inference.routing import load_model
from radflow.inference.settings import ServeSettings
from radflow.modelref import (
    ModelRef,
    RefKind,
    ResolvedModel,
    model_uri,
    parse_model_ref,
    resolve_model_ref,
)
from radflow.runtime import RadflowModel
from radflow.runtime.session import ONNX_TAG
from radflow.tracking import PROGRESS_ENV, env_scope
from radflow.train.checkpoint import ModelMeta

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models/model.onnx", ModelRef("models/model.onnx", RefKind.ONNX, path=Path("models/model.onnx"))),
        ("checkpoints/best.pt", ModelRef("checkpoints/best.pt", RefKind.CHECKPOINT, path=Path("checkpoints/best.pt"))),
        (RUN, ModelRef(RUN, RefKind.RUN, run_id=RUN)),
        (f"runs:/{RUN}", ModelRef(f"runs:/{RUN}", RefKind.RUN, run_id=RUN)),
        (
            f"runs:/{RUN}/onnx/model.onnx",
            ModelRef(f"runs:/{RUN}/onnx/model.onnx", RefKind.RUN, run_id=RUN, artifact="onnx/model.onnx"),
        ),
        (
            "models:/chest-xray@champion",
            ModelRef("models:/chest-xray@champion", RefKind.ALIAS, name="chest-xray", alias="champion"),
        ),
        ("models:/chest-xray/3", ModelRef("models:/chest-xray/3", RefKind.VERSION, name="chest-xray", version="3")),
    ],
)
def test_every_form_parses_to_its_kind(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected


def test_a_folder_is_a_checkpoint_reference(tmp_path: Path) -> None:
    assert parse_model_ref(str(tmp_path)).kind is RefKind.CHECKPOINT


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("models:/chest-xray", "names no alias or version"),
        ("models:/chest-xray/latest", "names no alias or version"),
        ("models:/@champion", "is not models:/NAME@ALIAS"),
        ("runs:/abc", "does not start with a 32-hex run id"),
        ("s3://bucket/model.onnx", "has an unknown scheme"),
        ("", "is empty"),
    ],
)
def test_malformed_references_name_the_text_and_the_accepted_forms(text: str, why: str) -> None:
    with pytest.raises(NotFoundError) as err:
        parse_model_ref(text)
    message = str(err.value)
    assert message.startswith(f"{text!r} {why}")
    assert "models:/NAME@ALIAS or models:/NAME/N" in message and "runs:/RUN_ID" in message


def test_model_uri_round_trips() -> None:
    assert parse_model_ref(model_uri("chest-xray", version=4)).version == "4"
    assert parse_model_ref(model_uri("chest-xray", alias="challenger")).alias == "challenger"


def test_env_scope_restores_set_and_unset_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "true")
    monkeypatch.delenv("RADFLOW_TEST_UNSET", raising=False)
    with env_scope(**{PROGRESS_ENV: "false", "RADFLOW_TEST_UNSET": "1"}):
        assert os.environ[PROGRESS_ENV] == "false" and os.environ["RADFLOW_TEST_UNSET"] == "1"
    assert os.environ[PROGRESS_ENV] == "true" and "RADFLOW_TEST_UNSET" not in os.environ


# ---------------------------------------------------------------------------------------------
# Against a real registry


@dataclass
class Registry:
    uri: str
    experiment_id: str
    root: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    from radflow.tracking import ensure_experiment

    root = tmp_path_factory.mktemp("modelref")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    yield Registry(uri, ensure_experiment(uri, "modelref-tests"), root)


def _onnx_run(registry: Registry, labels: list[str], dataset_version: str) -> str:
    """A run holding an exported ONNX model with ``labels``, tagged as ``radflow export`` tags runs."""
    from mlflow import MlflowClient

    from radflow.export import export_onnx
    from tests.export.checkpoints import PoolNet

    meta = ModelMeta(arch="pool", task="multilabel", labels=labels, num_outputs=2, preprocess={"size": 16})
    path = export_onnx(PoolNet(), meta, registry.root / f"{uuid.uuid4().hex}" / "model.onnx")
    client = MlflowClient(registry.uri)
    run_id = client.create_run(registry.experiment_id, tags={"radflow.dataset_version": dataset_version}).info.run_id
    client.log_artifact(run_id, str(path), "onnx")
    client.set_tag(run_id, ONNX_TAG, "onnx/model.onnx")
    client.set_terminated(run_id)
    return run_id


def _registered(registry: Registry, runs: list[str]) -> str:
    """A registered model with one version per run (version tags as `radflow register` copies them)."""
    from mlflow import MlflowClient

    client = MlflowClient(registry.uri)
    name = f"chest-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for run_id in runs:
        tags = dict(client.get_run(run_id).data.tags)
        client.create_model_version(
            name,
            f"runs:/{run_id}/onnx",
            run_id=run_id,
            tags={k: tags[k] for k in ("radflow.dataset_version", ONNX_TAG)},
        )
    return name


def test_an_alias_resolves_to_its_identity_in_one_registry_read(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    first, second = _onnx_run(registry, ["a", "b"], "ds-1"), _onnx_run(registry, ["c", "d"], "ds-2")
    name = _registered(registry, [first, second])
    MlflowClient(registry.uri).set_registered_model_alias(name, "champion", "2")

    calls: list[str] = []
    for method in ("get_model_version_by_alias", "get_model_version", "get_registered_model", "get_run"):
        original = getattr(MlflowClient, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, method, counted)
    resolved = resolve_model_ref(f"models:/{name}@champion", registry.uri)
    assert calls == ["get_model_version_by_alias"]
    assert (resolved.name, resolved.version, resolved.alias, resolved.run_id, resolved.dataset_version) == (
        name,
        "2",
        "champion",
        second,
        "ds-2",
    )
    assert resolved.uri == f"models:/{name}/2"
    assert RadflowModel.load(resolved).labels == ["c", "d"]


def test_a_promotion_racing_a_load_cannot_mislabel_the_model(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """@champion moves to version 2 between the resolution and the ONNX download; version 1 is served and named."""
    from mlflow import MlflowClient

    first, second = _onnx_run(registry, ["a", "b"], "ds-1"), _onnx_run(registry, ["c", "d"], "ds-2")
    name = _registered(registry, [first, second])
    client = MlflowClient(registry.uri)
    client.set_registered_model_alias(name, "champion", "1")

    download = ResolvedModel.download

    def promote_then_download(self: ResolvedModel, artifact: str) -> Path:
        client.set_registered_model_alias(name, "champion", "2")
        return download(self, artifact)

    monkeypatch.setattr(ResolvedModel, "download", promote_then_download)
    settings = ServeSettings(model_name=name, tracking_uri=registry.uri, threads=1)
    loaded = load_model(f"models:/{name}@champion", settings)

    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"  # the race did happen
    assert (loaded.name, loaded.version, loaded.alias, loaded.run_id) == (name, "1", "champion", first)
    assert loaded.model.labels == ["a", "b"]  # version 1's ONNX, the one the label names
    assert loaded.dataset_version == "ds-1" and loaded.in_registry and loaded.in_mlflow


def test_serving_a_missing_champion_says_which_version_to_promote(registry: Registry) -> None:
    from mlflow import MlflowClient

    name = _registered(registry, [_onnx_run(registry, ["a", "b"], "ds-1")])
    MlflowClient(registry.uri).set_registered_model_alias(name, "challenger", "1")
    settings = ServeSettings(model_name=name, tracking_uri=registry.uri, threads=1)
    with pytest.raises(NotFoundError) as err:
        load_model(f"models:/{name}@champion", settings)
    assert str(err.value) == (
        f"models:/{name}@champion not found: no version holds @champion yet; version 1 holds @challenger — "
        f"promote it with `radflow promote {name} 1`."
    )


def test_an_unknown_model_name_lists_the_registered_ones_with_the_close_name(registry: Registry) -> None:
    name = _registered(registry, [_onnx_run(registry, ["a", "b"], "ds-1")])
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    with pytest.raises(NotFoundError) as err:
        RadflowModel.load(f"models:/{typo}/1", tracking_uri=registry.uri)
    message = str(err.value)
    assert message.startswith(f"no registered model {typo!r}") and f"Did you mean {name!r}" in message
    assert name in message.split("Registered models: ")[1]


def test_a_missing_version_lists_the_versions(registry: Registry) -> None:
    name = _registered(registry, [_onnx_run(registry, ["a", "b"], "ds-1")])
    with pytest.raises(NotFoundError, match=rf"model '{name}' has no version 7; its versions are 1\."):
        resolve_model_ref(f"models:/{name}/7", registry.uri)


def test_lineage_is_read_from_the_version_an_alias_resolves_to(registry: Registry, tmp_path: Path) -> None:
    import json

    from mlflow import MlflowClient

    from radflow.pipeline.lineage import LINEAGE_ARTIFACT, show_lineage

    first, second = _onnx_run(registry, ["a", "b"], "ds-1"), _onnx_run(registry, ["c", "d"], "ds-2")
    client = MlflowClient(registry.uri)
    record = tmp_path / "lineage.json"
    record.write_text(json.dumps({"dataset": {"version": "ds-2"}}))
    client.log_artifact(second, str(record), LINEAGE_ARTIFACT.rsplit("/", 1)[0])
    name = _registered(registry, [first, second])
    client.set_registered_model_alias(name, "champion", "2")

    lineage = show_lineage(f"models:/{name}@champion", registry.uri)
    assert (lineage["model"], lineage["asked"], lineage["aliases"]) == (
        f"models:/{name}/2",
        f"models:/{name}@champion",
        ["champion"],
    )
    assert lineage["dataset"]["version"] == "ds-2"
    with pytest.raises(NotFoundError, match=rf"models:/{name}/1 \(run {first}\) has no recorded lineage"):
        show_lineage(f"models:/{name}/1", registry.uri)
    with pytest.raises(NotFoundError, match="lineage is recorded for registered models"):
        show_lineage(first, registry.uri)


def test_an_alias_of_an_unknown_model_lists_the_registered_ones_with_the_close_name(registry: Registry) -> None:
    from mlflow import MlflowClient

    name = f"chest-xray-{uuid.uuid4().hex[:6]}"
    MlflowClient(registry.uri).create_registered_model(name)
    typo = name.replace("chest-xray", "chestxray")
    with pytest.raises(NotFoundError) as err:
        resolve_model_ref(f"models:/{typo}@champion", registry.uri)
    message = str(err.value)
    # the close name first (the module's registry holds other tests' models, which may be suggested after it)
    assert message.startswith(f"no registered model {typo!r} in {registry.uri}. Did you mean {name!r}")
    assert name in message.split("Registered models: ")[1] and "RESOURCE_DOES_NOT_EXIST" not in message


def test_register_takes_gate_settings(registry: Registry) -> None:
    """`radflow register -S gates.KEY=VALUE`, here beside the store the other registry reads use."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from radflow.cli import app

    uri = registry.uri
    client = MlflowClient(uri)
    run_id = client.create_run(registry.experiment_id).info.run_id
    client.log_metric(run_id, "test_macro_auroc", 0.75)
    client.log_text(run_id, "flavors: {}\n", "model/MLmodel")
    client.set_terminated(run_id)
    runner = CliRunner()
    base = ["register", run_id, "--name", f"chest-{uuid.uuid4().hex[:8]}", "--tracking-uri", uri]
    assert runner.invoke(app, base).exit_code == 1  # default gate: macro AUROC >= 0.80
    lowered = runner.invoke(app, [*base, "-S", "gates.min_macro_auroc=0.7", "--json"])
    assert lowered.exit_code == 0, lowered.output
    assert '"passed": true' in lowered.stdout and '"version": "2"' in lowered.stdout
    other = runner.invoke(app, [*base, "-S", "train.lr=0.1"])
    assert other.exit_code == 2 and "register reads only the gates: section" in other.output
    misspelt = runner.invoke(app, [*base, "-S", "gates.min_auroc=0.7"])
    assert misspelt.exit_code == 2 and "Did you mean 'min_macro_auroc'" in misspelt.output
    listed = runner.invoke(app, ["models", base[3], "--tracking-uri", uri])  # piped: the table is not cut at 80
    row = next(line for line in listed.output.splitlines() if line.startswith("│ 1 "))
    assert "failed (test_macro_auroc 0.7500 < min_macro_auroc 0.8)" in row and run_id[:12] in row
