"""Label vocabularies and policies shared by the source readers.

CheXpert's labeller writes 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or leaves the
cell blank (not mentioned in the report). radflow maps them to floats where NaN means
"ignore this label for this image" (masked out of the loss and of metrics):

* blank -> 0.0: a finding the report does not mention is taken as absent, as in the
  CheXpert paper's training setup (and most published reproductions).
* -1.0 -> the uncertainty policy of the CheXpert paper, settable per label:
  ``zeros`` (U-Zeros, 0.0), ``ones`` (U-Ones, 1.0) or ``ignore`` (U-Ignore, NaN).

A policy string is a comma-separated list: a bare policy sets the default, ``Label=policy``
overrides one label, e.g. ``"zeros,Atelectasis=ones,Edema=ones"`` (the paper's best mix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from radflow.errors import ConfigError, did_you_mean

__all__ = [
    "CHEXPERT_LABELS",
    "NIH_LABELS",
    "POLICIES",
    "UncertaintyPolicy",
    "canonical_label",
    "parse_label_list",
    "parse_uncertainty",
]

CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
POLICIES = {"zeros": 0.0, "ones": 1.0, "ignore": math.nan}


class UncertaintyPolicy:
    """Maps CheXpert cell text to a float label under a per-label uncertainty policy."""

    def __init__(self, default: str = "zeros", per_label: dict[str, str] | None = None):
        self.default = default
        self.per_label = dict(per_label or {})

    def value(self, label: str, cell: str) -> float:
        """Float label for one cell; raises ValueError for text that is not a CheXpert value."""
        text = cell.strip()
        if text == "":
            return 0.0
        number = float(text)
        if number == -1.0:
            return POLICIES[self.per_label.get(label, self.default)]
        if number in (0.0, 1.0):
            return number
        raise ValueError(f"expected 1.0, 0.0, -1.0 or blank, got {cell!r}")

    def describe(self) -> dict[str, object]:
        return {"blank": "zeros", "uncertain_default": self.default, "uncertain_per_label": self.per_label}


def parse_uncertainty(spec: str, labels: Sequence[str]) -> UncertaintyPolicy:
    """Parse ``"zeros,Atelectasis=ones"``; unknown policies and labels are errors with hints."""
    default = "zeros"
    per_label: dict[str, str] = {}
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        label, _, policy = token.rpartition("=")
        policy = policy.strip().lower()
        if policy not in POLICIES:
            raise ConfigError(
                f"--uncertain: unknown policy {policy!r}; use zeros, ones or ignore.{did_you_mean(policy, POLICIES)}"
            )
        if not label:
            default = policy
            continue
        known = canonical_label(label.strip(), labels)
        if known is None:
            raise ConfigError(f"--uncertain: unknown label {label.strip()!r}.{did_you_mean(label.strip(), labels)}")
        per_label[known] = policy
    return UncertaintyPolicy(default, per_label)


def parse_label_list(
    spec: str | Sequence[str] | None, available: Sequence[str], flag: str = "--labels"
) -> list[str] | None:
    """Validate a user's label selection against the source's label columns (None = all).

    A name that differs from a column only in case is that column (``cardiomegaly`` -> ``Cardiomegaly``);
    every unknown name is reported in one error, each with its did-you-mean.
    """
    if spec is None:
        return None
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"{flag} is empty; name at least one label or leave the flag out.")
    resolved = [canonical_label(name, available) for name in names]
    unknown = [name for name, label in zip(names, resolved, strict=True) if label is None]
    if unknown:
        if len(unknown) == 1:
            which = f"label {unknown[0]!r}.{did_you_mean(unknown[0], available)}"
        else:
            which = "labels " + ", ".join(_with_hint(name, available) for name in unknown) + "."
        raise ConfigError(f"{flag}: unknown {which} Labels in this source: " + ", ".join(available))
    return [label for label in resolved if label is not None]


def _with_hint(name: str, available: Sequence[str]) -> str:
    hint = did_you_mean(name, available).strip()
    return f"{name!r} ({hint[0].lower()}{hint[1:]})" if hint else repr(name)


def canonical_label(name: str, available: Sequence[str]) -> str | None:
    """The column ``name`` stands for: itself, the one column equal to it ignoring case, or None."""
    if name in available:
        return name
    folded = [label for label in available if label.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None
