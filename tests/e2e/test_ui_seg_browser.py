"""A segmentation model in the reader, in a real browser: its masks over the image, corrected with the brush and
saved as feedback (Playwright driving Debian's headless Chromium against a uvicorn server).

The reader draws one brush stroke across the image on the first structure and saves; the stored feedback must be
the served masks with exactly the stroke's pixels added (the structures not drawn on unchanged). Screenshots go
to ``test-artifacts/ui/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radflow.runtime.masks import decode_rle
from radflow.tasks import validate_feedback
from tests.e2e.test_ui_browser import ARTIFACTS, WIDE, browser  # noqa: F401 (the module-scoped Chromium fixture)
from tests.serve.models import make_onnx, png_bytes
from tests.ui.server import UiServer

pytestmark = pytest.mark.e2e

HEIGHT, WIDTH = 48, 64
RADIUS = 2


@pytest.fixture(scope="module")
def seg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    root = tmp_path_factory.mktemp("ui-seg")
    srv = UiServer(make_onnx(root, task="segmentation", n=8), root).start()
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


def _near_stroke(row: float, x0: float, x1: float, radius: float) -> np.ndarray:
    """Pixels whose centre is within ``radius`` of the segment along ``row`` from ``x0`` to ``x1`` (image pixels)."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    cx = np.clip(xs + 0.5, x0, x1)
    return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - row) ** 2 <= radius**2


def test_reader_draws_a_correction_and_it_is_saved(seg_server: UiServer, page: Any, tmp_path: Path) -> None:
    image = tmp_path / "chest.png"
    image.write_bytes(png_bytes(7, (HEIGHT, WIDTH)))
    page.goto(seg_server.url + "/")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#mask-tools:not([hidden])")
    pid = str(page.locator("#model-info .mono").text_content())
    assert page.locator("#findings").is_hidden() and page.locator("#result-title").inner_text() == "Structures"
    record = seg_server.service.require_store().get_prediction(pid)
    served = {s["structure"]: decode_rle(s["rle"]) for s in record["outputs"]["structures"]}
    names = list(served)
    assert page.locator("#structures li").count() == len(names)
    page.wait_for_function("() => { const i = document.querySelector('#image'); return i.complete && i.naturalWidth; }")

    # The overlay: outline mode draws fewer pixels than the filled mask; a hidden structure draws none.
    def painted() -> int:
        return int(page.evaluate("() => { const c = document.querySelector('#mask-canvas'); "
                                 "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                                 ".filter((v, i) => i % 4 === 3 && v > 0).length; }"))  # fmt: skip

    filled = painted()
    assert filled == int(np.logical_or.reduce(list(served.values())).sum())
    page.check("#mask-outline")
    assert painted() <= filled
    page.uncheck("#mask-outline")
    for k in range(len(names)):
        page.uncheck(f"#structure-{k}")
    assert painted() == 0
    for k in range(len(names)):
        page.check(f"#structure-{k}")

    # On the structure the model found least of (the tiny model finds no lesion), a brush of radius 2 px along
    # the middle row, from a quarter to three quarters of the width.
    target = min(names, key=lambda n: int(served[n].sum()))
    page.select_option("#mask-structure", str(names.index(target)))
    page.check('input[name="mask-tool"][value="brush"]')
    page.fill("#mask-size", str(RADIUS))
    page.dispatch_event("#mask-size", "input")
    box = page.locator("#mask-canvas").bounding_box()
    scale = box["width"] / WIDTH
    row, x0, x1 = HEIGHT / 2, WIDTH / 4, 3 * WIDTH / 4
    page.mouse.move(box["x"] + x0 * scale, box["y"] + row * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + x1 * scale, box["y"] + row * scale, steps=12)
    page.mouse.up()
    assert page.locator("#mask-undo").is_enabled()
    # An eraser stroke on another structure, undone: it must leave no trace in what is saved.
    page.select_option("#mask-structure", str(names.index(max(names, key=lambda n: int(served[n].sum())))))
    page.check('input[name="mask-tool"][value="eraser"]')
    page.mouse.move(box["x"] + x0 * scale, box["y"] + row * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + x1 * scale, box["y"] + row * scale, steps=4)
    page.mouse.up()
    page.click("#mask-undo")
    page.screenshot(path=str(ARTIFACTS / "reader-mask-1280.png"))

    with page.expect_response(lambda r: r.url.endswith("/v1/feedback")) as answered:
        page.click("#send")
    sent = answered.value.request.post_data_json
    assert sent["prediction_id"] == pid and list(sent["labels"]) == ["masks"]
    _check_correction(served, target, _decoded(sent), row, x0, x1)
    validate_feedback(record["outputs"], sent["labels"], None)  # the browser's RLE is what the server accepts
    page.wait_for_selector('#feedback-status[data-kind="ok"]', timeout=10000)
    saved = seg_server.service.require_store().feedback(pid)
    assert len(saved) == 1
    _check_correction(served, target, _decoded(saved[0]), row, x0, x1)
    page.click("#refresh-history")
    page.wait_for_function(f"() => document.querySelector('#history tbody').textContent.includes('{len(names)} masks')")


def _decoded(feedback: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: decode_rle(v) for k, v in feedback["labels"]["masks"].items()}


def _check_correction(served: dict[str, np.ndarray], target: str, corrected: dict[str, np.ndarray], row: float,
                      x0: float, x1: float) -> None:  # fmt: skip
    """``target`` is the served mask plus the brush stroke; the other structures are as served."""
    assert list(corrected) == list(served)
    # The pointer lands within a CSS pixel of where it was sent: the brush's disc, give or take one image pixel.
    edited, before = corrected[target], served[target]
    assert (edited | before).sum() == edited.sum(), "the brush only adds pixels (the eraser stroke was undone)"
    assert _near_stroke(row, x0 + 1, x1 - 1, RADIUS - 1)[edited == 0].sum() == 0, "the stroke's core is in the mask"
    assert not (edited & ~before & ~_near_stroke(row, x0, x1, RADIUS + 1)).any(), "nothing added off the stroke"
    assert (edited & ~before).sum() > 0, "the stroke changed pixels of the served mask"
    for name in served:
        if name != target:
            np.testing.assert_array_equal(corrected[name], served[name])
