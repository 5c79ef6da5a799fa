"""Label Studio labelling configurations generated from a model's task kind and labels, and checked back.

One config per kind family, so what an expert draws is exactly what radflow's feedback of that kind holds:

* ``multilabel``: one ``Choices`` per finding (``present`` / ``absent``): an explicit negative, and a finding
  left unanswered is "not mentioned" (CheXpert's blank), never a negative.
* ``multiclass``: one single-choice ``Choices`` over the classes.
* ``regression`` (bone age): a ``Number`` for the value (in the model's unit) and the patient's ``sex``.
* ``segmentation``: ``BrushLabels``, one label per structure.
* ``detection``: ``RectangleLabels``, one label per box label.

Every config shows the task's ``$image`` (a de-identified PNG) in an ``Image`` named ``image``.
:func:`check_config` compares a project's config with the one the task needs by its controls (tag, name
and values), so a project made for another model or task is refused naming what differs.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from radflow.errors import ConfigError

__all__ = [
    "ABSENT",
    "BOX_CONTROL",
    "CLASS_CONTROL",
    "IMAGE",
    "MASK_CONTROL",
    "PRESENT",
    "SEX_CONTROL",
    "VALUE_CONTROL",
    "Control",
    "LabelConfig",
    "check_config",
    "finding_control",
    "label_config",
    "parse_controls",
]

IMAGE = "image"
"""The ``Image`` tag's name, and the task data key holding the PNG (``$image``)."""
PRESENT, ABSENT = "present", "absent"
CLASS_CONTROL = "class"
VALUE_CONTROL = "value"
SEX_CONTROL = "sex"
MASK_CONTROL = "masks"
BOX_CONTROL = "boxes"
_CONTROL_TAGS = ("choices", "number", "brushlabels", "rectanglelabels", "labels", "textarea", "rating")


def finding_control(label: str) -> str:
    """The ``Choices`` name of a finding: its label in lower case with runs of other characters as ``_``."""
    return "finding_" + re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")


@dataclass(frozen=True)
class Control:
    """One control tag of a labelling config: its tag (lower case), name and the values it offers."""

    tag: str
    name: str
    values: tuple[str, ...]

    def describe(self) -> str:
        return f"<{self.tag} name={self.name!r}> {list(self.values)}"


@dataclass(frozen=True)
class LabelConfig:
    """A generated labelling config: the XML and, for a findings config, the finding each control names."""

    task: str
    labels: tuple[str, ...]
    xml: str
    findings: dict[str, str]
    """``Choices`` name -> finding label (multi-label configs only)."""


def _choices(name: str, values: list[str], header: str | None = None, choice: str = "single-radio") -> str:
    head = f"    <Header value={quoteattr(header)}/>\n" if header else ""
    options = "".join(f"      <Choice value={quoteattr(v)}/>\n" for v in values)
    return (
        f"{head}    <Choices name={quoteattr(name)} toName={quoteattr(IMAGE)} choice={quoteattr(choice)} "
        f'showInline="true">\n{options}    </Choices>\n'
    )


def _labels(tag: str, name: str, values: list[str]) -> str:
    options = "".join(f"    <Label value={quoteattr(v)}/>\n" for v in values)
    return f"  <{tag} name={quoteattr(name)} toName={quoteattr(IMAGE)}>\n{options}  </{tag}>\n"


def label_config(task: str, labels: list[str], unit: str | None = None) -> LabelConfig:
    """The labelling config of a ``task`` model answering ``labels`` (``unit``: a regression value's)."""
    labels = [str(label) for label in labels]
    if not labels and task != "regression":
        raise ConfigError(f"a {task} labelling config needs the model's labels; the model names none.")
    image = f'  <Image name={quoteattr(IMAGE)} value={quoteattr("$" + IMAGE)} zoom="true"/>\n'
    findings: dict[str, str] = {}
    if task == "multilabel":
        body = ""
        for label in labels:
            name = finding_control(label)
            if name in findings:
                raise ConfigError(f"findings {findings[name]!r} and {label!r} give the same control name {name!r}.")
            findings[name] = label
            body += _choices(name, [PRESENT, ABSENT], header=label)
        body = f"  <View>\n{body}  </View>\n"
    elif task == "multiclass":
        body = _choices(CLASS_CONTROL, labels, header="Class", choice="single")
    elif task == "regression":
        what = labels[0] if labels else "value"
        header = f"{what} ({unit})" if unit else what
        body = (
            f"  <Header value={quoteattr(header)}/>\n"
            f'  <Number name={quoteattr(VALUE_CONTROL)} toName={quoteattr(IMAGE)} min="0" step="0.1" '
            f'required="true"/>\n' + _choices(SEX_CONTROL, ["M", "F"], header="Sex", choice="single")
        )
    elif task == "segmentation":
        body = _labels("BrushLabels", MASK_CONTROL, labels)
    elif task == "detection":
        body = _labels("RectangleLabels", BOX_CONTROL, labels)
    else:
        raise ConfigError(
            f"radflow has no Label Studio config for task {task!r}; it makes them for multilabel, multiclass, "
            "regression, segmentation and detection."
        )
    xml = f"<View>\n{image}{body}</View>\n"
    return LabelConfig(task, tuple(labels), xml, findings)


def parse_controls(xml: str) -> dict[str, Control]:
    """The control tags of a labelling config by name (ConfigError when it is not XML)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(f"the project's labelling config is not XML ({exc}).") from None
    controls: dict[str, Control] = {}
    for element in root.iter():
        tag = element.tag.lower()
        if tag not in _CONTROL_TAGS or "name" not in element.attrib:
            continue
        values = tuple(child.attrib.get("value", "") for child in element if child.tag.lower() in ("choice", "label"))
        controls[element.attrib["name"]] = Control(tag, element.attrib["name"], values)
    return controls


def check_config(project_xml: str, expected: LabelConfig, project: str) -> None:
    """Raise ConfigError naming every control that differs between ``project``'s config and the task's."""
    have, want = parse_controls(project_xml), parse_controls(expected.xml)
    problems = []
    for name, control in want.items():
        found = have.get(name)
        if found is None:
            problems.append(f"missing {control.describe()}")
        elif found != control:
            problems.append(f"{found.describe()} where the task needs {control.describe()}")
    problems += [f"unexpected {c.describe()}" for name, c in have.items() if name not in want]
    if problems:
        raise ConfigError(
            f"Label Studio project {project} does not match the {expected.task} model's labelling config "
            f"({'; '.join(problems)}); use another project, or recreate it with `radflow annotate push`."
        )
