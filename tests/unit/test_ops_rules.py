"""Prometheus alert rules: promtool checks them, each alert has its own promtool unit test, and every metric a
rule reads is one the code exports (or one named as pending, with the rule documenting what it expects)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.ops_support import (
    DEPLOY,
    PENDING_METRICS,
    PROMETHEUS_BUILTINS,
    exported_metrics,
    promql_metric_names,
    run_promtool,
)

pytestmark = pytest.mark.unit
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra should list pyyaml)")

RULES = DEPLOY / "prometheus" / "rules.yml"
TESTS = DEPLOY / "prometheus" / "tests"
# The SLOs of the reference plan and the design, each with its alert.
REQUIRED_ALERTS = {
    "SurgeSignalLatencyP99High", "SurgeSequenceGapRatioHigh", "SurgeMessageLossHigh", "SurgeExchangeLagHigh",
    "SurgeDeadLetterRateHigh", "SurgeConsumerLagHigh", "SurgeCalibrationDrift", "SurgeCostModelMapeHigh",
    "SurgeRiskShutdown", "SurgeStageDown", "SurgeStageAllReplicasDown",
}


def rules() -> list[dict[str, Any]]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_slo_has_an_alert_with_severity_and_summary() -> None:
    assert alert_names() >= REQUIRED_ALERTS
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_every_alert_has_a_unit_test_file_that_passes() -> None:
    files = sorted(TESTS.glob("*.test.yml"))
    tested: set[str] = set()
    for path in files:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../rules.yml"], path.name
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):  # a test that only expects silence proves nothing on its own
                    tested.add(check["alertname"])
    assert alert_names() <= tested, f"alerts without a firing test: {sorted(alert_names() - tested)}"
    result = run_promtool("test", "rules", *(p.name for p in files), cwd=TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_read_only_exported_metrics() -> None:
    known = exported_metrics() | PROMETHEUS_BUILTINS
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        unknown = promql_metric_names(rule["expr"]) - known - recorded - PENDING_METRICS
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: not exported: {sorted(unknown)}"


def test_pending_metrics_are_still_pending() -> None:
    """Once the code exports one, drop it from PENDING_METRICS (and its 'EXPECTS' comment in rules.yml)."""
    assert not PENDING_METRICS & exported_metrics()
    text = RULES.read_text()
    for name in PENDING_METRICS:
        assert f"EXPECTS {name}" in text


def test_the_metric_name_reader_sees_the_core_metrics() -> None:
    names = exported_metrics()
    for name in ("surge_events_in_total", "surge_e2e_latency_seconds_bucket", "surge_event_time_lag_seconds",
                 "surge_ingest_trades_lost_total", "surge_risk_level", "surge_decision_risk_level",
                 "surge_outcomes_events_total"):
        assert name in names
    assert promql_metric_names('sum by (le) (rate(a_b_bucket{x="y"}[5m])) / on(z) c > 0.2 and d') == {
        "a_b_bucket", "c", "d"}

