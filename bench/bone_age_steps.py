"""Bone age in steps (issue 15, Iglovikov et al.): segment the hand -> cut it at its mask -> regress, against one
regression model on the whole image; test MAE of both on the same phantom split.

On hand phantoms in RSNA bone age's layout with their exact silhouette masks (``radflow synth hand --masks``):

1. the hand step: the masks ingested as a segmentation dataset (``--format masks``), split by patient, and a
   small_unet trained on it; its split is THE split of both arms;
2. the age step: ``radflow workflow crops --masks`` of that dataset (each hand cut at its true mask's extent
   with the workflow's margin, resized to ``--crop``, labelled with its bone age and sex, every crop in its
   image's split), and a small_cnn regression trained on the crops;
3. the baseline: the same images whole (a box table whose one box per image is the whole image, cut with no
   margin: exactly the pad-to-square and resize of ingest, same patients and split), and the same small_cnn
   regression trained on them with the same epochs, batch size and input size;
4. both judged by ``radflow workflow evaluate`` on the test split through the served code path
   (:func:`radflow.workflow.evaluate.evaluate_workflow`, ONNX exports, torch-free): the workflow segment ->
   crop by the PREDICTED mask -> resize -> regress -> mean, and the baseline as a one-step workflow; each image
   gets its table sex.

Each regression (both arms) is trained ``--repeats`` times (training seeds 0..R-1; the data, the split and
the one hand model stay), each for all its epochs (no early stop; the best validation epoch exported).
Prints one table (per arm and seed: MAE, RMSE, bias, within 12 months, answered, epochs, training seconds),
the per-seed ratios and the ratio of the mean test MAEs, workflow / single model (below 1: the steps help).
CPU, a temporary folder, MLflow in it.

    .venv/bin/python bench/bone_age_steps.py [--n 400] [--size 128] [--crop 64] [--epochs 12] [--seg-epochs 8]
                                             [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from radflow.config import Params, WorkflowConfig
from radflow.data.decode import decode_image
from radflow.data.ingest import IngestOptions, ingest
from radflow.data.split import split_dataset
from radflow.data.synth import synth_hand
from radflow.export.pipeline import export_model
from radflow.train.loop import train
from radflow.workflow import load_workflow
from radflow.workflow.crops import build_crops
from radflow.workflow.evaluate import evaluate_workflow

from _table import print_ratio, print_table

CSV = "boneage-training-dataset.csv"
MARGIN = 0.05


def _train(
    dataset: Path, out: Path, arch: str, args: argparse.Namespace, uri: str, seed: int, epochs: int
) -> tuple[Path, float, int]:
    """(the exported ONNX, training seconds, epochs run) of ``arch`` trained on ``dataset``: every regression the
    same epochs (no early stop), batch size, learning rate and seed; the best validation epoch is exported."""
    params = Params().with_overrides({
        "train.arch": arch, "train.epochs": epochs, "train.batch_size": 16, "train.num_workers": 0,
        "train.threads": args.threads, "train.seed": seed, "train.lr": args.lr, "train.early_stopping_patience": 0,
    })  # fmt: skip
    start = time.perf_counter()
    result = train(dataset, params, tracking_uri=uri, experiment="bench-bone-age", out_dir=out, progress=False)
    seconds = time.perf_counter() - start
    onnx = out / "model.onnx"
    export_model(str(result.checkpoint_path), onnx, dataset=dataset, parity_n=8, reference_images=0)
    return onnx, seconds, result.epochs_run


def _whole_image_table(src: Path, out: Path) -> Path:
    """A box table with one box per image: the whole image (the baseline's input), its bone age and sex."""
    with (src / CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "x", "y", "width", "height", "boneage", "male"])
        for row in rows:
            rel = f"boneage-training-dataset/{row['id']}.png"
            height, width = decode_image((src / rel).read_bytes()).pixels.shape
            writer.writerow([rel, 0, 0, width, height, row["boneage"], row["male"]])
    return out


def _judge(name: str, steps: list[dict[str, Any]], seg: Path, src: Path, threads: int) -> dict[str, Any]:
    workflow = load_workflow(name, WorkflowConfig.model_validate({"steps": steps}), threads=threads)
    return evaluate_workflow(workflow, seg, src / CSV, "boneage", sex_field="male")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="hand phantoms")
    parser.add_argument("--size", type=int, default=128, help="phantom width (height 1.25x)")
    parser.add_argument("--seg-size", type=int, default=64, help="the hand step's input size")
    parser.add_argument("--crop", type=int, default=64, help="the age step's (and the baseline's) input size")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each regression (both arms)")
    parser.add_argument("--seg-epochs", type=int, default=8, help="epochs of the hand segmentation")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="the phantoms' and the split's seed")
    parser.add_argument("--repeats", type=int, default=3, help="trainings of every arm (training seeds 0..R-1)")
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-bone-age-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        src = root / "hands"
        synth_hand(src, args.n, seed=args.seed, size=args.size, masks=True)
        ingest(src, "masks", root / "seg", IngestOptions(size=args.seg_size, workers=1))
        split_dataset(root / "seg", val=0.15, test=0.2, seed=args.seed)
        build_crops(
            root / "seg", root / "age", src / CSV, "boneage", masks=src, task="regression", sex_field="male",
            size=args.crop, margin=MARGIN,
        )  # fmt: skip
        whole = _whole_image_table(src, src / "whole-image-boxes.csv")
        build_crops(
            root / "seg", root / "whole", whole, "boneage", task="regression", sex_field="male", size=args.crop,
            margin=0.0,
        )  # fmt: skip
        for crops in (root / "age", root / "whole"):  # each crop keeps its image's split (official)
            split_dataset(crops, val=0.15, test=0.2, seed=args.seed)
        # One hand model for every run (its mask only decides the cut); the regressions are trained per seed.
        hand, hand_s, _ = _train(root / "seg", root / "m-hand", "small_unet", args, uri, 0, args.seg_epochs)
        runs = []
        for seed in range(args.repeats):
            age, age_s, age_e = _train(root / "age", root / f"m-age-{seed}", "small_cnn", args, uri, seed, args.epochs)
            one, one_s, one_e = _train(
                root / "whole", root / f"m-whole-{seed}", "small_cnn", args, uri, seed, args.epochs
            )
            steps = _judge(
                "bone-age",
                [
                    {"name": "hand", "model": str(hand)},
                    {"name": "crop", "crop": "mask", "margin": MARGIN, "labels": ["Hand"]},
                    {"name": "resize", "resize": args.crop},
                    {"name": "age", "model": str(age)},
                    {"name": "months", "aggregate": "mean"},
                ],
                root / "seg", src, args.threads,
            )  # fmt: skip
            single = _judge("bone-age-single", [{"name": "age", "model": str(one)}], root / "seg", src, args.threads)
            runs.append((seed, steps, age_s, str(age_e), single, one_s, str(one_e)))

    test = runs[0][1]["counts"]["images"]
    print(
        f"bone age on {args.n} hand phantoms ({args.size} px wide), the same patient split for both arms: test "
        f"{test} images; small_cnn at {args.crop} px for both regressions (hand: small_unet at {args.seg_size} px), "
        f"{args.epochs} epochs each, {args.repeats} training seed(s); the hand step: {args.seg_epochs} epochs, "
        f"{hand_s:.0f} s, one model for all runs"
    )
    rows = []
    maes: dict[str, list[float]] = {"steps": [], "single": []}
    for seed, steps, steps_s, steps_e, single, single_s, single_e in runs:
        for arm, key, result, seconds, epochs in (
            ("steps: segment -> crop by mask -> regress", "steps", steps, steps_s, steps_e),
            ("single model on the whole image", "single", single, single_s, single_e),
        ):
            m = result["metrics"]
            if m["mae"] is not None:
                maes[key].append(float(m["mae"]))
            rows.append([
                arm, seed, m["mae"], m["rmse"], m["bias"], m["within_12"], m["answered"], epochs, seconds,
            ])  # fmt: skip
    print_table(
        ["arm", "seed", "MAE mo", "RMSE mo", "bias mo", "within 12", "answered", "epochs", "regression train s"],
        [[c if c is not None else "-" for c in r] for r in rows],
    )
    if len(maes["steps"]) != len(runs) or len(maes["single"]) != len(runs):
        print("ratio workflow MAE / single-model MAE: not measured (an arm answered no test image in some run)")
        return
    for (seed, *_), a, b in zip(runs, maes["steps"], maes["single"], strict=True):
        print(f"seed {seed}: workflow MAE / single-model MAE {a / b:.3f}")
    mean_steps, mean_single = sum(maes["steps"]) / len(runs), sum(maes["single"]) / len(runs)
    print(f"mean test MAE: steps {mean_steps:.2f} months, single model {mean_single:.2f} months")
    print_ratio("workflow MAE / single-model MAE (means over seeds)", mean_steps / mean_single, 1.0, False)


if __name__ == "__main__":
    main()
