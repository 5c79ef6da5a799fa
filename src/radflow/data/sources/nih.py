"""NIH ChestX-ray14 label format: ``Data_Entry_2017*.csv`` and the ``images*/`` folders.

``Finding Labels`` holds pipe-separated findings ("Effusion|Mass") or "No Finding". The
header has bracketed names with commas inside (``OriginalImage[Width,Height]``), so those
columns split in two; radflow only reads the columns it needs. When ``test_list.txt`` is
present beside the CSV, its images form the official test split. Images are found by file name
anywhere below the CSV's folder and nowhere else; a name two files share is an error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from radflow.data.labels import NIH_LABELS, parse_label_list
from radflow.data.sources.base import SourceRecord, SourceTable, check_columns, read_csv, skip_entry
from radflow.data.sources.paths import SourceFolder, SourcePathError
from radflow.errors import NotFoundError, did_you_mean

__all__ = ["read_nih"]

REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position")


def _entry_csv(src: Path) -> Path:
    if src.is_file():
        return src
    found = sorted(src.glob("Data_Entry_2017*.csv"))
    if not found:
        raise NotFoundError(f"no NIH label file in {src}: expected Data_Entry_2017*.csv")
    return found[-1]


def _age(text: str) -> float:
    match = re.fullmatch(r"0*(\d+)\s*([YMD]?)", text.strip().upper())
    if not match:
        return math.nan
    value = float(match.group(1))
    return {"": value, "Y": value, "M": value / 12, "D": value / 365.25}[match.group(2)]


def read_nih(src: Path, labels: str | list[str] | None = None, frontal_only: bool = False) -> SourceTable:
    """Read an NIH ChestX-ray14 label CSV; ``src`` is its folder or the CSV itself."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"NIH source not found: {src}")
    csv_path = _entry_csv(src)
    root = csv_path.parent
    frame = read_csv(csv_path, "NIH Data_Entry CSV")
    check_columns(frame, REQUIRED, csv_path, "NIH Data_Entry CSV")
    test_list = root / "test_list.txt"
    official_test = set(test_list.read_text().split()) if test_list.is_file() else set()
    folder = SourceFolder(root)
    selected = parse_label_list(labels, NIH_LABELS) or list(NIH_LABELS)
    records: list[SourceRecord] = []
    skipped = []
    for i, row in enumerate(
        frame[list(REQUIRED) + (["Follow-up #"] if "Follow-up #" in frame else [])].itertuples(index=False)
    ):
        line = i + 2
        name, findings, patient, age, sex, view = (str(v).strip() for v in row[:6])
        follow_up = str(row[6]).strip() if len(row) > 6 else "0"
        projection = view.upper()
        if frontal_only and projection not in ("PA", "AP"):
            continue
        try:
            path = folder.find([name], written=name, table=csv_path, row=line)
        except SourcePathError as exc:
            skipped.append(skip_entry(name, exc.reason, line, csv_path))
            continue
        rel = folder.relative(path)
        found = [f.strip() for f in findings.split("|") if f.strip()]
        unknown = [f for f in found if f not in NIH_LABELS and f != "No Finding"]
        if unknown:
            hint = did_you_mean(unknown[0], [*NIH_LABELS, "No Finding"])
            skipped.append(skip_entry(rel, f"unknown finding {unknown[0]!r} in Finding Labels.{hint}", line, csv_path))
            continue
        if not patient:
            skipped.append(skip_entry(rel, "blank Patient ID", line, csv_path))
            continue
        records.append(
            SourceRecord(
                path=path,
                rel_path=rel,
                labels={label: float(label in found) for label in selected},
                patient=patient,
                study=f"{patient}/{follow_up}",
                view="frontal" if projection in ("PA", "AP") else ("lateral" if projection else ""),
                projection=projection,
                sex=sex.upper() if sex.upper() in ("M", "F") else "",
                age=_age(age),
                official_split="test" if name in official_test else "",
                row=line,
                table=csv_path.name,
            )
        )
    return SourceTable(
        records=records,
        labels=selected,
        task="multilabel",
        root=root,
        skipped=skipped,
        info={"format": "nih", "official_test_list": test_list.is_file()},
    )
