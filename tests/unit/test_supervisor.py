"""The supervisor's embedded-broker recycle policy: when the pipeline has fallen behind for long enough."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from services.stack.supervisor import LAG_METRIC, LagWatch, RecyclePolicy
from streams.runtime.observability import StageMetrics
from streams.runtime.settings import Settings

pytestmark = pytest.mark.unit

POLICY = RecyclePolicy(lag_s=5.0, sustained_s=10.0, grace_s=90.0)


def test_recycles_only_after_the_lag_lasted_the_sustained_time() -> None:
    watch = LagWatch(POLICY, stages_started_at=0.0)
    assert not watch.observe(100.0, 6.0)   # above the threshold: the clock starts
    assert not watch.observe(109.9, 30.0)  # 9.9 s above
    assert watch.observe(110.0, 7.0)       # 10 s above


def test_a_dip_under_the_threshold_or_a_missing_sample_resets_the_clock() -> None:
    watch = LagWatch(POLICY, stages_started_at=0.0)
    assert not watch.observe(100.0, 6.0)
    assert not watch.observe(105.0, 5.0)   # not above 5.0
    assert not watch.observe(106.0, 6.0)
    assert not watch.observe(115.0, None)  # the features stage did not answer
    assert not watch.observe(116.0, 6.0)
    assert not watch.observe(125.9, 6.0)
    assert watch.observe(126.0, 6.0)


def test_no_recycle_within_the_grace_after_a_restart() -> None:
    """A cold numba compile makes the first minute lag; that must not look like a slow broker."""
    watch = LagWatch(POLICY, stages_started_at=0.0)
    for t in range(0, 90):
        assert not watch.observe(float(t), 60.0)
    assert not watch.observe(90.0, 60.0)
    assert watch.observe(100.0, 60.0)
    watch.restarted(100.0)
    assert not watch.observe(150.0, 60.0) and not watch.observe(189.0, 60.0)


def test_policy_applies_to_the_embedded_broker_and_live_sources_only(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = Settings()
    assert RecyclePolicy.for_run(embedded, "sim") == RecyclePolicy(5.0, 10.0, 90.0, 120.0)
    assert RecyclePolicy.for_run(embedded, "live") is not None
    assert RecyclePolicy.for_run(embedded, "replay:/captures") is None  # old exchange times: lag means nothing
    assert RecyclePolicy.for_run(Settings(broker_recycle_lag_s=0), "sim") == RecyclePolicy(
        float("inf"), 10.0, 90.0, 120.0)  # the scheduled recycle alone
    assert RecyclePolicy.for_run(Settings(broker_recycle_lag_s=0, broker_recycle_every_s=0), "sim") is None
    monkeypatch.setenv("SURGE_BROKERS", "redpanda:9092")
    assert RecyclePolicy.for_run(Settings(), "sim") is None


def test_lag_is_read_from_the_features_stage_metrics_text() -> None:
    metrics = StageMetrics.create("features")
    metrics.event_time_lag_seconds.labels("features").set(12.25)
    match = LAG_METRIC.search(generate_latest(metrics.registry).decode())
    assert match is not None and float(match.group(1)) == 12.25


def test_a_scheduled_recycle_is_due_once_the_broker_has_served_its_time() -> None:
    watch = LagWatch(RecyclePolicy(float("inf"), 10.0, 90.0, every_s=120.0), stages_started_at=10.0)
    assert not watch.due(129.9) and watch.due(130.0)
    assert not watch.observe(200.0, 1e9)  # an infinite lag threshold never fires
    watch.restarted(140.0)
    assert not watch.due(259.0) and watch.due(260.0)
    assert not LagWatch(RecyclePolicy(5.0, 10.0, 90.0), stages_started_at=0.0).due(1e9)  # every_s 0: never
