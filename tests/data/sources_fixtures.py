"""Small sources in the real on-disk label formats, written by the tests that ingest them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from radflow.data.labels import CHEXPERT_LABELS

__all__ = ["write_boneage", "write_chexpert", "write_folder", "write_nih", "write_png"]


def write_png(path: Path, seed: int, shape: tuple[int, int] = (40, 48), bits: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        Image.fromarray(rng.integers(0, 4096, shape, dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def write_chexpert(root: Path, patients: int = 4, studies: int = 2, valid_patients: int = 1) -> Path:
    """CheXpert layout: root/train.csv, root/valid.csv, images under root/{train,valid}/patientN/studyM/."""
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)
    lines = {"train": [header], "valid": [header]}
    seed = 0
    for p in range(1, patients + 1):
        split = "valid" if p > patients - valid_patients else "train"
        for s in range(1, studies + 1):
            seed += 1
            rel = f"{root.name}/{split}/patient{p:05d}/study{s}/view1_frontal.png"
            write_png(root / split / f"patient{p:05d}" / f"study{s}" / "view1_frontal.png", seed)
            values = ["" for _ in CHEXPERT_LABELS]
            values[CHEXPERT_LABELS.index("Cardiomegaly")] = "1.0" if p % 2 else "0.0"
            values[CHEXPERT_LABELS.index("Edema")] = "-1.0" if s == 1 else ""
            values[CHEXPERT_LABELS.index("No Finding")] = "" if p % 2 else "1.0"
            lines[split].append(
                f"{rel},{'Male' if p % 2 else 'Female'},{40 + p},Frontal,{'AP' if s % 2 else 'PA'}," + ",".join(values)
            )
    for split, rows in lines.items():
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def write_nih(root: Path, n: int = 6) -> Path:
    """NIH layout: Data_Entry_2017.csv (bracketed header names) + images_001/images/*.png + test_list.txt."""
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    findings = ["No Finding", "Effusion|Mass", "Cardiomegaly", "Effusion", "No Finding", "Pneumothorax|Effusion"]
    rows = [header]
    for i in range(n):
        name = f"{i:08d}_000.png"
        write_png(root / "images_001" / "images" / name, 100 + i)
        rows.append(
            f"{name},{findings[i % len(findings)]},0,{i // 2 + 1},0{50 + i},{'M' if i % 2 else 'F'},PA,48,40,0.14,0.14,"
        )
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "test_list.txt").write_text(f"{0:08d}_000.png\n")
    return root


def write_boneage(root: Path, n: int = 5) -> Path:
    rows = ["id,boneage,male"]
    for i in range(n):
        write_png(root / "boneage-training-dataset" / f"{1377 + i}.png", 200 + i)
        rows.append(f"{1377 + i},{30 + 20 * i},{'True' if i % 2 else 'False'}")
    (root / "boneage-training-dataset.csv").write_text("\n".join(rows) + "\n")
    return root


def write_folder(root: Path, per_class: int = 3) -> Path:
    for c, name in enumerate(("abnormal", "normal")):
        for i in range(per_class):
            write_png(root / name / f"img{i}.png", 300 + 10 * c + i)
    return root
