"""Detection statistics: COCO AP against pycocotools, FROC, image AUROC, bootstrap, paired mAP, reader agreement."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from radflow.metrics.detection import (
    _ap_blocks,
    _match,
    average_precision,
    detection_metrics,
    froc,
    headline,
    image_auroc,
    paired_map_difference,
    reader_agreement,
)


def _box(x0: float, y0: float, x1: float, y1: float, label: int, score: float | None = None) -> list[float]:
    return [x0, y0, x1, y1, label] + ([] if score is None else [score])


def _arr(*rows: list[float], width: int) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, width)


def _random_split(seed: int, images: int = 20, classes: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Truths, and predictions that are jittered truths (some relabelled) and a few boxes out of nowhere."""
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(images):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 40, (n, 2))
        t = np.c_[xy, xy + rng.uniform(4, 20, (n, 2)), rng.integers(0, classes, n)]
        truths.append(t)
        m = int(rng.integers(0, 6))
        if n:
            src = t[rng.integers(0, n, m)]
        else:
            src = np.c_[rng.uniform(0, 40, (m, 2)), rng.uniform(44, 60, (m, 2)), rng.integers(0, classes, m)]
        corners = src[:, :4] + rng.normal(0, rng.choice([0.5, 2.0]), (m, 4))
        corners[:, 2:] = np.maximum(corners[:, 2:], corners[:, :2] + 1)
        label = np.where(rng.uniform(size=m) < 0.8, src[:, 4], rng.integers(0, classes, m))
        preds.append(np.c_[corners, label, rng.uniform(size=m)])
    return preds, truths


def _cocoeval(preds: list[np.ndarray], truths: list[np.ndarray], classes: int) -> tuple[float, float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(r: np.ndarray) -> list[float]:
        return [float(r[0]), float(r[1]), float(r[2] - r[0]), float(r[3] - r[1])]

    annotations = [
        {"image_id": i + 1, "category_id": int(r[4]) + 1, "bbox": xywh(r), "iscrowd": 0}
        for i, t in enumerate(truths)
        for r in t
    ]
    for n, a in enumerate(annotations):
        a.update(id=n + 1, area=a["bbox"][2] * a["bbox"][3])
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i + 1, "width": 64, "height": 64} for i in range(len(truths))],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": str(k)} for k in range(classes)],
    }
    results = [
        {"image_id": i + 1, "category_id": int(r[4]) + 1, "bbox": xywh(r), "score": float(r[5])}
        for i, p in enumerate(preds)
        for r in p
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1]), float(evaluation.stats[2])


@pytest.mark.parametrize("seed", range(12))
def test_average_precision_agrees_with_pycocotools(seed: int) -> None:
    preds, truths = _random_split(seed)
    ours = average_precision(preds, truths, 3)
    coco_map, coco_ap50, coco_ap75 = _cocoeval(preds, truths, 3)
    # Ours are rounded to 6 digits (JSON-ready), so agreement is to 1e-6.
    assert ours["map"] == pytest.approx(coco_map, abs=1e-6)
    assert ours["ap50"] == pytest.approx(coco_ap50, abs=1e-6)
    assert ours["ap75"] == pytest.approx(coco_ap75, abs=1e-6)
    assert 0 < ours["map"] < ours["ap50"] < 1


def test_perfect_predictions_score_one_everywhere() -> None:
    truths = [
        _arr(_box(2, 2, 20, 20, 0), _box(30, 30, 50, 60, 1), width=5),
        _arr(width=5),
        _arr(_box(5, 5, 9, 9, 0), width=5),
    ]
    preds = [np.c_[t, np.linspace(0.9, 0.5, len(t))] for t in truths]
    ap = average_precision(preds, truths, 2)
    assert ap["map"] == ap["ap50"] == ap["ap75"] == 1.0 and ap["classes"] == 2
    assert all(c["ap"] == [1.0] * 10 for c in ap["per_class"])
    curve = froc(preds, truths)
    assert curve["pooled"]["sensitivity"] == [1.0] * 7 and curve["pooled"]["cpm"] == 1.0
    assert image_auroc(preds, truths, 2)["per_class"][0]["auroc"] == 1.0


def test_all_misses_score_zero() -> None:
    truths = [_arr(_box(0, 0, 10, 10, 0), width=5), _arr(_box(20, 20, 30, 30, 0), width=5)]
    preds = [_arr(_box(40, 40, 60, 60, 0, 0.9), width=6), _arr(width=6)]
    ap = average_precision(preds, truths, 1)
    assert ap["map"] == ap["ap50"] == 0.0
    curve = froc(preds, truths)
    assert curve["pooled"]["sensitivity"] == [0.0] * 7 and curve["pooled"]["cpm"] == 0.0


def test_a_duplicate_is_a_false_positive_for_ap_but_not_for_froc() -> None:
    a, b = _box(0, 0, 10, 10, 0), _box(20, 20, 30, 30, 0)
    truths = [_arr(a, width=5), _arr(b, width=5)]
    preds = [_arr([*a, 0.9], [*a, 0.8], width=6), _arr([*b, 0.7], width=6)]
    # Ranked: TP (recall .5, precision 1), duplicate FP (.5, .5), TP (1, 2/3): 51 recall points read 1, 50 read 2/3.
    expected = (51 + 50 * 2 / 3) / 101
    ap = average_precision(preds, truths, 1)
    assert ap["map"] == ap["ap50"] == pytest.approx(expected, abs=1e-6)
    assert ap["per_class"][0]["predictions"] == 3
    # FROC: a prediction hitting a truth already found is no false positive.
    assert froc(preds, truths)["pooled"]["sensitivity"] == [1.0] * 7


def test_a_class_without_truth_is_left_out_of_the_means() -> None:
    truths = [_arr(_box(0, 0, 10, 10, 0), width=5), _arr(width=5)]
    preds = [_arr(_box(0, 0, 10, 10, 0, 0.9), width=6), _arr(_box(5, 5, 15, 15, 1, 0.95), width=6)]
    ap = average_precision(preds, truths, 2)
    assert ap["map"] == 1.0 and ap["classes"] == 1
    assert ap["per_class"][1] == {
        "ap": [None] * 10,
        "map": None,
        "ap50": None,
        "ap75": None,
        "truths": 0,
        "predictions": 1,
    }
    curve = froc(preds, truths, label_count=2)
    assert curve["per_class"][1]["cpm"] is None and curve["per_class"][0]["cpm"] == 1.0
    # Pooled, the class-1 box hits no truth and outscores the hit: 1/2 FP per image before the truth is found.
    assert curve["pooled"]["sensitivity"] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_froc_reads_the_most_permissive_point_within_each_rate() -> None:
    t = _box(0, 0, 10, 10, 0)
    far = _box(40, 40, 50, 50, 0)
    truths = [_arr(t, width=5), _arr(t, width=5), _arr(t, width=5), _arr(t, _box(20, 0, 30, 10, 0), width=5)]
    preds = [
        _arr([*t, 0.9], width=6),
        _arr([*far, 0.8], width=6),
        _arr([*t, 0.7], [*far, 0.6], width=6),
        _arr([*far, 0.5], [*t, 0.3], width=6),
    ]
    # Operating points (FP, found of 5): .9 (0, 1), .8 (1, 1), .7 (1, 2), .6 (2, 2), .5 (3, 2), .3 (3, 3); 4 images.
    curve = froc(preds, truths)
    assert curve["pooled"]["sensitivity"] == pytest.approx([0.2, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6])
    assert curve["pooled"]["cpm"] == pytest.approx(3.4 / 7, abs=1e-6)
    assert curve["pooled"]["truths"] == 5 and curve["images"] == 4
    # Scores tied at a threshold pass it together: with .8 tied to .9 the first point is (1 FP, 1 found).
    preds[1][0, 5] = 0.9
    assert froc(preds, truths)["pooled"]["sensitivity"][0] == 0.0


def test_froc_hit_by_centre_or_by_iou() -> None:
    truths = [_arr(_box(0, 0, 20, 20, 0), width=5)]
    preds = [_arr(_box(5, 5, 30, 30, 0, 0.9), width=6)]  # IoU 225/800 = 0.28, centre (17.5, 17.5) inside
    assert froc(preds, truths)["pooled"]["cpm"] == 0.0
    assert froc(preds, truths, hit="center")["pooled"]["cpm"] == 1.0
    assert froc(preds, truths, iou_threshold=0.25)["pooled"]["cpm"] == 1.0
    with pytest.raises(ValueError, match="'iou' or 'center'"):
        froc(preds, truths, hit="centre")  # type: ignore[arg-type]


def test_image_auroc_uses_the_top_box_and_zero_for_none() -> None:
    box = _box(0, 0, 10, 10, 0)
    truths = [_arr(box, width=5), _arr(box, width=5), _arr(width=5), _arr(width=5)]
    preds = [
        _arr([*box[:4], 0, 0.9], width=6),
        _arr([*box[:4], 1, 0.99], width=6),  # another class's box does not score class 0
        _arr([*box[:4], 0, 0.1], [*box[:4], 0, 0.5], width=6),
        _arr([*box[:4], 0, 0.2], width=6),
    ]
    out = image_auroc(preds, truths, 2)
    # Positives score .9 and 0, negatives .5 and .2: two of four pairs ranked right.
    assert out["per_class"][0] == {"auroc": 0.5, "positives": 2, "negatives": 2}
    assert out["per_class"][1]["auroc"] is None and out["macro"] == 0.5


def test_bootstrap_weights_are_the_same_as_copying_images() -> None:
    preds, truths = _random_split(3, images=12)
    counts = np.random.default_rng(0).multinomial(12, np.full(12, 1 / 12))
    weighted = _ap_blocks(_match(preds, truths, 3, np.array([0.5, 0.75]), 100), counts[None, :].astype(float))
    copies = [i for i in range(12) for _ in range(counts[i])]
    direct = average_precision([preds[i] for i in copies], [truths[i] for i in copies], 3, [0.5, 0.75])
    expected = [[np.nan if v is None else v for v in c["ap"]] for c in direct["per_class"]]
    np.testing.assert_allclose(weighted[0], expected, atol=1e-6)


def test_detection_metrics_report_and_patient_bootstrap() -> None:
    preds, truths = _random_split(5, images=24, classes=2)
    labels = ["Nodule", "Mass"]
    report = detection_metrics(preds, truths, labels, n_boot=200, seed=1)
    ap = average_precision(preds, truths, 2)
    assert report["map"] == ap["map"] and report["ap50"] == ap["ap50"]
    assert report["per_class"]["Mass"]["ap50"] == ap["per_class"][1]["ap50"]
    assert report["cpm"] == froc(preds, truths, label_count=2)["pooled"]["cpm"]
    assert report["image_auroc"] == image_auroc(preds, truths, 2)["macro"]
    for name in ("map", "ap50", "cpm", "image_auroc"):
        lo, hi = report[f"{name}_ci"]
        assert lo < report[name] < hi, name
    assert report["n_patients"] == 24 and report["resamples"] == 200
    assert set(headline(report)) == {"map50", "map", "map75", "froc_cpm", "image_auroc"}
    # One patient holding every image: each resample draws all of them, so the interval is the point.
    single = detection_metrics(preds, truths, labels, patients=["p"] * 24, n_boot=50)
    assert single["ap50_ci"] == [single["ap50"], single["ap50"]] and single["n_patients"] == 1


def test_bad_boxes_are_named() -> None:
    with pytest.raises(ValueError, match=r"truths of image 1, row 0: label index 3 is not one of 0\.\.1"):
        average_precision([_arr(width=6)] * 2, [_arr(width=5), _arr(_box(0, 0, 1, 1, 3), width=5)], 2)
    with pytest.raises(ValueError, match="predictions of image 0 must be"):
        average_precision([_arr(_box(0, 0, 1, 1, 0), width=5)], [_arr(width=5)], 1)
    with pytest.raises(ValueError, match="x1 < x0"):
        froc([_arr(_box(5, 0, 1, 1, 0, 0.5), width=6)], [_arr(width=5)])
    with pytest.raises(ValueError, match="patients has 1 entries for 2 images"):
        detection_metrics([_arr(width=6)] * 2, [_arr(width=5)] * 2, ["A"], patients=["p"])


def test_paired_map_difference() -> None:
    preds, truths = _random_split(7, images=40, classes=2)
    good = [np.c_[t, np.full(len(t), 0.9)] for t in truths]
    patients = [f"p{i // 2}" for i in range(40)]
    same = paired_map_difference(preds, preds, truths, patients, 2, n_boot=100)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    better = paired_map_difference(preds, good, truths, patients, 2, n_boot=200)
    assert better["map_a"] == average_precision(preds, truths, 2)["ap50"] and better["map_b"] == 1.0
    assert better["ci"][0] > 0 and better["p_value"] < 0.05 and better["n_patients"] == 20
    worse = paired_map_difference(good, preds, truths, patients, 2, metric="map", n_boot=200)
    assert worse["diff"] == pytest.approx(average_precision(preds, truths, 2)["map"] - 1.0, abs=1e-6)
    assert worse["ci"][1] < 0


def test_reader_agreement() -> None:
    a0, a1 = _box(0, 0, 10, 10, 0), _box(20, 20, 30, 30, 1)
    near = _box(0, 0, 10, 11, 0)  # IoU 10/11 with a0
    images = [
        [_arr(a0, a1, width=5), _arr(near, _box(40, 40, 50, 50, 1), width=5)],
        [_arr(a0, width=5)],  # one reader: skipped
        [_arr(a0, width=5), _arr(width=5), _arr(near, width=5)],
    ]
    names = [["A", "B"], ["A"], ["A", "B", "C"]]
    out = reader_agreement(images, readers=names, labels=["Nodule", "Mass"])
    assert out["images"] == 2 and out["skipped_single_reader"] == 1
    assert out["pairs"]["A|B"] == {"images": 2, "matched": 1, "boxes_a": 3, "boxes_b": 2, "f1": 0.4}
    assert out["pairs"]["A|C"]["f1"] == 1.0 and out["pairs"]["B|C"]["f1"] == 0.0
    assert out["mean_pair_f1"] == pytest.approx((0.4 + 1.0 + 0.0) / 3, abs=1e-6)
    assert out["f1"] == 0.5  # 2 * 2 matched / 8 boxes
    assert out["per_class"]["Nodule"] == {"matched": 2, "boxes": 6, "f1": pytest.approx(2 / 3, abs=1e-6)}
    assert out["per_class"]["Mass"]["f1"] == 0.0
    # A different class never matches, however well it overlaps.
    other = reader_agreement([[_arr(a0, width=5), _arr(_box(0, 0, 10, 10, 1), width=5)]])
    assert other["f1"] == 0.0 and list(other["pairs"]) == ["reader0|reader1"]


def test_an_empty_split_answers_none_not_an_error() -> None:
    report = detection_metrics([], [], ["Nodule"], n_boot=10)
    assert report["n"] == 0 and report["map"] is None and report["cpm"] is None and report["image_auroc"] is None
    assert report["per_class"]["Nodule"]["ap50"] is None and report["resamples"] == 0
    no_boxes = detection_metrics([_arr(width=6)] * 3, [_arr(width=5)] * 3, ["Nodule"], n_boot=10)
    assert no_boxes["ap50"] is None and no_boxes["ap50_ci"] is None
    with pytest.raises(ValueError, match="labels is empty"):
        detection_metrics([], [], [])
