"""deploy/k8s validates offline: every object strictly against the kubernetes SDK models or the CRD schemas.

Nothing here reaches a cluster: the manifests are built with ``kubectl kustomize`` where kubectl is installed
(it needs no cluster for that) and read file by file everywhere. A mistyped field must fail, not be dropped.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import ManifestError, load_documents, validate_object

pytest.importorskip("kubernetes", reason="the kubernetes SDK is a test dependency (pip install -e '.[dev]')")

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
OVERLAYS = ("local", "production", "kserve", "seldon")


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _load(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text())


def test_every_file_a_kustomization_names_exists_and_validates() -> None:
    seen = 0
    for kustomization in _kustomizations():
        spec = yaml.safe_load(kustomization.read_text())
        assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and spec["kind"] == "Kustomization"
        for entry in spec.get("resources", []):
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization}: resource {entry} does not exist"
            if target.is_file():
                for obj in _load(target):
                    validate_object(obj, str(target.relative_to(K8S)))
                    seen += 1
        for patch in spec.get("patches", []):
            target = kustomization.parent / patch["path"]
            assert target.is_file(), f"{kustomization}: patch {patch['path']} does not exist"
            for obj in _load(target):
                validate_object(obj, str(target.relative_to(K8S)), partial=True)
                seen += 1
    assert seen >= 8


def _build(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the overlays are validated file by file only")
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return load_documents(done.stdout)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_builds_into_valid_objects(overlay: str) -> None:
    objects = _build(overlay)
    kinds = sorted(obj["kind"] for obj in objects)
    expected = {
        "local": ["Deployment", "Service"],
        "production": ["Deployment", "Service"],
        "kserve": ["InferenceService", "ServingRuntime"],
        "seldon": ["Model", "Server"],
    }[overlay]
    assert kinds == expected
    built = [validate_object(obj, f"overlays/{overlay}") for obj in objects]
    if overlay in ("local", "production"):
        deployment = next(b for b in built if type(b).__name__ == "V1Deployment")
        assert deployment.spec.replicas == {"local": 1, "production": 3}[overlay]
        container = deployment.spec.template.spec.containers[0]
        assert container.readiness_probe.http_get.path == "/v2/health/ready"
        assert deployment.metadata.namespace == {"local": "radflow-dev", "production": "radflow"}[overlay]
    if overlay == "kserve":
        service = next(o for o in objects if o["kind"] == "InferenceService")
        runtime = next(o for o in objects if o["kind"] == "ServingRuntime")
        assert service["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
        assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
        assert runtime["spec"]["containers"][0]["image"].startswith("radflow-serve")


def _deployment() -> dict[str, Any]:
    return _load(K8S / "base" / "deployment.yaml")[0]


def test_the_sdks_own_deserializer_drops_unknown_fields_which_is_why_the_loader_walks_them() -> None:
    from kubernetes.client import ApiClient

    typo = _deployment()
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    loose = ApiClient()._ApiClient__deserialize(typo, "V1Deployment")  # type: ignore[attr-defined]
    assert loose.spec.replicas is None  # silently gone
    with pytest.raises(ManifestError, match=r"Deployment/radflow-serve\.spec: unknown field 'replica' .*'replicas'"):
        validate_object(typo, "base/deployment.yaml")


def test_mistyped_and_wrongly_typed_fields_fail_with_their_path() -> None:
    deep = _deployment()
    container = deep["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["pth"] = container["readinessProbe"]["httpGet"].pop("path")
    with pytest.raises(ManifestError, match=r"containers\[0\]\.readinessProbe\.httpGet: unknown field 'pth'"):
        validate_object(deep)
    wrong_type = _deployment()
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(ManifestError, match=r"spec\.replicas: expected int"):
        validate_object(wrong_type)
    nameless = _deployment()
    del nameless["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ManifestError, match="name"):
        validate_object(nameless)


def test_custom_resources_refuse_mistyped_fields_and_bad_values() -> None:
    service = _load(K8S / "overlays" / "kserve" / "inferenceservice.yaml")[0]
    typo = copy.deepcopy(service)
    typo["spec"]["predictor"]["modle"] = typo["spec"]["predictor"].pop("model")
    with pytest.raises(ManifestError, match=r"spec\.predictor: unknown field 'modle' \(did you mean 'model'\?\)"):
        validate_object(typo)
    protocol = copy.deepcopy(service)
    protocol["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    with pytest.raises(ManifestError, match=r"protocolVersion: 'v3' is not one of"):
        validate_object(protocol)
    inlined = copy.deepcopy(service)  # the model's inlined container fields are checked by the SDK models too
    inlined["spec"]["predictor"]["model"]["env"][0]["valueFrom"]["secretKeyRef"]["nam"] = "x"
    with pytest.raises(ManifestError, match=r"secretKeyRef: unknown field 'nam'"):
        validate_object(inlined)
    model = _load(K8S / "overlays" / "seldon" / "model.yaml")[0]
    model["spec"]["storageURI"] = model["spec"].pop("storageUri")
    with pytest.raises(ManifestError, match=r"unknown field 'storageURI'"):
        validate_object(model)
    with pytest.raises(ManifestError, match="no schema"):
        validate_object({"apiVersion": "example.org/v1", "kind": "Thing", "metadata": {"name": "x"}})
