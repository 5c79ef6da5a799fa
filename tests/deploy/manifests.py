"""Strict offline validation of deploy/'s Kubernetes objects: unknown or mistyped fields fail, naming the path.

Core objects (Deployment, Service, ...) are checked against the ``kubernetes`` Python SDK's models: their
``openapi_types`` / ``attribute_map`` say which fields exist and of what type. The SDK's own deserializer
drops keys it does not know (``spec.replica: 2`` loads as a Deployment with no replicas), so every key is
walked here first, then the object is deserialized by the SDK for its required fields.

Custom resources (KServe, Seldon Core v2) are checked against the schemas in ``crds.yaml`` beside this file,
written from the projects' documented API references: KServe's Python SDK cannot be installed beside radflow
(it pins older pandas, protobuf and psutil), and Seldon ships no Python models. A schema node embeds an SDK
model by name (``k8s: V1Container``) or inlines its fields (``inline: V1PodSpec``, as the Go types do).
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ManifestError", "load_documents", "validate_object"]

_CRDS = Path(__file__).with_name("crds.yaml")
_PRIMITIVES = {"str", "int", "bool", "float", "object", "date", "datetime", "bytes"}


class ManifestError(ValueError):
    """A field that Kubernetes (or the CRD) would refuse or silently ignore."""


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``text`` (a file or ``kubectl kustomize`` output)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _models() -> Any:
    import kubernetes.client.models as models

    return models


def _unknown(key: str, known: list[str], where: str) -> ManifestError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ManifestError(f"{where}: unknown field {key!r}{hint}")


def _check_primitive(value: Any, kind: str, where: str) -> None:
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "object": True,  # IntOrString, Quantity, free-form
        "date": isinstance(value, str),
        "datetime": isinstance(value, str),
        "bytes": isinstance(value, str),  # base64 in YAML
    }[kind]
    if not ok:
        raise ManifestError(f"{where}: expected {kind}, got {type(value).__name__} {value!r}")


def _fields(model: str) -> dict[str, str]:
    """JSON field name -> SDK type string of the SDK model ``model``."""
    cls = getattr(_models(), model)
    return {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}


def check_sdk(value: Any, kind: str, where: str) -> None:
    """``value`` against the SDK type string ``kind`` (``V1PodSpec``, ``List[V1Container]``, ``Dict[str, str]``)."""
    if kind.startswith(("list[", "List[")):
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check_sdk(item, kind[5:-1], f"{where}[{i}]")
    elif kind.startswith(("dict(", "Dict[")):
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected a mapping, got {type(value).__name__}")
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_sdk(item, inner, f"{where}.{key}")
    elif kind in _PRIMITIVES:
        _check_primitive(value, kind, where)
    else:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected a {kind} mapping, got {type(value).__name__} {value!r}")
        fields = _fields(kind)
        for key, item in value.items():
            if key not in fields:
                raise _unknown(key, list(fields), where)
            check_sdk(item, fields[key], f"{where}.{key}")


@cache
def _schemas() -> dict[str, Any]:
    return dict(yaml.safe_load(_CRDS.read_text()))


def check_schema(value: Any, schema: dict[str, Any], where: str) -> None:
    """``value`` against one node of crds.yaml (a small, strict subset of OpenAPI v3)."""
    if "$ref" in schema:
        schema = _schemas()["definitions"][schema["$ref"]]
    if "k8s" in schema:
        check_sdk(value, schema["k8s"], where)
        return
    kind = schema.get("type", "object")
    if kind == "object":
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        if "additionalProperties" in schema:
            for key, item in value.items():
                check_schema(item, schema["additionalProperties"], f"{where}.{key}")
            return
        properties = dict(schema.get("properties", {}))
        inlined = {key: kind for model in schema.get("inline", []) for key, kind in _fields(model).items()}
        for key, item in value.items():
            if key in properties:
                check_schema(item, properties[key], f"{where}.{key}")
            elif key in inlined:
                check_sdk(item, inlined[key], f"{where}.{key}")
            else:
                raise _unknown(key, [*properties, *inlined], where)
        for key in schema.get("required", []):
            if key not in value:
                raise ManifestError(f"{where}: missing required field {key!r}")
    elif kind == "array":
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check_schema(item, schema["items"], f"{where}[{i}]")
    else:
        _check_primitive(value, {"string": "str", "integer": "int", "boolean": "bool", "number": "float"}[kind], where)
        if "enum" in schema and value not in schema["enum"]:
            raise ManifestError(f"{where}: {value!r} is not one of {schema['enum']}")
        if "minimum" in schema and value < schema["minimum"]:
            raise ManifestError(f"{where}: {value!r} is below the minimum {schema['minimum']}")


def _sdk_class(api_version: str, kind: str) -> str | None:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment`` when the SDK has that model (built-in kinds only)."""
    version = api_version.rsplit("/", 1)[-1]
    name = version[:1].upper() + version[1:] + kind
    return name if hasattr(_models(), name) and "." not in api_version.split("/")[0] else None


def validate_object(obj: dict[str, Any], source: str = "<manifest>", *, partial: bool = False) -> Any:
    """Validate one object strictly; returns the SDK model for built-in kinds, the dict for custom resources.

    ``partial``: a kustomize patch, whose fields are checked but whose required fields may be left out.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    name = (obj.get("metadata") or {}).get("name", "?")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise ManifestError(f"{source}: an object without apiVersion and kind")
    where = f"{source}: {kind}/{name}"
    model = _sdk_class(api_version, kind)
    if model is not None:
        check_sdk(obj, model, where)
        if partial:
            return obj
        from kubernetes.client import ApiClient

        try:  # the SDK's setters refuse missing required fields (a container without a name, ...)
            return ApiClient()._ApiClient__deserialize(obj, model)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None
    crd = _schemas()["resources"].get(f"{api_version}/{kind}")
    if crd is None:
        raise ManifestError(f"{where}: no schema for {api_version} {kind} (add it to {_CRDS.name})")
    check_schema(obj, crd, where)  # (a patch of a custom resource is not used in deploy/)
    return obj
