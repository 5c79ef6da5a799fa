"""``radflow feedback export``: a real SQLite prediction store with feedback -> CheXpert-layout training data.

Then the exported folder goes through the real ingest and split as an extra source: its images
must land in train only, and the test split must be exactly what it was without them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from radflow.cli import app
from radflow.data.dataset import Dataset, ShardWriter, write_dataset
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.neardup import NearDuplicateIndex
from radflow.data.preprocess import PreprocessSpec
from radflow.data.sources.chexpert import read_chexpert
from radflow.data.split import EXTRA_SPLIT, held_out_version, split_dataset
from radflow.data.synth import synth_chest
from radflow.errors import ConfigError, NotFoundError
from radflow.feedback import CSV_COLUMNS, export_feedback, held_out_summary, parse_since
from radflow.runtime.cam import encode_png
from radflow.sim.drift import apply_drift, parse_drift
from radflow.store import PredictionRecord, Store, study_key


def _image(seed: int, size: int = 48) -> tuple[np.ndarray, str]:
    """A random grey film and the sha256 of its PNG upload (what the service logs)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    return pixels, hashlib.sha256(encode_png(pixels)).hexdigest()


def _findings(edema: bool, cardiomegaly: bool) -> dict[str, Any]:
    return {
        "findings": [
            {"label": "Edema", "probability": 0.9 if edema else 0.1, "positive": edema},
            {"label": "Cardiomegaly", "probability": 0.8 if cardiomegaly else 0.2, "positive": cardiomegaly},
        ]
    }


def _log(store: Store, sha: str, pixels: np.ndarray | None, outputs: dict[str, Any], **kw: Any) -> PredictionRecord:
    record = PredictionRecord("chest-xray", "1", "champion", kw.pop("arm", "champion"), outputs, sha, "png", **kw)
    store.log(record, pixels)
    return record


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, Path, dict[str, str]]:
    """A store whose feedback covers every case the export must handle; returns (url, inputs, sha by name)."""
    url, inputs = f"sqlite:///{tmp_path / 'serving.db'}", tmp_path / "inputs"
    s = Store(url, inputs)
    names: dict[str, str] = {}
    try:
        a, names["a"] = _image(1)
        p1 = _log(s, names["a"], a, _findings(True, False), request_id="r1")
        s.add_feedback(p1.id, labels={"Edema": 1, "Cardiomegaly": 0}, reader="dr-a")
        s.add_feedback(p1.id, labels={"Edema": 0, "Cardiomegaly": 1}, reader="dr-a")  # corrected: this one wins
        b, names["b"] = _image(2)
        p2 = _log(s, names["b"], b, _findings(True, False), request_id="r2")
        _log(s, names["b"], None, _findings(False, False), arm="challenger", shadow=True, request_id="r2")
        s.add_feedback(p2.id, correct=True)  # confirms the model's calls: Edema 1, Cardiomegaly 0
        p3 = _log(s, names["b"], b, _findings(True, False), request_id="r3")  # the same film sent again
        s.add_feedback(p3.id, labels={"Edema": 0, "Cardiomegaly": 1})  # later feedback on that image wins
        _, names["missing"] = _image(3)
        p4 = _log(s, names["missing"], None, _findings(False, False))  # pixels never stored
        s.add_feedback(p4.id, labels={"Edema": 1})
        e, names["e"] = _image(4)
        s.add_feedback(_log(s, names["e"], e, _findings(False, False)).id, correct=False)  # wrong, but how?
        f, names["f"] = _image(5)
        s.add_feedback(_log(s, names["f"], f, {"prediction": {"value": 100.0, "unit": "months"}}).id, value=120.0)
        g, names["g"] = _image(6)
        s.add_feedback(_log(s, names["g"], g, _findings(False, False)).id, labels={"Edema": 1})  # in the dataset
        h, names["h"] = _image(7)
        s.add_feedback(_log(s, names["h"], h, _findings(False, False)).id, labels={"Foo": 1, "Edema": 1})
        _log(s, _image(8)[1], _image(8)[0], _findings(False, False))  # no feedback at all
        s.flush()
    finally:
        s.close()
    return url, inputs, names


def _film(seed: int, size: int = 48) -> np.ndarray:
    """A smooth grey film (structure at several scales, as a radiograph has)."""
    noise = np.random.default_rng(seed).normal(size=(size, size))
    img = gaussian_filter(noise, 3) + 0.3 * gaussian_filter(noise, 1)
    return np.clip((img - img.min()) / np.ptp(img) * 255, 0, 255).astype(np.uint8)


def _dataset(tmp_path: Path, rows: list[tuple[str, str, np.ndarray]], split: bool = True) -> Path:
    """A real dataset of 48 px films: rows of (split, sha256 of the source file, pixels)."""
    folder = tmp_path / ("dataset" if split else "unsplit")
    writer = ShardWriter(folder, 48)
    records = []
    for i, (name, sha, pixels) in enumerate(rows):
        shard, offset = writer.add(pixels)
        records.append(
            {
                "image_id": f"{i:020x}",
                "source_key": f"k{i}",
                "sha256": sha,
                "patient_id": f"patient-{i}",
                "study_id": f"study-{i}",
                "view": "frontal",
                "projection": "PA",
                "sex": "",
                "age": float("nan"),
                "split": name if split else "",
                "official_split": "",
                "shard": shard,
                "offset": offset,
                "Edema": 0.0,
            }
        )
    writer.close()
    manifest = pd.DataFrame(records)
    write_dataset(
        folder, manifest, labels=["Edema"], task="multilabel", spec=PreprocessSpec(size=48), source={"format": "test"}
    )
    return folder


def _dataset_with(tmp_path: Path, sha: str) -> Path:
    """g (bytes ``sha``) in train, and an unrelated film in test."""
    return _dataset(tmp_path, [("train", sha, _image(6)[0]), ("test", "0" * 64, _film(99))])


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "train.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_writes_chexpert_layout_with_latest_labels_and_no_duplicates(
    store: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, inputs, names = store
    out = tmp_path / "feedback"
    info = export_feedback(out, url, inputs, dataset=_dataset_with(tmp_path, names["g"]))
    assert info["images"] == 3  # a, b and h
    rows = _rows(out)
    with (out / "train.csv").open() as fh:
        assert next(csv.reader(fh)) == list(CSV_COLUMNS)  # CheXpert's exact columns, in order
    by_sha = {hashlib.sha256((out.parent / r["Path"]).read_bytes()).hexdigest(): r for r in rows}
    assert len(by_sha) == len(rows)  # no image twice
    assert info["skipped"] == {
        "no_labels": 1,
        "regression": 1,
        "no_input": 0,
        "missing_pixels": 1,
        "unreadable": 0,
        "in_dataset": 1,
    }
    assert info["held_out"] == {"held_out_study": 0, "pixel_identical": 0, "near_duplicate": 0}
    assert info["screen"]["held_out_images"] == 1 and info["screen"]["held_out"] == "val and test"
    assert info["unknown_labels"] == ["Foo"]
    assert info["duplicates_merged"] == 1  # b: two predictions of one film
    for row in rows:
        assert row["Frontal/Lateral"] == "Frontal" and row["Sex"] == "" and row["Age"] == ""
    # Stored inputs are PNGs of the uploaded pixels, so their bytes equal the upload's here.
    a, b = by_sha[names["a"]], by_sha[names["b"]]
    assert (a["Edema"], a["Cardiomegaly"]) == ("0.0", "1.0")  # the corrected feedback, not the first
    assert (b["Edema"], b["Cardiomegaly"]) == ("0.0", "1.0")  # p3's feedback, not p2's "correct"
    assert a["Pneumothorax"] == ""  # not stated by the reader: CheXpert's blank
    assert names["g"] not in by_sha and names["missing"] not in by_sha


def test_export_is_read_by_the_chexpert_reader_and_is_byte_stable(
    store: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, inputs, names = store
    out = tmp_path / "fb"
    info = export_feedback(out, url, inputs)
    assert info["images"] == 4 and info["skipped"]["in_dataset"] == 0  # no dataset given: g stays
    assert info["screen"] is None and "nothing was checked" in held_out_summary(info)
    table = read_chexpert(out)
    assert len(table.records) == 4 and not table.skipped
    assert len({r.patient for r in table.records}) == 4  # every image its own pseudo-patient
    h = next(r for r in table.records if hashlib.sha256(r.path.read_bytes()).hexdigest() == names["h"])
    assert h.labels["Edema"] == 1.0 and h.labels["Cardiomegaly"] == 0.0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    export_feedback(out, url, inputs)  # again: replaced in place, identical bytes (DVC sees no change)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    cutoff = parse_since("2999-01-01")
    with pytest.raises(NotFoundError, match="no feedback since"):
        export_feedback(tmp_path / "none", url, inputs, since=cutoff)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no prediction store at"):
        export_feedback(tmp_path / "x", f"sqlite:///{tmp_path / 'nope.db'}", tmp_path)
    Store(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "inputs").close()
    with pytest.raises(NotFoundError, match=r"no feedback in .* yet"):
        export_feedback(tmp_path / "x", f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "inputs")
    with pytest.raises(ConfigError, match="--since"):
        parse_since("last tuesday")
    assert parse_since("7d") is not None and parse_since(None) is None
    result = CliRunner().invoke(app, ["feedback", "export", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--workspace" in result.output


def test_cli_exports_as_json(store: tuple[str, Path, dict[str, str]], tmp_path: Path) -> None:
    url, inputs, _ = store
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app, ["feedback", "export", "--out", str(out), "--store-url", url, "--inputs-dir", str(inputs), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 4 and len(_rows(out)) == 4


def test_extra_rows_train_only_and_the_test_split_stays_the_same(
    store: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, inputs, _ = store
    raw = tmp_path / "CheXpert-phantom"
    synth_chest(raw, 40, seed=3, size=64, workers=1)
    feedback = tmp_path / "feedback"
    export_feedback(feedback, url, inputs)
    labels = ["Edema", "Cardiomegaly", "Pleural Effusion"]
    plain, grown = tmp_path / "plain", tmp_path / "grown"
    salt = tmp_path / ".salt"
    ingest(raw, "chexpert", plain, IngestOptions(size=32, labels=labels, salt_file=salt, workers=1))
    info = ingest(
        raw, "chexpert", grown, IngestOptions(size=32, labels=labels, salt_file=salt, workers=1, extra=(feedback,))
    )
    assert info["counts"]["images"] == 44
    split_dataset(plain, val=0.2, test=0.2, seed=1)
    summary = split_dataset(grown, val=0.2, test=0.2, seed=1)
    assert summary["extra_train_images"] == 4
    a, b = Dataset.open(plain).manifest, Dataset.open(grown).manifest
    extra = b[b["official_split"] == EXTRA_SPLIT]
    assert len(extra) == 4 and set(extra["split"]) == {"train"}
    assert not set(extra["patient_id"]) & set(a["patient_id"])  # pseudo-patients never merge with real ones
    for name in ("test", "val"):  # every main-source image keeps its split
        assert set(a.loc[a["split"] == name, "sha256"]) == set(b.loc[b["split"] == name, "sha256"]), name
    assert held_out_version(Dataset.open(plain)) == held_out_version(Dataset.open(grown))
    assert Dataset.open(plain).version != Dataset.open(grown).version
    edema = extra.set_index("sha256")["Edema"]
    assert sorted(edema.tolist()) == [0.0, 0.0, 1.0, 1.0]  # a, b corrected to 0; g and h positive


def test_held_out_images_never_come_back_however_they_were_re_encoded_or_drifted(
    store: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, inputs, names = store
    held = [_film(10 + i) for i in range(4)]
    rows = [("test", f"{i:064x}", film) for i, film in enumerate(held[:3])] + [("val", "f" * 64, held[3])]
    dataset = _dataset(tmp_path, [*rows, ("train", names["g"], _image(6)[0])])
    rng = np.random.default_rng(0)
    uploads = [
        held[0],  # the test film itself, re-encoded as the service stores it: new bytes, same pixels
        apply_drift(held[1], parse_drift("brightness=0.2,noise=0.02"), rng),
        apply_drift(held[2], parse_drift("contrast=0.7,blur=0.8"), rng),
        apply_drift(held[3], parse_drift("brightness=0.1"), rng),  # a val film counts as held out too
    ]
    s = Store(url, inputs)
    try:
        for pixels in uploads:
            record = _log(s, hashlib.sha256(encode_png(pixels)).hexdigest(), pixels, _findings(True, False))
            s.add_feedback(record.id, labels={"Edema": 1})
        s.flush()
    finally:
        s.close()
    out = tmp_path / "fb"
    info = export_feedback(out, url, inputs, dataset=dataset)
    assert info["held_out"] == {"held_out_study": 0, "pixel_identical": 1, "near_duplicate": 3}, info["held_out"]
    assert info["images"] == 3 and info["skipped"]["in_dataset"] == 1  # a, b, h; g trains already
    index = NearDuplicateIndex(np.stack(held))
    for row in _rows(out):
        pixels = np.asarray(Image.open(out.parent / row["Path"]))
        assert index.find(pixels) is None, row["Path"]
    line = held_out_summary(info)
    assert "1 pixel-identical to a held-out image" in line and "3 perceptual near-duplicate" in line
    assert "screened against 4 val and test images" in line
    # Another film of a held-out study (no pixel in common): refused by identity, the hashed routing key.
    s = Store(url, inputs)
    try:
        other = _film(50)
        sha = hashlib.sha256(encode_png(other)).hexdigest()
        record = _log(s, sha, other, _findings(True, False), study_key=study_key("study-1"))
        s.add_feedback(record.id, labels={"Edema": 1})
        s.flush()
    finally:
        s.close()
    info = export_feedback(out, url, inputs, dataset=dataset)
    assert info["held_out"] == {"held_out_study": 1, "pixel_identical": 1, "near_duplicate": 3}, info["held_out"]
    assert info["images"] == 3 and "1 of a held-out patient or study" in held_out_summary(info)
    # Before a split, any image may end up in test: every main-source film is held out, g included.
    unsplit = _dataset(tmp_path, [*rows, ("train", "e" * 64, _image(6)[0])], split=False)
    again = export_feedback(tmp_path / "fb2", url, inputs, dataset=unsplit)
    assert again["held_out"] == {"held_out_study": 1, "pixel_identical": 2, "near_duplicate": 3}
    assert again["images"] == 3
    assert "every main-source image" in held_out_summary(again)


def _structures(masks: dict[str, np.ndarray]) -> dict[str, Any]:
    from radflow.runtime.masks import structure_answers

    return {"structures": structure_answers(np.stack(list(masks.values())), list(masks))}


def test_corrected_masks_export_as_a_mask_source_that_reads_back_exactly(tmp_path: Path) -> None:
    from radflow.data.maskfiles import load_mask
    from radflow.data.sources.maskfolder import read_mask_folder
    from radflow.runtime.masks import encode_rle

    url, inputs = f"sqlite:///{tmp_path / 'serving.db'}", tmp_path / "inputs"
    rng = np.random.default_rng(0)
    films = {n: rng.integers(0, 256, (40, 56), dtype=np.uint8) for n in ("a", "b")}
    held = _film(97)  # a test image of the dataset, sent again
    served = {"Left Lung": np.zeros((40, 56), bool), "Lesion": np.zeros((40, 56), bool)}
    served["Left Lung"][5:30, 4:20] = True
    corrected = {n: {k: rng.random((40, 56)) < 0.3 for k in served} for n in films}
    s = Store(url, inputs)
    try:
        for name, pixels in films.items():
            sha = hashlib.sha256(encode_png(pixels)).hexdigest()
            record = PredictionRecord("lungs", "1", "champion", "champion", _structures(served), sha, "png")
            s.log(record, pixels)
            first = {"masks": {k: encode_rle(np.zeros((40, 56), bool)) for k in served}}
            s.add_feedback(record.id, labels=first)  # replaced by the next correction
            masks = corrected[name] if name == "a" else {"Lesion": corrected[name]["Lesion"]}  # b: lung not judged
            s.add_feedback(record.id, labels={"masks": {k: encode_rle(m) for k, m in masks.items()}})
        held_sha = hashlib.sha256(encode_png(held)).hexdigest()
        served48 = {k: np.zeros((48, 48), bool) for k in served}
        record = PredictionRecord("lungs", "1", "champion", "champion", _structures(served48), held_sha, "png")
        s.log(record, held)
        s.add_feedback(record.id, labels={"masks": {k: encode_rle(m) for k, m in served48.items()}})
        s.flush()
    finally:
        s.close()
    dataset = _dataset(tmp_path, [("train", "1" * 64, _film(98)), ("test", held_sha, held)])

    out = tmp_path / "feedback"
    info = export_feedback(out, url, inputs, dataset=dataset)
    assert info["format"] == "masks" and info["images"] == 2
    assert info["held_out"]["pixel_identical"] == 1, "the held-out test film never comes back"
    assert info["structures"] == ["Left Lung", "Lesion"] and info["annotated"] == {"Left Lung": 1, "Lesion": 2}
    table = read_mask_folder(out)
    assert table.task == "segmentation" and table.labels == ["Left Lung", "Lesion"] and not table.skipped
    by_pixels = {}
    for record in table.records:
        image = np.asarray(Image.open(record.path))
        name = next(n for n, f in films.items() if np.array_equal(f, image))
        assert record.mask is not None
        by_pixels[name] = (load_mask(record.mask, *image.shape), record.mask.annotated)
    np.testing.assert_array_equal(by_pixels["a"][0], np.stack([corrected["a"][k] for k in served]))
    assert by_pixels["a"][1] == (0, 1)
    np.testing.assert_array_equal(by_pixels["b"][0][1], corrected["b"]["Lesion"])
    assert by_pixels["b"][1] == (1,), "a structure the reader sent no mask for is not annotated"
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    export_feedback(out, url, inputs, dataset=dataset)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_a_store_with_mask_and_findings_feedback_must_name_the_format(
    store: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    from radflow.runtime.masks import encode_rle

    url, inputs, _ = store
    pixels, sha = _image(11)
    mask = np.zeros((48, 48), bool)
    s = Store(url, inputs)
    try:
        record = _log(s, sha, pixels, _structures({"Lesion": mask}))
        s.add_feedback(record.id, labels={"masks": {"Lesion": encode_rle(mask)}})
        s.flush()
    finally:
        s.close()
    with pytest.raises(ConfigError, match=r"feedback on masks \(1 predictions\).*format='masks'"):
        export_feedback(tmp_path / "out", url, inputs)
    with pytest.raises(ConfigError, match="unknown feedback export format 'coco'; radflow writes chexpert, masks"):
        export_feedback(tmp_path / "out", url, inputs, format="coco")
    assert export_feedback(tmp_path / "masks", url, inputs, format="masks")["images"] == 1
    assert export_feedback(tmp_path / "chexpert", url, inputs, format="chexpert")["format"] == "chexpert"


def test_corrected_masks_join_a_segmentation_dataset_as_train_only_rows(tmp_path: Path) -> None:
    """What `radflow loop` does in a segmentation workspace: feedback exported as masks, ingested beside the source."""
    from radflow.data.masks import unpack
    from radflow.loop import LOOP_FORMATS
    from radflow.runtime.masks import encode_rle

    raw = tmp_path / "phantoms"
    synth_chest(raw, 16, seed=3, size=64, workers=1, masks=True)
    structures = (raw / "structures.txt").read_text().split("\n")[:-1]
    url, inputs = f"sqlite:///{tmp_path / 'serving.db'}", tmp_path / "inputs"
    rng = np.random.default_rng(1)
    corrected: dict[bytes, np.ndarray] = {}
    s = Store(url, inputs)
    try:
        for _ in range(2):
            pixels = rng.integers(0, 256, (64, 64), dtype=np.uint8)
            served = {k: np.zeros((64, 64), bool) for k in structures}
            record = PredictionRecord("lungs", "1", "champion", "champion", _structures(served),
                                      hashlib.sha256(encode_png(pixels)).hexdigest(), "png")  # fmt: skip
            s.log(record, pixels)
            heart = np.zeros((64, 64), bool)
            heart[20:44, 16:40] = True  # the reader drew the heart the model missed
            s.add_feedback(
                record.id, labels={"masks": {k: encode_rle(heart if k == "Heart" else v) for k, v in served.items()}}
            )
            corrected[pixels.tobytes()] = heart
        s.flush()
    finally:
        s.close()
    feedback = tmp_path / "feedback"
    assert "masks" in LOOP_FORMATS
    assert export_feedback(feedback, url, inputs, format="masks")["images"] == 2
    grown = tmp_path / "grown"
    options = IngestOptions(size=32, salt_file=tmp_path / ".salt", workers=1, extra=(feedback,))
    assert ingest(raw, "masks", grown, options)["counts"]["images"] == 18
    split_dataset(grown, val=0.2, test=0.2, seed=1)
    ds = Dataset.open(grown)
    rows = np.flatnonzero((ds.manifest["official_split"] == EXTRA_SPLIT).to_numpy())
    assert len(rows) == 2 and set(ds.manifest.iloc[rows]["split"]) == {"train"}  # never val or test
    assert ds.structures == structures
    masks = unpack(ds.masks(rows), len(structures))
    heart = structures.index("Heart")
    for k in range(len(structures)):  # the corrected heart arrives (at training size), the rest stays empty
        assert (masks[:, k].sum(axis=(1, 2)) > 0).all() == (k == heart), structures[k]
    # a 24 px square of a 64 px image at 32 px: 12 x 12 pixels
    assert abs(int(masks[0, heart].sum()) - 144) <= 24


def test_corrected_boxes_export_as_a_coco_box_source_that_reads_back(tmp_path: Path) -> None:
    """Detection feedback (labels.boxes) as ``--format coco-boxes``: latest correction wins, "no finding" is an image
    without boxes, the held-out film never comes back; ``ingest --format coco-boxes`` reads the folder as sent."""
    from radflow.data.sources.boxsources import read_coco_box_source

    url, inputs = f"sqlite:///{tmp_path / 'serving.db'}", tmp_path / "inputs"
    rng = np.random.default_rng(1)
    films = {n: rng.integers(0, 256, (40, 56), dtype=np.uint8) for n in ("a", "b")}
    held = _film(97)
    # an answer names every label the model finds, boxed or not: all of them are the source's categories,
    # so the exported folder labels the same findings as the workspace's own source
    served = {
        "boxes": [{"label": "Nodule", "score": 0.9, "box": [1.0, 2.0, 10.0, 12.0]}],
        "labels": ["Nodule", "Lung Opacity", "Effusion"],
    }
    corrected = {
        "a": [{"label": "Nodule", "box": [2.5, 3.0, 11.0, 13.5]}, {"label": "Lung Opacity", "box": [20, 5, 50, 35]}],
        "b": [],  # the reader saw no finding
    }
    s = Store(url, inputs)
    try:
        for name, pixels in films.items():
            sha = hashlib.sha256(encode_png(pixels)).hexdigest()
            record = PredictionRecord("det", "1", "champion", "champion", served, sha, "png")
            s.log(record, pixels)
            s.add_feedback(record.id, labels={"boxes": [{"label": "Nodule", "box": [0, 0, 5, 5]}]})  # replaced
            s.add_feedback(record.id, labels={"boxes": corrected[name]})
        held_sha = hashlib.sha256(encode_png(held)).hexdigest()
        record = PredictionRecord("det", "1", "champion", "champion", served, held_sha, "png")
        s.log(record, held)
        s.add_feedback(record.id, labels={"boxes": [{"label": "Nodule", "box": [1, 1, 9, 9]}]})
        s.flush()
    finally:
        s.close()
    dataset = _dataset(tmp_path, [("train", "1" * 64, _film(98)), ("test", held_sha, held)])

    out = tmp_path / "feedback"
    info = export_feedback(out, url, inputs, dataset=dataset)
    assert info["format"] == "coco-boxes" and info["images"] == 2
    assert info["held_out"]["pixel_identical"] == 1, "the held-out test film never comes back"
    assert info["labels"] == ["Nodule", "Lung Opacity", "Effusion"]
    assert info["boxes"] == {"Nodule": 1, "Lung Opacity": 1, "Effusion": 0}
    table = read_coco_box_source(out)
    assert table.task == "detection" and table.labels == ["Nodule", "Lung Opacity", "Effusion"] and not table.skipped
    read = {}
    for rec in table.records:
        image = np.asarray(Image.open(rec.path))
        name = next(n for n, f in films.items() if np.array_equal(f, image))
        read[name] = [{"label": b.label, "box": [b.x0, b.y0, b.x1, b.y1]} for b in rec.boxes or ()]
    assert read == {"a": [{**b, "box": [float(v) for v in b["box"]]} for b in corrected["a"]], "b": []}
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    export_feedback(out, url, inputs, dataset=dataset)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    with pytest.raises(ConfigError, match="radflow writes chexpert, masks, coco-boxes"):
        export_feedback(tmp_path / "out", url, inputs, format="coco")
