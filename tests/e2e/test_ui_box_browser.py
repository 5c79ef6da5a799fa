"""A detection model in the reader, in a real browser: its boxes over the image, moved, resized, deleted and added,
and saved as feedback (Playwright driving Debian's headless Chromium against a uvicorn server).

The reader keeps the best boxes (score threshold), drags one box, draws a box of another label and drags its
corner, draws a third and deletes it, then saves; the stored feedback's boxes must be the shown boxes with exactly
those edits. Screenshots go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radflow.tasks import validate_feedback
from tests.e2e.test_ui_browser import ARTIFACTS, WIDE, browser  # noqa: F401 (the module-scoped Chromium fixture)
from tests.serve.models import png_bytes
from tests.ui.server import UiServer

pytestmark = pytest.mark.e2e

HEIGHT, WIDTH = 48, 64
LABELS = ["Lung Opacity", "Nodule"]
TOL = 0.5  # image px: the pointer lands within a CSS pixel (0.4 image px at the page's scale) of where it was sent


@pytest.fixture(scope="module")
def box_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    import torch

    from radflow.export import export_onnx
    from radflow.train.checkpoint import ModelMeta
    from radflow.train.models import create_model

    root = tmp_path_factory.mktemp("ui-box")
    torch.manual_seed(0)
    model = create_model("fcos_small", len(LABELS), widths=(8, 8, 16, 16)).eval()
    meta = ModelMeta(arch="fcos_small", task="detection", labels=LABELS, num_outputs=2, preprocess={"size": 32})
    srv = UiServer(export_onnx(model, meta, root / "det.onnx"), root).start()
    yield srv
    srv.stop()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport=WIDE)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _inside(p: tuple[float, float], box: list[float], margin: float = 0.0) -> bool:
    return box[0] - margin <= p[0] <= box[2] + margin and box[1] - margin <= p[1] <= box[3] + margin


def _area(box: list[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def test_reader_moves_resizes_deletes_and_adds_boxes_and_they_are_saved(
    box_server: UiServer, page: Any, tmp_path: Path
) -> None:
    image = tmp_path / "chest.png"
    image.write_bytes(png_bytes(7, (HEIGHT, WIDTH)))
    page.goto(box_server.url + "/")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#box-tools:not([hidden])")
    page.wait_for_function("() => document.querySelector('#box-label').options.length > 0")
    pid = str(page.locator("#model-info .mono").text_content())
    assert page.locator("#result-title").inner_text() == "Boxes" and page.locator("#findings").is_hidden()
    assert page.locator("#box-label option").all_inner_texts() == LABELS  # the model's labels, not only those answered
    record = box_server.service.require_store().get_prediction(pid)
    served = record["outputs"]["boxes"]
    assert served
    page.wait_for_function("() => { const i = document.querySelector('#image'); return i.complete && i.naturalWidth; }")

    # The score threshold keeps the best boxes (the slider is in percent).
    percent = math.floor(max(b["score"] for b in served) * 100)
    page.fill("#box-threshold", str(percent))
    page.dispatch_event("#box-threshold", "input")
    shown = [b for b in served if b["score"] >= percent / 100]
    expected = [{"label": b["label"], "box": list(b["box"])} for b in shown]
    count = f"{len(shown)} box{'' if len(shown) == 1 else 'es'} shown"
    assert page.locator("#box-count").inner_text() == count

    canvas = page.locator("#box-canvas").bounding_box()
    scale = canvas["width"] / WIDTH

    def at(x: float, y: float) -> tuple[float, float]:
        return canvas["x"] + x * scale, canvas["y"] + y * scale

    def drag(start: tuple[float, float], end: tuple[float, float]) -> None:
        page.mouse.move(*at(*start))
        page.mouse.down()
        page.mouse.move(*at(*end), steps=6)
        page.mouse.up()

    # Move a box whose centre picks it (the smallest shown box under the pointer) by 4, 3 px, away from the edges.
    def picked(p: tuple[float, float]) -> int:
        under = [k for k, b in enumerate(expected) if _inside(p, b["box"])]
        return min(under, key=lambda k: _area(expected[k]["box"]))

    k = next(
        k
        for k, b in enumerate(expected)
        if picked(((b["box"][0] + b["box"][2]) / 2, (b["box"][1] + b["box"][3]) / 2)) == k and _area(b["box"]) < 1500
    )
    x0, y0, x1, y1 = expected[k]["box"]
    dx, dy = (4 if x1 + 4 <= WIDTH else -4), (3 if y1 + 3 <= HEIGHT else -3)
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    drag(centre, (centre[0] + dx, centre[1] + dy))
    expected[k]["box"] = [x0 + dx, y0 + dy, x1 + dx, y1 + dy]
    assert page.locator("#box-delete").is_enabled()  # the moved box is selected

    # Add a box of the other label on empty image, then drag its bottom-right corner out by 3, 2 px.
    moved = [b["box"] for b in expected]
    free = next(
        (float(x), float(y))
        for y in range(2, HEIGHT - 12)
        for x in range(2, WIDTH - 14)
        if not any(_inside((x, y), b, margin=1) for b in moved)
    )
    page.mouse.click(*at(free[0], free[1]))  # a click on empty image selects nothing
    assert page.locator("#box-delete").is_disabled()
    page.select_option("#box-label", LABELS[1])
    added = [free[0], free[1], free[0] + 8, free[1] + 6]
    drag((added[0], added[1]), (added[2], added[3]))
    drag((added[2], added[3]), (added[2] + 3, added[3] + 2))
    added = [added[0], added[1], added[2] + 3, added[3] + 2]
    expected.append({"label": LABELS[1], "box": added})
    assert page.locator("#box-count").inner_text().endswith("2 by you")

    # A third box, drawn and deleted with the Delete key: it must leave no trace.
    taken = [*moved, added]
    spare = next(
        (float(x), float(y))
        for y in range(1, HEIGHT - 4)
        for x in range(1, WIDTH - 5)
        if not any(_inside((x, y), b, margin=3) for b in taken)  # clear of the selected box's corner handles
    )
    drag(spare, (spare[0] + 4, spare[1] + 3))
    assert page.locator("#box-count").inner_text().endswith("3 by you")
    page.keyboard.press("Delete")
    assert page.locator("#box-count").inner_text().startswith(f"{len(expected)} box")
    page.screenshot(path=str(ARTIFACTS / "reader-boxes-1280.png"))

    with page.expect_response(lambda r: r.url.endswith("/v1/feedback")) as answered:
        page.click("#send")
    sent = answered.value.request.post_data_json
    assert sent["prediction_id"] == pid and list(sent["labels"]) == ["boxes"]
    _check(sent["labels"]["boxes"], expected)
    validate_feedback(record["outputs"], sent["labels"], None)
    page.wait_for_selector('#feedback-status[data-kind="ok"]', timeout=10000)
    saved = box_server.service.require_store().feedback(pid)
    assert len(saved) == 1 and saved[0]["labels"] == sent["labels"]
    page.click("#refresh-history")
    history = f"{len(expected)} boxes read"
    page.wait_for_function(f"() => document.querySelector('#history tbody').textContent.includes('{history}')")

    # The dashboard's feedback table shows the online mAP50 of the served boxes against the saved correction.
    from radflow.ui.summary import feedback_stats

    (stats,) = feedback_stats(box_server.service.require_store())
    assert stats["map50"] is not None
    page.goto(box_server.url + "/dashboard")
    cell = "#feedback tbody tr td:nth-child(10)"
    page.wait_for_function(f"() => (document.querySelector('{cell}') || {{}}).textContent === '{stats['map50']:.3f}'")


def _check(boxes: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [b["label"] for b in boxes] == [e["label"] for e in expected]
    for got, want in zip(boxes, expected, strict=True):
        assert got["box"] == pytest.approx(want["box"], abs=TOL), (got, want)
