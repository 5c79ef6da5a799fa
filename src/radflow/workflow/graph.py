"""A declared workflow as a checked DAG: each step's inputs, its output kind, and the order steps run in.

What flows between steps is one of a few kinds (:class:`Kind`): the image, boxes (a detection
answer), masks (a segmentation answer), findings (a classifier's), a value (a regressor's), each
either for the whole image or one per crop. A step declares what it takes and :func:`build_workflow`
derives what it gives, so a step that cannot take its input's output (a crop by box after a
classifier, an aggregate of a whole-image answer) is refused when the workflow is loaded, with the
workflow and the step named, instead of failing on the first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from radflow.config import WorkflowConfig, WorkflowStepConfig
from radflow.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from radflow.modelref import ResolvedModel
    from radflow.runtime import RadflowModel

__all__ = ["IMAGE", "Kind", "Step", "Workflow", "WorkflowError", "build_workflow", "model_kind"]

IMAGE = "image"
"""The name by which a step takes the request's image."""

What = Literal["image", "boxes", "masks", "findings", "value"]


class WorkflowError(ConfigError):
    """A workflow that cannot run as declared; the message names the workflow and the step."""


@dataclass(frozen=True)
class Kind:
    """What a step's output is, and whether it is one per crop (``per_crop``) or one for the image."""

    what: What
    per_crop: bool = False

    def __str__(self) -> str:
        return f"{self.what} per crop" if self.per_crop else self.what


@dataclass
class Step:
    """One checked step: its declaration, the steps it reads, its output kind and (model steps) its model."""

    config: WorkflowStepConfig
    inputs: dict[str, str]
    """Role -> step name: ``input`` always, ``image`` for a crop."""
    kind: Kind
    model: RadflowModel | None = None
    resolved: ResolvedModel | None = None
    challenger: RadflowModel | None = None
    """A model step's challenger (``challenger:``), answering ``challenger_weight`` of the requests."""
    challenger_resolved: ResolvedModel | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def action(self) -> str:
        """``model``, ``crop``, ``resize`` or ``aggregate``."""
        return next(k for k in ("model", "crop", "resize", "aggregate") if getattr(self.config, k) is not None)


@dataclass
class Workflow:
    """A loaded workflow: its steps in an order where every step runs after the steps it reads."""

    name: str
    config: WorkflowConfig
    steps: list[Step]
    output: str
    """The step whose output is the answer."""
    decode_limits: dict[str, float | int | None] = field(default_factory=dict)
    """``max_pixels`` / ``max_aspect_ratio`` for the request's image (the server's limits)."""

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def models(self) -> dict[str, str]:
        """Step name -> the pinned model it runs (``models:/NAME/N`` once resolved); ``STEP.challenger``: its own."""
        out = {s.name: s.resolved.uri if s.resolved else str(s.config.model) for s in self.steps if s.model}
        for s in self.steps:
            if s.challenger is not None:
                pinned = s.challenger_resolved.uri if s.challenger_resolved else str(s.config.challenger)
                out[f"{s.name}.challenger"] = pinned
        return out


def model_kind(model: RadflowModel) -> What:
    """What a model answers: boxes (detection), masks (segmentation), a value (regression) or findings."""
    if model.meta.kind.network == "detection":
        return "boxes"
    if model.dense:
        return "masks"
    return "value" if model.meta.kind.family == "regression" else "findings"


def _fail(workflow: str, step: str | None, why: str) -> WorkflowError:
    where = f"workflow {workflow!r}" + (f", step {step!r}" if step else "")
    return WorkflowError(f"{where}: {why}")


def _inputs(workflow: str, config: WorkflowConfig) -> dict[str, dict[str, str]]:
    """Each step's inputs by role, every name checked to be a step of the workflow or the image."""
    names = [s.name for s in config.steps]
    seen: set[str] = set()
    for name in names:
        if name == IMAGE:
            raise _fail(workflow, name, f"{IMAGE!r} names the request's image; give the step another name.")
        if name in seen:
            raise _fail(workflow, name, "two steps have this name; give each step its own.")
        seen.add(name)
    out: dict[str, dict[str, str]] = {}
    for i, s in enumerate(config.steps):
        roles = {"input": s.input or (names[i - 1] if i else IMAGE)}
        if s.crop is not None:
            roles["image"] = s.image
        for role, target in roles.items():
            if target != IMAGE and target not in seen:
                raise _fail(
                    workflow,
                    s.name,
                    f"its {role} {target!r} is no step of this workflow.{did_you_mean(target, names)} "
                    f"Steps: {', '.join(names)}; {IMAGE!r} is the request's image.",
                )
            if target == s.name:
                raise _fail(workflow, s.name, f"it takes its own output as its {role}.")
        out[s.name] = roles
    return out


def _order(workflow: str, inputs: dict[str, dict[str, str]]) -> list[str]:
    """The steps in declaration order where possible, each after the steps it reads; a cycle is named."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = [*path[path.index(name) :], name]
            raise _fail(workflow, name, f"its steps form a cycle: {' -> '.join(cycle)}.")
        state[name] = "open"
        for target in inputs[name].values():
            if target != IMAGE:
                visit(target, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in inputs:
        visit(name, [])
    return order


def _kind_of(workflow: str, s: WorkflowStepConfig, given: dict[str, Kind], model: RadflowModel | None) -> Kind:
    """The output kind of step ``s`` given its inputs' kinds, or the error saying which input does not fit."""
    source = given["input"]

    def refuse(why: str) -> WorkflowError:
        return _fail(workflow, s.name, f"{why} (its input gives {source}).")

    if s.model is not None:
        assert model is not None
        if source.what != "image":
            raise refuse(f"a model takes an image or crops, not {source.what}")
        what = model_kind(model)
        if source.per_crop and what in ("boxes", "masks"):
            raise refuse(f"{model.task} models run on the whole image here, not on crops")
        return Kind(what, source.per_crop)
    if s.crop is not None:
        needed: What = "boxes" if s.crop == "box" else "masks"
        if source != Kind(needed):
            raise refuse(f"a crop by {s.crop} needs {needed} of the whole image (a detection or segmentation model)")
        if given["image"] != Kind("image"):
            raise _fail(workflow, s.name, f"a crop cuts the whole image; its image step gives {given['image']}.")
        return Kind("image", per_crop=True)
    if s.resize is not None:
        # A whole image is resized by each model itself; resizing it here would move its boxes off the source.
        if source != Kind("image", per_crop=True):
            raise refuse("a resize takes crops (a model resizes a whole image itself)")
        return source
    if not source.per_crop or source.what not in ("findings", "value"):
        raise refuse("an aggregate takes findings or values per crop (a model run on crops)")
    if s.aggregate == "any" and source.what != "findings":
        raise refuse("aggregate 'any' is for findings; use max or mean for values")
    return Kind(source.what)


def _check_labels(workflow: str, s: WorkflowStepConfig, source: str, model: RadflowModel) -> None:
    """A crop's ``labels`` must be labels its input's model answers (a misspelt one would crop nothing, silently)."""
    unknown = [label for label in s.labels or [] if label not in model.labels]
    if unknown:
        raise _fail(
            workflow,
            s.name,
            f"its labels {unknown} are not answered by step {source!r}, which answers "
            f"{', '.join(model.labels)}.{did_you_mean(unknown[0], model.labels)}",
        )


def _check_challenger(workflow: str, s: WorkflowStepConfig, model: RadflowModel, challenger: RadflowModel) -> None:
    """A challenger must answer what its champion does (the same kind and labels), or later steps would not fit."""
    if model_kind(challenger) != model_kind(model) or challenger.labels != model.labels:
        raise _fail(
            workflow,
            s.name,
            f"its challenger {s.challenger} answers {model_kind(challenger)} of {', '.join(challenger.labels)}, "
            f"its model {s.model} {model_kind(model)} of {', '.join(model.labels)}; a challenger must answer the same.",
        )


def build_workflow(
    name: str,
    config: WorkflowConfig,
    models: dict[str, tuple[RadflowModel, ResolvedModel | None]],
    challengers: dict[str, tuple[RadflowModel, ResolvedModel | None]] | None = None,
) -> Workflow:
    """The checked workflow ``name`` of ``config``; ``models`` holds each model step's loaded model by step name,
    ``challengers`` each challenger's.

    Raises :class:`WorkflowError` naming the workflow and the step for an input that is no step, a cycle,
    a step whose input's kind it cannot take, a challenger that answers otherwise than its model, or an
    ``output`` that is no step.
    """
    challengers = challengers or {}
    inputs = _inputs(name, config)
    order = _order(name, inputs)
    by_name = {s.name: s for s in config.steps}
    kinds: dict[str, Kind] = {IMAGE: Kind("image")}
    steps: list[Step] = []
    for step_name in order:
        s = by_name[step_name]
        model, resolved = models.get(step_name, (None, None))
        kind = _kind_of(name, s, {role: kinds[t] for role, t in inputs[step_name].items()}, model)
        if s.crop is not None and s.labels:
            _check_labels(name, s, inputs[step_name]["input"], models[inputs[step_name]["input"]][0])
        kinds[step_name] = kind
        challenger, challenger_resolved = challengers.get(step_name, (None, None))
        if challenger is not None:
            assert model is not None
            _check_challenger(name, s, model, challenger)
        steps.append(Step(s, inputs[step_name], kind, model, resolved, challenger, challenger_resolved))
    output = config.output or config.steps[-1].name
    if output not in by_name:
        raise _fail(name, None, f"its output {output!r} is no step.{did_you_mean(output, list(by_name))}")
    return Workflow(name, config, steps, output)
