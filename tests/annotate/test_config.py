"""Labelling configs: one per task kind, accepted back unchanged, and a project of another task refused by name."""

from __future__ import annotations

import pytest

from radflow.annotate.config import check_config, finding_control, label_config, parse_controls
from radflow.errors import ConfigError


@pytest.mark.parametrize(
    ("task", "labels", "tags"),
    [
        ("multilabel", ["Cardiomegaly", "Pleural Effusion"], {"choices"}),
        ("multiclass", ["normal", "abnormal"], {"choices"}),
        ("regression", ["bone_age"], {"number", "choices"}),
        ("segmentation", ["left_lung", "right_lung"], {"brushlabels"}),
        ("detection", ["Nodule", "Mass"], {"rectanglelabels"}),
    ],
)
def test_each_kind_has_its_controls_and_matches_itself(task: str, labels: list[str], tags: set[str]) -> None:
    config = label_config(task, labels, "months" if task == "regression" else None)
    controls = parse_controls(config.xml)
    assert {c.tag for c in controls.values()} == tags
    check_config(config.xml, config, "1")  # its own config passes


def test_multilabel_asks_present_or_absent_per_finding() -> None:
    config = label_config("multilabel", ["Pleural Effusion", "No Finding"])
    controls = parse_controls(config.xml)
    assert config.findings == {"finding_pleural_effusion": "Pleural Effusion", "finding_no_finding": "No Finding"}
    assert all(controls[name].values == ("present", "absent") for name in config.findings)
    assert finding_control("Lung Lesion") == "finding_lung_lesion"


def test_a_project_for_another_task_or_other_labels_is_refused_naming_the_difference() -> None:
    expected = label_config("segmentation", ["left_lung", "right_lung"])
    with pytest.raises(ConfigError, match=r"missing <brushlabels name='masks'>.*unexpected <rectanglelabels"):
        check_config(label_config("detection", ["Nodule"]).xml, expected, "7")
    with pytest.raises(ConfigError, match=r"\['left_lung', 'heart'\] where the task needs"):
        check_config(label_config("segmentation", ["left_lung", "heart"]).xml, expected, "7")
    with pytest.raises(ConfigError, match="not XML"):
        check_config("<View>", expected, "7")
    with pytest.raises(ConfigError, match="no Label Studio config for task 'ordinal'"):
        label_config("ordinal", ["a"])
