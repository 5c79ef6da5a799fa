from __future__ import annotations

import math
from pathlib import Path

import pytest

from radflow.data.labels import parse_uncertainty
from radflow.data.sources import read_source
from radflow.errors import ConfigError, DataError, NotFoundError
from tests.data.sources_fixtures import write_boneage, write_chexpert, write_folder, write_nih


def test_chexpert_parses_patient_study_view_and_official_split(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "CheXpert-v1.0-small")
    table = read_source("chexpert", src)
    assert len(table.records) == 8
    first = table.records[0]
    assert first.patient == "patient00001" and first.study == "patient00001/study1"
    assert first.view == "frontal" and first.projection == "AP" and first.sex == "M" and first.age == 41
    assert {r.official_split for r in table.records if r.patient == "patient00004"} == {"test"}
    assert {r.official_split for r in table.records if r.patient != "patient00004"} == {""}
    assert first.row == 2


@pytest.mark.parametrize(("policy", "expected"), [("zeros", 0.0), ("ones", 1.0), ("ignore", math.nan)])
def test_chexpert_uncertainty_policies(tmp_path: Path, policy: str, expected: float) -> None:
    table = read_source("chexpert", write_chexpert(tmp_path / "cx"), uncertain=policy)
    uncertain_rows = [r for r in table.records if r.study and r.study.endswith("study1")]
    values = {r.labels["Edema"] for r in uncertain_rows}
    assert len(values) == 1
    value = values.pop()
    assert (math.isnan(value) and math.isnan(expected)) or value == expected
    # blank cells (not mentioned) are negatives
    assert {r.labels["Edema"] for r in table.records if r.study and r.study.endswith("study2")} == {0.0}


def test_per_label_uncertainty_policy() -> None:
    policy = parse_uncertainty("ignore,Atelectasis=ones", ["Atelectasis", "Edema"])
    assert policy.value("Atelectasis", "-1.0") == 1.0
    assert math.isnan(policy.value("Edema", "-1.0"))
    with pytest.raises(ConfigError, match="Did you mean 'Atelectasis'"):
        parse_uncertainty("Atelectasys=ones", ["Atelectasis", "Edema"])
    with pytest.raises(ConfigError, match="unknown policy 'onse'"):
        parse_uncertainty("onse", ["Edema"])


def test_chexpert_label_selection_and_misspelt_label(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    table = read_source("chexpert", src, labels="Cardiomegaly,Edema")
    assert table.labels == ["Cardiomegaly", "Edema"]
    assert set(table.records[0].labels) == {"Cardiomegaly", "Edema"}
    with pytest.raises(ConfigError, match="Did you mean 'Cardiomegaly'"):
        read_source("chexpert", src, labels="Cardiomegally")


def test_chexpert_misspelt_column_names_file_and_suggests(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    csv = src / "train.csv"
    csv.write_text(csv.read_text().replace("Pleural Effusion", "Pleural Efusion", 1))
    with pytest.raises(DataError, match=r"train\.csv.*'Pleural Efusion'.*Did you mean 'Pleural Effusion'"):
        read_source("chexpert", src)


def test_chexpert_missing_image_is_skipped_with_row(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    (src / "train" / "patient00002" / "study2" / "view1_frontal.png").unlink()
    table = read_source("chexpert", src)
    assert len(table.records) == 7
    (entry,) = table.skipped
    assert entry["row"] == 5 and "patient00002/study2" in entry["path"] and "missing" in entry["error"]


def test_chexpert_bad_value_is_skipped(tmp_path: Path) -> None:
    src = write_chexpert(tmp_path / "cx")
    csv = src / "train.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace("1.0", "yes", 1)
    csv.write_text("\n".join(lines) + "\n")
    table = read_source("chexpert", src)
    assert table.skipped[0]["row"] == 2 and "bad label value" in table.skipped[0]["error"]


def test_nih_pipe_labels_bracketed_header_and_test_list(tmp_path: Path) -> None:
    table = read_source("nih", write_nih(tmp_path / "nih"))
    assert len(table.records) == 6 and len(table.labels) == 14
    second = table.records[1]
    assert second.labels["Effusion"] == 1.0 and second.labels["Mass"] == 1.0 and second.labels["Cardiomegaly"] == 0.0
    assert sum(table.records[0].labels.values()) == 0  # "No Finding"
    assert table.records[0].official_split == "test" and table.records[1].official_split == ""
    assert table.records[2].patient == table.records[3].patient == "2"
    assert table.records[1].age == 51 and table.records[1].sex == "M"


def test_nih_unknown_finding_is_skipped_with_suggestion(tmp_path: Path) -> None:
    src = write_nih(tmp_path / "nih")
    csv = src / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Effusion|Mass", "Efusion|Mass"))
    table = read_source("nih", src)
    assert "Did you mean 'Effusion'" in table.skipped[0]["error"] and table.skipped[0]["row"] == 3


def test_boneage_regression_target_and_sex(tmp_path: Path) -> None:
    table = read_source("boneage", write_boneage(tmp_path / "rsna"))
    assert table.task == "regression" and table.labels == ["boneage"]
    assert [r.labels["boneage"] for r in table.records] == [30, 50, 70, 90, 110]
    assert [r.sex for r in table.records][:2] == ["F", "M"]


def test_folder_classes_are_one_hot(tmp_path: Path) -> None:
    table = read_source("folder", write_folder(tmp_path / "f"))
    assert table.task == "multiclass" and table.labels == ["abnormal", "normal"]
    assert table.records[0].labels == {"abnormal": 1.0, "normal": 0.0}


def test_folder_needs_two_classes(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="at least two class sub-folders"):
        read_source("folder", tmp_path)


def test_unknown_format_and_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'chexpert'"):
        read_source("chexpret", tmp_path)
    with pytest.raises(NotFoundError, match=r"expected train\.csv"):
        read_source("chexpert", tmp_path)
    with pytest.raises(NotFoundError, match="not found"):
        read_source("nih", tmp_path / "nope")
