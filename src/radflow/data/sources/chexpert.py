"""CheXpert (Stanford) label format: ``train.csv`` / ``valid.csv`` beside the image folders.

Columns: Path, Sex, Age, Frontal/Lateral, AP/PA, then the 14 observations. Patient and
study come from the path (``.../patient00001/study1/view1_frontal.jpg``). Rows of
``valid.csv`` form CheXpert's official validation set, labelled by radiologist consensus;
radflow keeps them together as the held-out ``test`` split (the official test set is not
public), and ``radflow split`` draws train/val from ``train.csv`` patients.

CheXpert's paths start with the dataset's folder name (``CheXpert-v1.0-small/train/...``) while
the CSVs sit inside that folder, so a path is read two ways, both inside the source folder only:
as written, or without its first folder. A copy of the dataset under another name is read as the
copy; a path that means a file both ways, or rows that mix the two, are an error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from radflow.data.labels import CHEXPERT_LABELS, parse_label_list, parse_uncertainty
from radflow.data.sources.base import SourceRecord, SourceTable, check_columns, read_csv, skip_entry
from radflow.data.sources.paths import AS_WRITTEN, WITHOUT_LEADING_FOLDER, SourceFolder, SourcePathError
from radflow.errors import DataError, NotFoundError, did_you_mean

__all__ = ["read_chexpert"]

META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
PATH_RE = re.compile(r"(patient\d+)/(study\d+)/view\d+_(frontal|lateral)", re.IGNORECASE)
CSV_SPLITS = (("train.csv", ""), ("valid.csv", "test"))
PATH_RULES = (AS_WRITTEN, WITHOUT_LEADING_FOLDER)


def _csv_files(src: Path) -> list[tuple[Path, str]]:
    if src.is_file():
        return [(src, "test" if src.name == "valid.csv" else "")]
    found = [(src / name, split) for name, split in CSV_SPLITS if (src / name).is_file()]
    if not found:
        raise NotFoundError(
            f"no CheXpert label file in {src}: expected train.csv and/or valid.csv "
            "(columns Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 observations)."
        )
    return found


def _sex(text: str) -> str:
    return {"male": "M", "female": "F"}.get(text.strip().lower(), "")


def read_chexpert(
    src: Path,
    uncertain: str = "zeros",
    labels: str | list[str] | None = None,
    frontal_only: bool = False,
) -> SourceTable:
    """Read CheXpert label CSV(s) under ``src`` (a folder or one CSV)."""
    src = Path(src)
    if not src.exists():
        raise NotFoundError(f"CheXpert source not found: {src}")
    policy = parse_uncertainty(uncertain, CHEXPERT_LABELS)
    csv_files = _csv_files(src)
    folder = SourceFolder(csv_files[0][0].parent)
    records: list[SourceRecord] = []
    skipped = []
    label_columns: list[str] | None = None
    for csv_path, official in csv_files:
        frame = read_csv(csv_path, "CheXpert label CSV")
        check_columns(frame, META_COLUMNS, csv_path, "CheXpert label CSV")
        columns = [c for c in frame.columns if c not in META_COLUMNS]
        unknown = [c for c in columns if c not in CHEXPERT_LABELS]
        if unknown:
            raise DataError(
                f"unknown CheXpert observation column {unknown[0]!r}.{did_you_mean(unknown[0], CHEXPERT_LABELS)} "
                "CheXpert's columns are: " + ", ".join(CHEXPERT_LABELS),
                path=csv_path,
            )
        if label_columns is None:
            label_columns = columns
        elif columns != label_columns:
            raise DataError(f"label columns differ from the other CSV's: {columns} vs {label_columns}", csv_path)
        for i, row in enumerate(frame.itertuples(index=False)):
            line = i + 2
            cells = dict(zip(frame.columns, row, strict=True))
            rel = cells["Path"].strip()
            if frontal_only and cells["Frontal/Lateral"].strip().lower() != "frontal":
                continue
            match = PATH_RE.search(rel)
            if not match:
                skipped.append(
                    skip_entry(
                        rel,
                        "Path does not look like .../patientN/studyN/viewN_frontal|lateral.ext",
                        line,
                        csv_path,
                    )
                )
                continue
            try:
                path = folder.resolve(rel, PATH_RULES, table=csv_path, row=line)
            except SourcePathError as exc:
                skipped.append(skip_entry(rel, exc.reason, line, csv_path))
                continue
            try:
                values = {c: policy.value(c, cells[c]) for c in columns}
            except ValueError as exc:
                skipped.append(skip_entry(folder.relative(path), f"bad label value: {exc}", line, csv_path))
                continue
            age_text = cells["Age"].strip()
            try:
                age = float(age_text) if age_text else math.nan
            except ValueError:
                age = math.nan
            records.append(
                SourceRecord(
                    path=path,
                    rel_path=folder.relative(path),
                    labels=values,
                    patient=match.group(1),
                    study=f"{match.group(1)}/{match.group(2)}",
                    view=match.group(3).lower(),
                    projection=cells["AP/PA"].strip().upper(),
                    sex=_sex(cells["Sex"]),
                    age=age,
                    official_split=official,
                    row=line,
                    table=csv_path.name,
                )
            )
    assert label_columns is not None
    folder.check_layout()
    selected = parse_label_list(labels, label_columns)
    if selected is not None:
        for record in records:
            record.labels = {k: record.labels[k] for k in selected}
        label_columns = selected
    return SourceTable(
        records=records,
        labels=list(label_columns),
        task="multilabel",
        root=folder.root,
        skipped=skipped,
        info={"format": "chexpert", "label_policy": policy.describe()},
    )
