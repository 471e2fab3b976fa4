"""Deployment files checked offline: kustomize renders, Kubernetes schemas, promtool, dashboard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30"  # the Kubernetes version the manifests are validated against


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing: run `make system-deps`"
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("overlay", ["base", "overlays/edge"])
def test_renders_and_validates_strictly(overlay, tmp_path):
    docs = render(overlay)
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    r = subprocess.run(
        [str(validate), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    passed = r.stdout.count("passed for resource")
    assert passed == len(docs) - 1  # every kind but the ServiceMonitor CRD, checked below


def test_deployment_probes_security_and_drain():
    docs = render("base")
    dep = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    drain = float(by_kind(docs, "ConfigMap")["data"]["LCS_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain
    # The selector the Service, Deployment and PDB share actually matches the pods.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service",):
        assert by_kind(docs, kind)["spec"]["selector"].items() <= labels.items()
    assert (
        by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items()
        <= labels.items()
    )
    # The ServiceMonitor (a CRD, no schema in kubernetes-validate) selects the Service's port.
    sm, svc = by_kind(docs, "ServiceMonitor"), by_kind(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_edge_overlay_is_small():
    docs = render("overlays/edge")
    dep = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["template"]["spec"]["nodeSelector"]
    assert dep["spec"]["template"]["spec"]["tolerations"]
    limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "512Mi"
    assert by_kind(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 1


def test_prometheus_config_and_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run `make system-deps`"
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],  # the alerts' unit tests, both protocols
    ):
        r = subprocess.run(
            [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "LcsNotReady",
        "LcsHighErrorRate",
        "LcsPinnedAtMaximumCompression",
        "LcsSensorErrors",
    } <= names


def test_dashboard_queries_name_metrics_the_daemon_exports():
    from server.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "lcs.json").read_text())
    import re

    used = {
        n
        for p in dash["panels"]
        for t in p["targets"]
        for n in re.findall(r"lcs_[a-z0-9_]+", t["expr"])
    }
    base = {re.sub(r"_(bucket|total|count|sum)$", "", n) for n in used}
    assert base <= exported | {n + "_total" for n in exported}, base - exported
    assert {"lcs_gamma", "lcs_queue_depth"} <= used


def exported_labels() -> dict[str, set[str]]:
    """Every series name the daemon exports → its label names (as Prometheus sees them)."""
    from prometheus_client.metrics import MetricWrapperBase

    from server.metrics import Metrics

    out: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        for m in metric.values() if isinstance(metric, dict) else [metric]:
            if not isinstance(m, MetricWrapperBase):
                continue
            labels = set(m._labelnames)
            for suffix in {"counter": ["_total"], "gauge": [""]}.get(
                m._type, ["_bucket", "_count", "_sum"]
            ):
                out[m._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "lcs.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]] + [
        r["expr"] for g in rules["groups"] for r in g["rules"]
    ]


def test_dashboard_and_alerts_use_only_labels_the_daemon_exports():
    """A selector or `by (…)` on a label the series does not have matches nothing, silently:
    e.g. the request series' protocol label must exist for the per-protocol panels."""
    import re

    exported = exported_labels()
    scrape = {"instance", "job"}  # added by Prometheus
    seen = set()
    for expr in exprs():
        names = set(re.findall(r"lcs_[a-z0-9_]+", expr)) & set(exported)
        have = set().union(*(exported[n] for n in names)) | scrape
        for name, body in re.findall(r"(lcs_[a-z0-9_]+)\{([^}]*)\}", expr):
            used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", body))
            assert used <= exported[name] | scrape, (expr, used - exported[name])
            seen |= {(name, label) for label in used}
        for by in re.findall(r"by \(([^)]*)\)", expr):
            used = {label.strip() for label in by.split(",")}
            assert used <= have, (expr, used - have)
            seen |= {(n, label) for n in names for label in used & exported[n]}
    assert ("lcs_requests_total", "protocol") in seen
    assert ("lcs_request_duration_seconds_bucket", "protocol") in seen


def test_compose_wires_the_three_services():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"lcs", "prometheus", "grafana"}
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["lcs:8000"]


def test_dockerfile_promises():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["lcs", "serve", "--host", "0.0.0.0"]' in text
    assert text.count("FROM ") >= 3  # multi-stage
