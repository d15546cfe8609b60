"""Kubernetes manifests: every overlay renders (kubectl kustomize), the core kinds validate against the
Kubernetes schemas (kubernetes-validate, strict), and each stage has what an operator relies on."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from typing import Any

import pytest

from streams.runtime.settings import ENV_PREFIX, STAGES, Settings
from tests.unit.ops_support import REPO_ROOT

pytestmark = pytest.mark.unit
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra should list pyyaml)")

K8S = REPO_ROOT / "k8s"
OVERLAYS = ("dev", "prod")
# The stages KEDA scales on consumer lag, with the topics their consumer group reads. ingest has no consumer
# group and outcomes keeps one paper book, so both run as single replicas.
SCALED = {"features": {"ticks.v1"}, "infer": {"features.v1"}, "decision": {"predictions.v1"},
          "sink": {"signals.v1", "outcomes.v1", "dlq.v1"}}
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/", "external-secrets.io/")
Doc = dict[str, Any]


def setting_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    if shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", str(K8S / "overlays" / overlay)]
    elif shutil.which("kustomize"):
        argv = ["kustomize", "build", str(K8S / "overlays" / overlay)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed: the overlays cannot be rendered")
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def find(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_validate_against_the_kubernetes_schemas(overlay: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = render(overlay)
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    assert len(core) >= 20
    for doc in core:
        kv.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_stage_has_probes_resources_a_budget_and_a_metrics_service(overlay: str) -> None:
    docs = render(overlay)
    settings = Settings()
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1, namespaces
    for stage in STAGES:
        dep = find(docs, "Deployment", f"surge-{stage}")
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["stage", stage]
        port = settings.stage_port(stage)
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
        assert refs == {"configMapRef": "surge-config", "secretRef": "surge-secrets"}
        selector = dep["spec"]["selector"]["matchLabels"]
        assert find(docs, "PodDisruptionBudget", f"surge-{stage}")["spec"]["selector"]["matchLabels"] == selector
        svc = find(docs, "Service", f"surge-{stage}")
        assert svc["spec"]["selector"] == selector and svc["spec"]["ports"][0]["port"] == port
        if stage not in SCALED:
            assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_consumer_on_its_groups_lag(overlay: str) -> None:
    docs = render(overlay)
    config = find(docs, "ConfigMap", next(d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"))
    partitions = int(config["data"]["SURGE_PARTITIONS"])
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert set(scaled) == {f"surge-{s}" for s in SCALED}
    for stage, topics in SCALED.items():
        spec = scaled[f"surge-{stage}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"surge-{stage}"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions  # idle consumers beyond
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {f"surge-{stage}"}
        assert {t["metadata"]["topic"] for t in triggers} == topics
        assert all(int(t["metadata"]["lagThreshold"]) > 0 for t in triggers)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_service_ingress_and_service_monitor(overlay: str) -> None:
    docs = render(overlay)
    gateway = find(docs, "Deployment", "surge-gateway")
    selector = gateway["spec"]["selector"]["matchLabels"]
    svc = find(docs, "Service", "surge-gateway")
    assert svc["spec"]["selector"] == selector
    ingress = find(docs, "Ingress", "surge-gateway")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "surge-gateway" and backend["port"]["name"] == svc["spec"]["ports"][0]["name"]
    monitor = find(docs, "ServiceMonitor", "surge-stages")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    monitored = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                 and wanted.items() <= d["metadata"].get("labels", {}).items()}
    assert monitored == {f"surge-{s}" for s in (*STAGES, "jobs", "notify")}
    assert {"targetLabel": "job", "replacement": "surge-stages"} in monitor["spec"]["endpoints"][0]["relabelings"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret_keys_are_real_settings_and_secrets_stay_secret(overlay: str) -> None:
    docs = render(overlay)
    names = setting_names()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert set(doc["data"]) <= names, set(doc["data"]) - names
            assert "SURGE_WAREHOUSE_TOKEN" not in doc["data"] and "SURGE_CLICKHOUSE_URL" not in doc["data"]
        if doc["kind"] == "Secret":
            assert set(doc.get("data", {}) | doc.get("stringData", {})) <= names
        if doc["kind"] == "ExternalSecret":
            assert {d["secretKey"] for d in doc["spec"]["data"]} <= names
    secrets = [d for d in docs if d["kind"] in ("Secret", "ExternalSecret")]
    assert len(secrets) == 1
    if overlay == "prod":  # no placeholder secret reaches production
        assert secrets[0]["kind"] == "ExternalSecret"
