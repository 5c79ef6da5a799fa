"""The HTML evaluation report: its sections, numbers equal to the JSON's, escaping, self-containment, the gates.

Each task kind is evaluated once (module fixture) on a tiny dataset by an untrained model; the
browser check of the same page is tests/e2e/test_report_browser.py.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from radflow.config import NOT_STATED, EvaluateConfig, GateConfig, ModelCardConfig
from radflow.data.dataset import Dataset
from radflow.evaluate.html import CHROMIUM, print_pdf, render_report, section_ids
from radflow.evaluate.report import evaluate_checkpoint
from radflow.registry.gates import check_gates
from tests.evaluate.tiny import tiny_model

FAST = EvaluateConfig(n_bootstrap=50, pdf=False)
ODD = "Car<dio>&megaly"
"""A label name that breaks a page which does not escape it."""
CARD = ModelCardConfig(intended_use="Triage of adult PA chest films <b>only</b>", limitations="Not for children.")
TASKS = ("multilabel", "multiclass", "regression", "segmentation")


class _Page(HTMLParser):
    """Sections by id -> their tables (rows of cell texts), and every src/href on the page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self.order: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._section: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "section":
            self._section = a["id"]
            self.order.append(str(a["id"]))
            self.sections[str(a["id"])] = []
        elif tag == "table" and self._section:
            self.sections[self._section].append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._section:
            self.sections[self._section][-1].append(self._row)
            self._row = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    return parsed


def _row(tables: list[list[list[str]]], first: str) -> list[str]:
    return next(row for table in tables for row in table if row and row[0] == first)


def _section_text(page: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert match, f"no section {sid}"
    return match.group(1)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], str, Path]]:
    """task -> (evaluation result, report.html text, output folder)."""
    root = tmp_path_factory.mktemp("html")
    out = {}
    for task in TASKS:
        labels = (ODD, "Edema") if task == "multilabel" else None
        ds_path, checkpoint = tiny_model(root, task, n=20 if task == "segmentation" else 90, labels=labels)
        folder = root / f"out-{task}"
        result = evaluate_checkpoint(checkpoint, ds_path, "test", FAST, folder, batch_size=16, model_card=CARD)
        out[task] = (result, (folder / "report.html").read_text(encoding="utf-8"), folder)
    return out


@pytest.mark.parametrize("task", TASKS)
def test_every_section_is_there_in_order(reports: dict[str, Any], task: str) -> None:
    result, page, folder = reports[task]
    parsed = _parse(page)
    assert parsed.order == list(section_ids(task))
    table = "per-structure" if task == "segmentation" else "per-label"
    assert parsed.order[1] == table and parsed.sections[table], "the per-label table is empty"
    # The JSON the report was rendered from is the JSON written beside it.
    assert json.loads((folder / "evaluation.json").read_text())["headline"] == result["headline"]


@pytest.mark.parametrize("task", TASKS)
def test_figures_are_embedded_and_nothing_is_fetched(reports: dict[str, Any], task: str) -> None:
    result, page, folder = reports[task]
    parsed = _parse(page)
    assert not [link for link in parsed.links if re.match(r"(https?:)?//", link)]
    assert not parsed.tags & {"script", "link", "iframe", "object"}
    images = [link for link in parsed.links if link.startswith("data:")]
    assert result["plots"] and len(images) == len(result["plots"])
    for uri, name in zip(images, result["plots"], strict=True):
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]) == (folder / name).read_bytes()


def test_multilabel_numbers_are_the_json_numbers(reports: dict[str, Any]) -> None:
    result, page, _ = reports["multilabel"]
    parsed = _parse(page)
    per = result["metrics"]["per_label"]
    for label, entry in per.items():
        row = _row(parsed.sections["per-label"], label)
        ci = entry["auroc_ci"]
        assert row[1] == str(entry["n"])
        assert row[3] == f"{entry['auroc']:.3f} [{ci[0]:.3f}-{ci[1]:.3f}]"
        assert row[4] == f"{entry['auprc']:.3f}" and row[7] == f"{entry['threshold']:.3f}"
        threshold = _row(parsed.sections["thresholds"], label)
        assert threshold[1] == f"{result['thresholds']['per_label'][label]['threshold']:.3f}"
        assert threshold[2] == "val (youden)" and threshold[3] == f"{entry['sensitivity']:.3f}"
    headline = _row(parsed.sections["summary"], "test_macro_auroc")
    assert headline[1] == f"{result['headline']['test_macro_auroc']:.3f}"
    assert headline[2] == f"{result['headline']['test_macro_auroc_ci_low']:.3f}-" + (
        f"{result['headline']['test_macro_auroc_ci_high']:.3f}"
    )
    sex = result["subgroups"]["sex"]
    for value, entry in sex.items():
        row = _row(parsed.sections["subgroups"], value)
        auroc = entry["per_label"][ODD]["auroc"]
        assert row[1] == str(entry["n"]) and row[3] == ("-" if auroc is None else f"{auroc:.3f}")


def test_dataset_section_counts_images_and_patients_per_split(reports: dict[str, Any]) -> None:
    result, page, _ = reports["multilabel"]
    ds = Dataset.open(result["dataset"]["path"])
    tables = _parse(page).sections["dataset"]
    for split in ("train", "val", "test"):
        rows = ds.indices(split)
        patients = ds.manifest["patient_id"].iloc[rows].nunique()
        assert _row(tables, split) == [split, str(len(rows)), str(patients)]
    assert _row(tables, "dataset version") == ["dataset version", ds.version]
    assert _row(tables, "all")[2] == str(ds.manifest["patient_id"].nunique())


def test_other_kinds_report_their_own_numbers(reports: dict[str, Any]) -> None:
    mc, page, _ = reports["multiclass"]
    tables = _parse(page).sections["per-label"]
    for label, entry in mc["metrics"]["per_class"].items():
        assert _row(tables, label)[4] == f"{entry['auprc']:.3f}"
    assert "arg-max" in _section_text(page, "thresholds")

    reg, page, _ = reports["regression"]
    parsed = _parse(page)
    for band, entry in reg["metrics"]["by_band"].items():
        assert _row(parsed.sections["per-label"], band)[2] == ("-" if entry["mae"] is None else f"{entry['mae']:.2f}")
    for sex, entry in reg["metrics"]["by_sex"].items():
        assert _row(parsed.sections["subgroups"], sex) == [sex, str(entry["n"]), f"{entry['mae']:.2f}"]
    assert f"{reg['headline']['test_mae']:.3f}" in _section_text(page, "summary")

    seg, page, _ = reports["segmentation"]
    parsed = _parse(page)
    for structure, entry in seg["metrics"]["per_structure"].items():
        dice = entry["dice"]
        assert _row(parsed.sections["per-structure"], structure)[3].split(" ")[0] == (
            "-" if dice is None else f"{dice:.3f}"
        )
    assert "worst-cases gallery" in _section_text(page, "model-card")
    assert "probability &gt;= 0.5" in _section_text(page, "thresholds")


def test_label_names_and_owner_text_are_escaped(reports: dict[str, Any]) -> None:
    _, page, _ = reports["multilabel"]
    assert "<dio>" not in page and "<b>only</b>" not in page
    assert "Car&lt;dio&gt;&amp;megaly" in page
    card = _section_text(page, "model-card")
    assert "Triage of adult PA chest films &lt;b&gt;only&lt;/b&gt;" in card and "Not for children." in card
    # What the owner did not state says so; the measured parts are filled in.
    assert card.count(html_escape(NOT_STATED)) == 3  # out of scope, owner, known failure cases
    assert "not gated against the champion" in card and "weakest sex subgroup" in card
    assert "training labels" in card


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_gates_preview_before_registration_and_verdicts_after(reports: dict[str, Any]) -> None:
    result, page, folder = reports["multilabel"]
    gates = _section_text(page, "gates")
    macro = result["headline"]["test_macro_auroc"]
    assert "Not gated yet" in gates and "min_macro_auroc" in gates
    assert f"{macro:.4f}" in gates and ("would pass" if macro >= 0.8 else "would fail") in gates

    metrics = {k: float(v) for k, v in result["headline"].items() if v is not None}
    outcome = check_gates(metrics, {"radflow.task": "multilabel"}, GateConfig(min_macro_auroc=0.99))
    registration = {**outcome, "name": "chest<x>", "version": "3", "alias": None, "champion": None}
    figures = {name: (folder / name).read_bytes() for name in result["plots"]}
    gated = _section_text(render_report(result, figures, gates=registration), "gates")
    assert "Not gated yet" not in gated and "chest&lt;x&gt;" in gated and "gates failed" in gated
    assert '<td class="fail">failed</td>' in gated and "no alias" in gated


def test_pdf_is_printed_with_chromium_or_skipped_with_one_line(
    reports: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, folder = reports["regression"]
    with caplog.at_level(logging.INFO, logger="radflow.evaluate.html"):
        assert print_pdf(folder / "report.html", tmp_path / "none.pdf", chromium=tmp_path / "no-chromium") is None
    assert "no PDF renderer" in caplog.text and not (tmp_path / "none.pdf").exists()
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed here (tests/e2e/test_report_browser.py installs it)")
    pdf = print_pdf(folder / "report.html", tmp_path / "report.pdf")
    assert pdf is not None and pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 20_000
