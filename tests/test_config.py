"""params.yaml: defaults, overrides, and clear errors for misspelt keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radflow.config import Params, describe_params, flatten_params, load_params, params_yaml
from radflow.errors import ConfigError, NotFoundError


def test_defaults_without_a_file() -> None:
    params = load_params(None)
    assert params.train.arch == "small_cnn" and params.train.augment.hflip is False
    assert params.evaluate.threshold_method == "youden" and params.gates.min_macro_auroc == 0.80


def test_file_values_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n  augment:\n    rotation_deg: 2\ndata:\n  source: synthetic\n")
    params = load_params(path)
    assert params.train.epochs == 3 and params.train.augment.rotation_deg == 2
    assert params.data == {"source": "synthetic"}
    changed = params.with_overrides({"train.epochs": 5, "train.augment.hflip": True, "train.lr": None})
    assert changed.train.epochs == 5 and changed.train.augment.hflip is True
    assert changed.train.lr == params.train.lr  # None = flag not given
    assert params.train.epochs == 3  # the original is untouched
    assert load_params(_roundtrip(changed, tmp_path)) == changed


def _roundtrip(params: Params, tmp_path: Path) -> Path:
    out = tmp_path / "resolved.yaml"
    out.write_text(params.to_yaml())
    return out


def test_misspelt_key_in_file_names_it_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.epocs'\. Did you mean 'epochs'\?"):
        load_params(path)


def test_misspelt_section_and_bad_value(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        load_params(path)
    path.write_text("train:\n  optimizer: sgd\n")
    with pytest.raises(ConfigError, match=r"train\.optimizer.*'sgd'"):
        load_params(path)


def test_misspelt_override_suggests() -> None:
    with pytest.raises(ConfigError, match=r"'train.augment.flip'.*Did you mean 'hflip'"):
        Params().with_overrides({"train.augment.flip": True})
    with pytest.raises(ConfigError, match=r"train\.epochs.*greater than or equal to 1"):
        Params().with_overrides({"train.epochs": 0})


def test_missing_file() -> None:
    with pytest.raises(NotFoundError):
        load_params(Path("/nonexistent/params.yaml"))


def test_flatten_params_gives_dotted_names() -> None:
    flat = flatten_params(Params())
    assert flat["train.arch"] == "small_cnn"
    assert flat["train.augment.hflip"] == "False"
    assert flat["evaluate.age_bands"] == "[0.0, 40.0, 60.0, 80.0, 200.0]"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("train.learning_rate", "'lr'"),
        ("train.n_epochs", "'epochs'"),
        ("train.batch", "'batch_size'"),
        ("serve.batch", "'max_batch_size'"),
        ("data.image_size", "'size'"),
        ("evaluate.bootstrap", "'n_bootstrap'"),
    ],
)
def test_common_aliases_suggest_the_setting_they_mean(key: str, hint: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as err:
        Params().with_overrides({key: 1})
    assert str(err.value).startswith(f"unknown setting {key!r} (no {name!r} in {section}). Did you mean {hint}")


def test_an_alias_in_the_file_is_suggested_too(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.learning_rate'\. Did you mean 'lr'\?"):
        load_params(path)


def test_describe_params_lists_every_key_with_default_and_description() -> None:
    rows = describe_params()
    assert set(flatten_params(Params())) == {row["key"] for row in rows}
    assert all(row["description"] for row in rows), [row["key"] for row in rows if not row["description"]]
    by_key = {row["key"]: row for row in rows}
    assert by_key["train.lr"] == {
        "key": "train.lr",
        "type": "float",
        "default": 0.001,
        "description": "Initial learning rate.",
    }
    assert by_key["train.optimizer"]["type"] == "adamw|adam"
    assert by_key["serve.threads"]["type"] == "int | null"  # attribute docstrings count as descriptions
    augment = [row["key"].removeprefix("train.augment.") for row in describe_params("train.augment")]
    assert augment == ["rotation_deg", "scale", "brightness", "contrast", "hflip", "enabled"]
    assert {row["key"] for row in describe_params("serve.oidc")} >= {"serve.oidc_issuer", "serve.oidc_jwks"}
    with pytest.raises(ConfigError, match=r"no settings under 'trian'\. Did you mean 'train'\?"):
        describe_params("trian")


def test_params_yaml_carries_descriptions_and_reads_back_the_same(tmp_path: Path) -> None:
    params = Params().with_overrides(
        {"data.labels": ["Edema", "No Finding"], "data.uncertain": "zeros,Edema=ones", "train.epochs": 2}
    )
    text = params_yaml(params)
    assert yaml.safe_load(text) == params.model_dump(mode="json")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path) == params
    lines = text.splitlines()
    assert lines[lines.index("  lr: 0.001") - 1] == "  # Initial learning rate."
    assert lines[lines.index("train:") - 1] == "# Training settings."
    assert "    # Random horizontal flip; off by default for chest films because laterality matters." in lines
    assert max(len(line) for line in lines) <= 120


def test_every_loss_a_task_kind_declares_is_a_valid_setting() -> None:
    from radflow.tasks import get_task, list_tasks

    for task in list_tasks():
        for loss in get_task(task).losses:
            assert Params().with_overrides({"train.loss": loss}).train.loss == loss, (task, loss)
    with pytest.raises(ConfigError, match=r"train\.loss"):
        Params().with_overrides({"train.loss": "dice_ce"})


def test_segmentation_sources_are_workspace_sources() -> None:
    for source in ("siim", "masks"):
        params = Params().with_overrides({"data.source": source})
        assert params.data.format == source
