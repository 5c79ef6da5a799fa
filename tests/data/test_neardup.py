"""The perceptual near-duplicate check, measured on phantom chest films: recall on drifted copies, false matches.

Phantoms of different patients share one anatomy, which is the hard case for a perceptual hash
(the classic pHash of two different phantoms is often identical). The figures below are the floor
this check must keep at 128 px; the module docstring of ``radflow.data.neardup`` states them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radflow.data.dataset import Dataset
from radflow.data.decode import decode_image
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.neardup import HASH_BITS, NearDuplicateIndex, hamming, phash, pixel_digest
from radflow.data.preprocess import prepare_pixels
from radflow.data.synth import synth_chest
from radflow.runtime.cam import encode_png
from radflow.sim.drift import apply_drift, parse_drift

# drift -> least share of copies found (measured: 1.0, 0.91, 1.0, 1.0, 0.98, 1.0 on 300 films)
RECALL_FLOOR = {
    "contrast=0.7": 1.0,
    "brightness=0.3": 0.8,
    "noise=0.05": 0.95,
    "blur=1.5": 0.95,
    "brightness=0.3,contrast=0.7,noise=0.05,blur=1.5": 0.9,
    "brightness=0.2,noise=0.02": 0.95,
}


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, patient ids) of 120 phantom chest films preprocessed to 128 px."""
    root = tmp_path_factory.mktemp("neardup")
    synth_chest(root / "CheXpert-nd", 120, seed=5, size=128, workers=1)
    ingest(root / "CheXpert-nd", "chexpert", root / "ds", IngestOptions(size=128, salt_file=root / "salt", workers=1))
    ds = Dataset.open(root / "ds")
    return ds.images(ds.indices("all")), ds.manifest["patient_id"].to_numpy()


def test_an_8bit_reencoding_is_the_same_image(films: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = films
    index = NearDuplicateIndex(images[:40])
    again = prepare_pixels(decode_image(encode_png(images[7])).pixels, 128)  # PNG upload, decoded as the service does
    match = index.find(again)
    assert match is not None and match.exact and match.row == 7 and match.distance == 0
    assert pixel_digest(again) == pixel_digest(images[7]) != pixel_digest(images[8])


@pytest.mark.parametrize("drift", list(RECALL_FLOOR))
def test_recall_on_drifted_copies(films: tuple[np.ndarray, np.ndarray], drift: str) -> None:
    images, _ = films
    index = NearDuplicateIndex(images)
    rng = np.random.default_rng(0)
    spec = parse_drift(drift)
    found = [index.find(apply_drift(img, spec, rng)) for img in images]
    recall = np.mean([m is not None and m.row == i for i, m in enumerate(found)])
    assert recall >= RECALL_FLOOR[drift], f"{drift}: recall {recall:.3f}"


def test_distinct_patients_rarely_match(films: tuple[np.ndarray, np.ndarray]) -> None:
    images, patients = films
    index = NearDuplicateIndex(images)
    distances = hamming(index.hashes[:, None], index.hashes[None, :])
    other = patients[:, None] != patients[None, :]
    false_match = float((distances[other] <= index.threshold).mean())
    assert false_match <= 0.002, f"false-match rate between distinct patients {false_match:.5f}"  # measured 0.0005
    # the classic pHash (no template) cannot tell these patients apart at any useful threshold
    classic = phash(images)
    assert float((hamming(classic[:, None], classic[None, :])[other] <= index.threshold).mean()) > 0.05


def test_hash_checks_its_input() -> None:
    assert phash(np.full((64, 64), 128, np.uint8))[0] == 0  # a flat film has no structure to hash
    assert hamming(np.uint64(0), np.array([np.uint64((1 << HASH_BITS) - 1)]))[0] == HASH_BITS
    with pytest.raises(ValueError, match="uint8"):
        phash(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(np.zeros((1, 32, 32), np.uint8), threshold=HASH_BITS)
    empty = NearDuplicateIndex(np.zeros((0, 32, 32), np.uint8))
    assert len(empty) == 0 and empty.find(np.zeros((32, 32), np.uint8)) is None


def test_index_of_a_memory_mapped_split_in_chunks(tmp_path: Path, films: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = films
    np.save(tmp_path / "x.npy", images[:50])
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    chunked, whole = NearDuplicateIndex(mapped, batch=16), NearDuplicateIndex(images[:50])
    assert np.array_equal(chunked.hashes, whole.hashes) and np.allclose(chunked.template, whole.template)
