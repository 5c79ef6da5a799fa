"""The evaluation report in a real browser: Playwright drives Debian's headless Chromium over the logged report.html.

A tiny model is evaluated into an MLflow run (``evaluate_and_log``); the report logged as
``evaluation/report.html`` is opened from the artifact store before registration (gates not yet
applied) and again after :func:`log_gated_report` wrote the verdicts, and every section must be
visible, every figure decoded, no request leave the file. Screenshots go to ``test-artifacts/report/``.
Chromium is installed with apt-get when missing; the test is skipped, with the reason, only where that fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radflow.config import EvaluateConfig, GateConfig, ModelCardConfig
from radflow.evaluate.html import REPORT_ARTIFACT, section_ids
from radflow.evaluate.report import evaluate_and_log, log_gated_report
from radflow.registry.gates import check_gates
from radflow.tracking import client, ensure_experiment
from tests.debian import ensure_debian_package
from tests.e2e.test_ui_browser import CHROMIUM, CHROMIUM_ARGS
from tests.evaluate.tiny import tiny_model

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "report"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    ensure_debian_package("chromium", CHROMIUM.exists)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser: Any, report: Path, shot: str) -> Any:
    """The report opened from disk; fails on any request that is not the file itself or an inline image."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(report.resolve().as_uri())
    page.wait_for_load_state("load")
    assert [url for url in fetched if not url.startswith(("file://", "data:"))] == []
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    return context, page


def _check_sections(page: Any, task: str) -> None:
    for sid in section_ids(task):
        page.click(f'nav a[href="#{sid}"]')
        section = page.locator(f"section#{sid}")
        assert section.is_visible(), f"section {sid} is not visible"
        assert section.locator("h2").is_visible()
        assert section.locator("h2").bounding_box()["height"] > 10
        assert section.evaluate("s => s.getBoundingClientRect().top < window.innerHeight"), f"{sid} not scrolled to"
    loaded = page.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 300)")
    assert loaded and all(loaded), f"figures not decoded: {loaded}"


def test_logged_report_shows_every_section_before_and_after_registration(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("report-browser")
    ds_path, checkpoint = tiny_model(root, "multilabel", labels=("Cardio<megaly>", "Edema & fluid"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow = client(uri, create=True)
    run_id = mlflow.create_run(ensure_experiment(uri, "report")).info.run_id  # artifacts beside the db
    card = ModelCardConfig(intended_use="Second reader for adult chest films.")
    result = evaluate_and_log(
        run_id, checkpoint, ds_path, EvaluateConfig(n_bootstrap=50, pdf=False), uri, model_card=card
    )

    before = Path(mlflow.download_artifacts(run_id, REPORT_ARTIFACT, str(root / "before")))
    context, page = _open(browser, before, "before-registration.png")
    _check_sections(page, "multilabel")
    assert "Not gated yet" in page.locator("section#gates").inner_text()
    assert "Second reader for adult chest films." in page.locator("section#model-card").inner_text()
    assert page.locator("section#per-label td", has_text="Cardio<megaly>").count() == 1
    context.close()

    metrics = {k: float(v) for k, v in result["headline"].items() if v is not None}
    outcome = check_gates(metrics, {"radflow.task": "multilabel"}, GateConfig())
    registration = {**outcome, "name": "chest-xray", "version": "1", "alias": None, "champion": None}
    logged = log_gated_report(run_id, {**registration, "tracking_uri": uri})
    assert logged == [REPORT_ARTIFACT]

    after = Path(mlflow.download_artifacts(run_id, REPORT_ARTIFACT, str(root / "after")))
    context, page = _open(browser, after, "after-registration.png")
    _check_sections(page, "multilabel")
    gates = page.locator("section#gates").inner_text()
    assert "Not gated yet" not in gates and "chest-xray version 1" in gates
    verdict = "gates passed" if outcome["passed"] else "gates failed"
    assert verdict in gates and "min_macro_auroc" in gates
    # The owner's statement survives the rewrite: it was stored with the evaluation.
    assert "Second reader for adult chest films." in page.locator("section#model-card").inner_text()
    context.close()
