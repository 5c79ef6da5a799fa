"""``radflow synth chest|hand|spine``: phantoms in CheXpert's or RSNA bone age's layout, spine MR with its truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radflow.cli._app import app, console, emit, run_command

__all__ = ["synth_app"]

synth_app = typer.Typer(
    help="Write phantom radiographs in a real dataset's exact layout (stand-ins where real data cannot be had).",
    no_args_is_help=True,
)
app.add_typer(synth_app, name="synth")

_MASKS_HELP = (
    "Also write exact ground-truth masks (masks/ PNGs per structure, train-rle.csv, structures.txt, patients.csv), "
    "so `radflow ingest OUT --format masks` (or siim) makes a segmentation dataset."
)


_BOXES_HELP = (
    "Also write the findings' boxes (one per connected region of each drawn finding's mask) as COCO "
    "annotations.json, so `radflow ingest OUT --format coco-boxes` makes a detection dataset."
)


def _render(info: dict[str, Any]) -> None:
    console.print(
        f"[bold]{info['images']} phantom {info['kind']} images[/] ({info['width']}x{info['height']} px) "
        f"in {info['out']} · {info['seconds']} s on {info['workers']} worker(s)"
    )
    if info["kind"] == "chest":
        console.print(
            f"{info['patients']} patients · train {info['train_images']} / valid {info['valid_images']} images "
            f"({info['valid_patients']} valid patients) · {info['dicom_images']} DICOM"
        )
        shares = " · ".join(f"{label} {share:.1%}" for label, share in info["prevalence"].items())
        console.print(f"positives: {shares}")
    elif info["kind"] == "spine":
        console.print(
            f"{info['patients']} patients · {info['vertebrae']} vertebrae ({', '.join(info['levels'])}) · "
            f"{info['schmorl_nodes']} Schmorl's nodes in {info['images_with_nodes']} images · MR DICOM, "
            f"{info['pixel_spacing_mm']} mm pixels"
        )
        console.print(f"truth: {' · '.join(info['truth'].values())}")
    else:
        console.print(f"{info['boys']} boys · bone age mean {info['boneage_mean']} months, sd {info['boneage_sd']}")
    if "masks" in info:
        shown = " · ".join(f"{name} {count}" for name, count in info["masks"]["images_showing"].items())
        console.print(f"ground-truth masks (images showing each): {shown}")
    if "boxes" in info:
        counts = " · ".join(f"{name} {count}" for name, count in info["boxes"]["counts"].items())
        console.print(f"boxes in {info['boxes']['file']}: {counts}")


# The options every phantom command takes, spelled once.
Seed = Annotated[int, typer.Option(help="Random seed: the same seed writes the same bytes.")]
Workers = Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


@synth_app.command("chest")
def chest_command(
    out: Annotated[Path, typer.Argument(help="Folder to write (its name prefixes the CSV paths, as in CheXpert).")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 2000,
    seed: Seed = 0,
    size: Annotated[int, typer.Option(help="Image width in pixels (height is 1.2x).")] = 256,
    dicom_fraction: Annotated[float, typer.Option(help="Share of images written as DICOM instead of PNG.")] = 0.0,
    valid_fraction: Annotated[float, typer.Option(help="Share of patients put in valid.csv.")] = 0.1,
    workers: Workers = None,
    masks: Annotated[bool, typer.Option("--masks", help=_MASKS_HELP)] = False,
    boxes: Annotated[bool, typer.Option("--boxes", help=_BOXES_HELP)] = False,
    as_json: AsJson = False,
) -> None:
    """Phantom frontal chest radiographs with CheXpert's train.csv / valid.csv and folder layout."""
    from radflow.data.synth import synth_chest

    info = run_command(
        lambda: synth_chest(out, n, seed, size, dicom_fraction, valid_fraction, workers, masks, boxes=boxes)
    )
    emit(info, as_json, _render)


@synth_app.command("hand")
def hand_command(
    out: Annotated[Path, typer.Argument(help="Folder to write.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 1000,
    seed: Seed = 0,
    size: Annotated[int, typer.Option(help="Image width in pixels (height is 1.25x).")] = 256,
    workers: Workers = None,
    masks: Annotated[bool, typer.Option("--masks", help=_MASKS_HELP)] = False,
    as_json: AsJson = False,
) -> None:
    """Phantom hand radiographs with RSNA bone age's boneage-training-dataset.csv layout."""
    from radflow.data.synth import synth_hand

    info = run_command(lambda: synth_hand(out, n, seed, size, workers, masks))
    emit(info, as_json, _render)


@synth_app.command("spine")
def spine_command(
    out: Annotated[Path, typer.Argument(help="Folder to write.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 500,
    seed: Seed = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels (square).")] = 256,
    workers: Workers = None,
    as_json: AsJson = False,
) -> None:
    """Phantom sagittal lumbar spine MR (DICOM) with each vertebra's box and level and its Schmorl's nodes.

    annotations.json (COCO, category Vertebra) makes a detection source for `radflow ingest OUT --format
    coco-boxes`; vertebrae.csv holds each vertebra's box, level and node (the truth of the per-vertebra step).
    """
    from radflow.data.synth.spine import synth_spine

    info = run_command(lambda: synth_spine(out, n, seed, size, workers))
    emit(info, as_json, _render)
