"""deploy/kserve checked offline, field by field, against KServe's and Kubernetes' SDK models."""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from server.settings import add_arguments
from tests.helpers import ROOT

KSERVE = ROOT / "deploy" / "kserve"
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "bytes": str}


def model_class(name: str) -> type:
    """An SDK model by its OpenAPI name: KServe's own, or the Kubernetes client's."""
    import kserve.models
    import kubernetes.client.models

    for mod in (kserve.models, kubernetes.client.models):
        if hasattr(mod, name):
            return getattr(mod, name)
    raise LookupError(name)


def check(value: Any, type_name: str, path: str) -> list[str]:
    """Every field name and scalar type of `value` against the model `type_name`: what the
    generated SDK models (mirrors of the CRDs' OpenAPI schemas) allow. Returns the faults."""
    # KServe's models spell containers list[X] / dict(str, X); Kubernetes' List[X] / Dict[str, X]
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [f for i, v in enumerate(value) for f in check(v, m[1], f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\]", type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        inner = m[2] or m[4]
        return [f for k, v in value.items() for f in check(v, inner, f"{path}.{k}")]
    if type_name == "object":  # int-or-string and free-form fields
        return []
    if type_name in SCALARS:
        ok = isinstance(value, SCALARS[type_name]) and not (
            type_name != "bool" and isinstance(value, bool)
        )
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    cls = model_class(type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    by_json = {j: attr for attr, j in cls.attribute_map.items()}
    faults = []
    for key, v in value.items():
        if key not in by_json:
            faults.append(f"{path}.{key}: not a field of {type_name}")
        else:
            faults += check(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
    return faults


def load(name: str) -> dict:
    return yaml.safe_load((KSERVE / name).read_text())


KINDS = {
    "clusterservingruntime.yaml": ("serving.kserve.io/v1alpha1", "V1alpha1ClusterServingRuntime"),
    "inferenceservice.yaml": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
    "secret.yaml": ("v1", "V1Secret"),
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_field_is_known_to_the_sdk(name):
    doc = load(name)
    api, model = KINDS[name]
    assert doc["apiVersion"] == api and model.endswith(doc["kind"])
    assert check(doc, model, doc["kind"]) == []


def test_the_checker_catches_misspelt_and_mistyped_fields():
    doc = load("clusterservingruntime.yaml")
    bad = copy.deepcopy(doc)
    c = bad["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    c["ports"][0]["containerPort"] = "8080"
    bad["spec"]["protocolVersion"] = ["v2"]
    faults = check(bad, "V1alpha1ClusterServingRuntime", "ClusterServingRuntime")
    assert len(faults) == 3, faults
    assert any("readinesProbe" in f for f in faults)
    assert any("containerPort: expected int" in f for f in faults)


def test_runtime_serves_oip_v2_on_http_and_grpc_with_the_token_from_the_secret():
    rt, isvc, secret = (load(n) for n in sorted(KINDS))
    spec = rt["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"  # the name KServe merges the predictor into
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = c["args"]
    assert ports == {"http1": 8080, "h2c": 8081}
    assert (
        args[args.index("--port") + 1] == "8080" and args[args.index("--grpc-port") + 1] == "8081"
    )
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == 8080
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    (token,) = [e for e in c["env"] if e["name"] == "LCS_OPERATOR_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # the InferenceService picks this runtime and one of its formats
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"] and model["protocolVersion"] == "v2"
    formats = {(f["name"], f["version"]) for f in spec["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    # the flags the runtime passes are ones `lcs serve` accepts
    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = {a for action in p._actions for a in action.option_strings}
    assert {a for a in args if a.startswith("--")} <= flags


def test_kustomize_renders_all_three():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl missing: run `make system-deps`")
    out = subprocess.run(
        [kubectl, "kustomize", str(KSERVE)], capture_output=True, text=True, check=True
    ).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds == ["ClusterServingRuntime", "InferenceService", "Secret"]
