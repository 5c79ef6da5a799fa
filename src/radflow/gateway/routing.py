"""Routing rules: which model scores a series, from its modality, body part, series description and SOP class.

Rules are a YAML or JSON list (or a mapping with a ``rules:`` list), tried in order; the first
whose every given condition holds decides. A rule names the model that scores the series (a model
reference, default the gateway's ``--model``) or says ``score: false`` to drop what it matches. A
series no rule matches is not scored: the gateway counts it and logs its modality and SOP class,
never its description, which free text can make identifying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydicom.uid import UID

from radflow.errors import ConfigError

__all__ = ["Rule", "SeriesInfo", "load_rules", "route"]


@dataclass(frozen=True)
class SeriesInfo:
    """The attributes of a series the rules look at (from its first instance)."""

    modality: str
    body_part: str
    series_description: str
    sop_class_uid: str


def _upper_list(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [str(v).strip().upper() for v in value]
    return value


class Rule(BaseModel):
    """One routing rule; unset conditions match anything. Modality and body part compare case-insensitively."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    """Shown in logs and metrics (default ``rule N``)."""
    modality: list[str] | None = None
    """Modality (0008,0060) values, e.g. ``[CR, DX]``."""
    body_part: list[str] | None = None
    """Body Part Examined (0018,0015) values, e.g. ``CHEST``."""
    series_description: str | None = None
    """A regular expression searched (case-insensitive) in Series Description (0008,103E)."""
    sop_class: list[str] | None = None
    """SOP Class UIDs or their names, e.g. ``1.2.840.10008.5.1.4.1.1.1.1`` or ``Computed Radiography Image Storage``."""
    model: str | None = None
    """The model that scores what this rule matches (ONNX file, run id, models:/NAME@ALIAS); default ``--model``."""
    score: bool = True
    """``false``: what this rule matches is deliberately not scored."""

    _pattern: re.Pattern[str] | None = None

    @field_validator("modality", "body_part", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return _upper_list(value)

    @field_validator("sop_class", mode="before")
    @classmethod
    def _sop_classes(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"series_description {value!r} is not a regular expression: {exc}") from None
        return value

    def model_post_init(self, context: Any) -> None:
        if self.series_description is not None:
            self._pattern = re.compile(self.series_description, re.IGNORECASE)

    def matches(self, info: SeriesInfo) -> bool:
        if self.modality is not None and info.modality.strip().upper() not in self.modality:
            return False
        if self.body_part is not None and info.body_part.strip().upper() not in self.body_part:
            return False
        if self._pattern is not None and not self._pattern.search(info.series_description):
            return False
        if self.sop_class is not None:
            uid = UID(info.sop_class_uid)
            wanted = {s.strip().lower() for s in self.sop_class}
            if uid not in wanted and uid.name.lower() not in wanted:
                return False
        return True


def route(rules: list[Rule], info: SeriesInfo) -> Rule | None:
    """The first rule matching ``info``; with no rules at all, a catch-all rule (score with the served model)."""
    if not rules:
        return Rule(name="default")
    return next((rule for rule in rules if rule.matches(info)), None)


def load_rules(path: Path) -> list[Rule]:
    """The rules of a YAML/JSON file; a ConfigError naming the file, the rule and the field when one is wrong."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read routing rules {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"routing rules {path} are not valid YAML/JSON: {exc}") from None
    if isinstance(raw, dict) and set(raw) == {"rules"}:
        raw = raw["rules"]
    if not isinstance(raw, list):
        raise ConfigError(f"routing rules {path} must be a list of rules (or a mapping with a 'rules' list).")
    rules = []
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise ConfigError(f"routing rules {path}: rule {i} must be a mapping, got {item!r}.")
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(rule)"
            raise ConfigError(f"routing rules {path}: rule {i}, field {field!r}: {first['msg']}.") from None
        rules.append(rule if rule.name else rule.model_copy(update={"name": f"rule {i}"}))
    return rules
