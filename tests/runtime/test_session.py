from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from radflow.data.dataset import Dataset
from radflow.data.dicom import write_dicom
from radflow.data.ingest import SALT_FILE, IngestOptions, ingest, source_paths
from radflow.data.preprocess import PreprocessSpec, to_model_input
from radflow.errors import ImageDecodeError
from radflow.export import export_model, export_onnx
from radflow.runtime import InvalidInputError, MissingOnnxError, RadflowModel
from radflow.train.checkpoint import ModelMeta
from tests.export.checkpoints import PoolNet, make_checkpoint, png_bytes


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported multi-label small_cnn at 64 px (CAM 2x2)."""
    root = tmp_path_factory.mktemp("chest")
    checkpoint, _ = make_checkpoint(root, size=64, n=30)
    return Path(export_model(str(checkpoint), root / "chest.onnx", parity_n=8)["onnx"])


@pytest.fixture(scope="module")
def lungs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(onnx, checkpoint, dataset) of an exported segmentation small_unet at 32 px (3 structures)."""
    root = tmp_path_factory.mktemp("lungs")
    checkpoint, dataset = make_checkpoint(root, task="segmentation", n=24)
    out = Path(export_model(str(checkpoint), root / "lungs.onnx", parity_n=4, reference_images=0)["onnx"])
    return out, checkpoint, dataset


def test_segmentation_export_runs_to_the_pytorch_probability_maps(lungs: tuple[Path, Path, Path]) -> None:
    import torch

    from radflow.train.checkpoint import load_model

    out, checkpoint, dataset = lungs
    model = RadflowModel.load(out)
    net, _ = load_model(checkpoint)
    ds = Dataset.open(dataset)
    assert model.task == "segmentation" and model.labels == ds.structures and not model.has_cam
    for batch in (1, 3):
        pixels = ds.images(np.arange(batch))
        maps, cam = model.run(pixels)
        with torch.no_grad():
            expected = torch.sigmoid(net(torch.from_numpy(to_model_input(pixels, ds.spec)))).numpy()
        assert maps.shape == (batch, 3, 32, 32) and maps.dtype == np.float32 and cam is None
        np.testing.assert_allclose(maps, expected, atol=1e-4)
    # An image of another size is padded and resampled to the model's input, as at training.
    assert model.run(np.full((1, 48, 40), 200, np.uint8))[0].shape == (1, 3, 32, 32)
    with pytest.raises(InvalidInputError, match="segmentation model: it has no class activation maps"):
        model.cam(ds.images([0])[0], ds.structures[0])


def test_segmentation_answer_is_at_the_inputs_size_exactly_as_restore_mask(lungs: tuple[Path, Path, Path]) -> None:
    from radflow.data.masks import restore_mask
    from radflow.runtime.masks import decode_rle

    model = RadflowModel.load(lungs[0])
    # Known maps: structure 0 a block left of centre, 1 empty, 2 everywhere; the input is 40 x 24 (tall).
    maps = np.zeros((3, 32, 32), np.float32)
    maps[0, 4:20, 8:14] = 0.9
    maps[2] = 0.7
    answer = model.to_prediction(maps, (40, 24), spacing=(0.5, 0.25)).to_dict()
    assert list(answer) == ["structures"]
    structures = answer["structures"]
    assert [s["structure"] for s in structures] == model.labels
    expected = restore_mask(maps, 40, 24) >= 0.5
    for entry, mask in zip(structures, expected, strict=True):
        got = decode_rle(entry["rle"])
        assert got.shape == (40, 24)
        np.testing.assert_array_equal(got, mask)
        assert entry["area_px"] == int(mask.sum())
        assert entry["area_mm2"] == pytest.approx(mask.sum() * 0.125)
    assert structures[0]["area_px"] > 0 and structures[0]["bbox"][2] < 24
    assert structures[1] == {
        "structure": model.labels[1],
        "area_px": 0,
        "area_mm2": 0.0,
        "bbox": None,
        "rle": {"size": [40, 24], "counts": structures[1]["rle"]["counts"]},
    }
    assert structures[2]["area_px"] == 40 * 24 and structures[2]["bbox"] == [0, 0, 24, 40]
    # Without a size (a tensor input) the masks stay at model size; a map of the wrong shape is refused.
    assert model.to_prediction(maps).structures[0]["rle"]["size"] == [32, 32]  # type: ignore[index]
    with pytest.raises(InvalidInputError, match=r"\(K, S, S\) maps for 3 structures"):
        model.to_prediction(maps[:2])


def test_segmentation_predict_bytes_of_a_dicom_gives_mm2_from_its_pixel_spacing(
    lungs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from radflow.runtime.masks import decode_rle, original_masks

    model = RadflowModel.load(lungs[0])
    stored = (np.arange(30 * 44, dtype=np.uint16).reshape(30, 44) * 3) % 4096
    path = tmp_path / "x.dcm"
    write_dicom(path, stored, bits_stored=12, attributes={"PixelSpacing": [0.2, 0.4]}, uid_seed="mm2")
    data = path.read_bytes()
    answer = model.predict_bytes(data)
    maps, _ = model.run(model.prepare(model.decode(data))[None], cam=False)
    for entry, m in zip(answer.structures or [], maps[0], strict=True):
        assert entry["rle"]["size"] == [30, 44]
        np.testing.assert_array_equal(decode_rle(entry["rle"]), original_masks(m[None], 30, 44)[0])
        assert entry["area_mm2"] == pytest.approx(entry["area_px"] * 0.08)
    assert len(answer.structures or []) == 3
    # A PNG has no spacing: areas in pixels only; a batch of pixels answers at its own size.
    assert all(
        e["area_mm2"] is None for e in model.predict_bytes(png_bytes(np.full((36, 20), 90, np.uint8))).structures or []
    )
    batch = model.predict_batch(np.full((2, 36, 20), 120, np.uint8))
    assert [b.structures[0]["rle"]["size"] for b in batch] == [[36, 20]] * 2  # type: ignore[index]


def _disc_image(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w), 40, np.uint8)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 230
    return img


def test_runtime_path_never_imports_torch(chest: Path, lungs: tuple[Path, Path, Path]) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from PIL import Image
        import io
        from radflow.runtime import RadflowModel, score_dataset
        model = RadflowModel.load({str(chest)!r})
        buf = io.BytesIO()
        Image.fromarray(np.full((80, 50), 120, np.uint8)).save(buf, format="PNG")
        prediction = model.predict_bytes(buf.getvalue())
        assert len(prediction.findings) == 3
        assert model.heatmap_png(buf.getvalue(), "Cardiomegaly").startswith(b"\\x89PNG")
        maps, cam = RadflowModel.load({str(lungs[0])!r}).run(np.full((2, 32, 32), 90, np.uint8))
        assert maps.shape == (2, 3, 32, 32) and cam is None
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("LEAKED" if leaked else "CLEAN", leaked[:5])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CLEAN"), result.stdout


def test_runtime_tensor_equals_the_ingested_dataset_tensor(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls in ("normal", "abnormal"):
        (src / cls).mkdir(parents=True)
    rng = np.random.default_rng(0)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 256, (50, 50), dtype=np.uint8))[1].tobytes()
    files = {
        src / "normal" / "wide.png": png_bytes(rng.integers(0, 256, (40, 70), dtype=np.uint8)),
        src / "abnormal" / "deep16.png": png_bytes((rng.integers(0, 4096, (90, 60)) * 16).astype(np.uint16)),
        src / "abnormal" / "photo.jpg": jpeg,
    }
    for path, data in files.items():
        path.write_bytes(data)
    info = ingest(src, "folder", tmp_path / "ds", IngestOptions(size=32, workers=1))
    assert info["counts"]["images"] == 3
    ds = Dataset.open(tmp_path / "ds")

    meta = ModelMeta(arch="pool", task="multilabel", labels=["a", "b"], num_outputs=2, preprocess=ds.spec.to_dict())
    model = RadflowModel.load(export_onnx(PoolNet(), meta, tmp_path / "pool.onnx"))
    located = source_paths(tmp_path / SALT_FILE)
    for row, key in enumerate(ds.manifest["source_key"]):
        path = located[key]
        expected = to_model_input(ds.image(row), ds.spec)
        np.testing.assert_array_equal(model.model_input(path.read_bytes(), path.name), expected)


def test_cam_peaks_on_the_bright_disc_of_the_original_image(tmp_path: Path) -> None:
    meta = ModelMeta(
        arch="pool",
        task="multilabel",
        labels=["Nodule", "Background"],
        num_outputs=2,
        preprocess=PreprocessSpec(size=64).to_dict(),
    )
    model = RadflowModel.load(export_onnx(PoolNet(), meta, tmp_path / "pool.onnx"))
    # A wide image: the model sees it padded to a square, the heatmap must land on the original.
    image = _disc_image(60, 120, cy=30, cx=95, r=12)
    data = png_bytes(image)

    _, cams = model.run(model.prepare(model.decode(data))[None])
    assert cams is not None and cams.shape == (1, 2, 8, 8)
    cam = model.cam(data, "Nodule")
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert peak[1] >= 5 and 3 <= peak[0] <= 4  # right-hand side, vertical middle of the padded square

    png = model.heatmap_png(data, "Nodule")
    overlay = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (60, 120, 3)
    # JET: hot = red; the reddest pixel lies on the disc
    redness = overlay[:, :, 2].astype(int) - overlay[:, :, 0].astype(int)
    y, x = np.unravel_index(np.argmax(redness), redness.shape)
    assert (y - 30) ** 2 + (x - 95) ** 2 < 20**2
    # the negatively weighted label is coldest there
    background = model.cam(data, "Background")
    assert np.unravel_index(np.argmin(background), background.shape) == peak


def _dicom_without_pixels(tmp_path: Path) -> bytes:
    path = tmp_path / "x.dcm"
    write_dicom(path, np.zeros((16, 16), np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_bad_input_raises_4xx_errors(chest: Path, tmp_path: Path) -> None:
    model = RadflowModel.load(chest, max_pixels=50 * 50)
    good = png_bytes(np.full((40, 40), 100, np.uint8))
    cases = {
        "empty": (b"", "empty file"),
        "unreadable": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "corrupt or truncated PNG"),
        "unsupported": (b"GIF89a" + b"\x00" * 200, "not a PNG, JPEG or DICOM"),
        "dicom without pixels": (_dicom_without_pixels(tmp_path), "without pixel data"),
        "over the pixel limit": (png_bytes(np.zeros((60, 60), np.uint8)), "above the limit"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(ImageDecodeError, match=message) as err:
            model.predict_bytes(data, name=name)
        assert 400 <= err.value.status_code < 500 and name in str(err.value)

    with pytest.raises(InvalidInputError, match=r"unknown label 'Cardiomegally'.*Did you mean 'Cardiomegaly'") as err:
        model.heatmap_png(good, "Cardiomegally")
    assert err.value.status_code == 422
    with pytest.raises(InvalidInputError, match="uint8"):
        model.predict_batch(np.zeros((2, 64, 64), np.float32))
    with pytest.raises(InvalidInputError, match="only the image"):
        model.predict_batch(np.zeros((2, 64, 64), np.uint8), extra=np.zeros((2, 1), np.float32))
    (tmp_path / "model.pt").write_bytes(b"not onnx")
    with pytest.raises(MissingOnnxError, match="radflow export"):
        RadflowModel.load(tmp_path / "model.pt")


def test_predictions_from_bytes_and_arrays_agree(chest: Path) -> None:
    model = RadflowModel.load(chest, threads=1)
    image = _disc_image(64, 64, 20, 20, 8)
    from_bytes = model.predict_bytes(png_bytes(image))
    from_array = model.predict_batch(image[None])[0]
    assert from_bytes == from_array
    assert [f.label for f in from_bytes.findings or []] == model.labels
    assert from_bytes.to_dict()["findings"][0].keys() == {"label", "probability", "positive", "threshold"}
    # a non-model-size array is padded and resampled like an upload of the same pixels
    wide = _disc_image(30, 90, 15, 30, 6)
    assert model.predict_batch(wide[None])[0] == model.predict_bytes(png_bytes(wide))


def test_session_options_use_the_cores_without_spinning_between_runs() -> None:
    from radflow.runtime.session import session_options

    opts = session_options(threads=2)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    # idle intra-op threads would otherwise spin between batches, taking the cores the server needs
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
