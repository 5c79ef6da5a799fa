"""params.yaml: defaults, overrides, and clear errors for misspelt keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from radflow.config import Params, flatten_params, load_params
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
