"""Label selections and uncertainty policies: case-insensitive names, every misspelt label named at once."""

from __future__ import annotations

import pytest

from radflow.data.labels import CHEXPERT_LABELS, NIH_LABELS, parse_label_list, parse_uncertainty
from radflow.errors import ConfigError


def test_a_label_that_differs_only_in_case_is_the_column() -> None:
    assert parse_label_list("cardiomegaly, PLEURAL EFFUSION", CHEXPERT_LABELS) == ["Cardiomegaly", "Pleural Effusion"]
    assert parse_label_list(["pleural_thickening"], NIH_LABELS) == ["Pleural_Thickening"]
    assert parse_uncertainty("zeros,edema=ones", CHEXPERT_LABELS).per_label == {"Edema": "ones"}


def test_a_case_match_is_not_taken_when_two_columns_share_it() -> None:
    with pytest.raises(ConfigError, match="unknown label 'edema'"):
        parse_label_list("edema", ["Edema", "EDEMA"])


def test_every_misspelt_label_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_label_list("Cardiomegaly,Cardiomegly,Edma,Zebra", CHEXPERT_LABELS)
    message = str(err.value)
    assert message.startswith(
        "--labels: unknown labels 'Cardiomegly' (did you mean 'Cardiomegaly'?), 'Edma' (did you mean 'Edema'?), "
        "'Zebra'. Labels in this source: No Finding, "
    )


def test_one_misspelt_label_keeps_the_single_form() -> None:
    with pytest.raises(ConfigError, match=r"^--labels: unknown label 'Edma'\. Did you mean 'Edema'\? Labels in"):
        parse_label_list("Edma", CHEXPERT_LABELS)
