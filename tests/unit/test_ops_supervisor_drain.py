"""The drain before a planned broker recycle: done when the consumers' consumed count stands still long enough."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from services.stack.supervisor import CONSUMED_METRIC, DrainWatch, worst_lag
from streams.runtime.observability import StageMetrics

pytestmark = pytest.mark.unit


def test_drained_only_after_the_count_stood_still_for_the_quiet_time() -> None:
    watch = DrainWatch(started_at=0.0, quiet_s=2.0, timeout_s=60.0)
    assert watch.observe(0.0, 100.0) == "waiting"
    assert watch.observe(1.0, 150.0) == "waiting"   # still consuming the backlog
    assert watch.observe(2.9, 150.0) == "waiting"   # 1.9 s still
    assert watch.observe(3.0, 150.0) == "drained"


def test_an_unreadable_stage_restarts_the_quiet_clock() -> None:
    watch = DrainWatch(started_at=0.0, quiet_s=2.0, timeout_s=60.0)
    watch.observe(0.0, 10.0)
    assert watch.observe(1.5, None) == "waiting"
    assert watch.observe(3.0, 10.0) == "waiting"    # the clock restarted at 1.5 s, then again on the change
    assert watch.observe(5.0, 10.0) == "drained"


def test_a_drain_that_never_settles_times_out() -> None:
    watch = DrainWatch(started_at=0.0, quiet_s=2.0, timeout_s=10.0)
    for t in range(10):
        assert watch.observe(float(t), float(t)) == "waiting"
    assert watch.observe(10.0, 10.0) == "timeout"


def test_the_consumed_count_is_read_from_a_stage_exposition() -> None:
    metrics = StageMetrics.create("features")
    metrics.events_in.labels("features").inc(42)
    text = generate_latest(metrics.registry).decode()
    assert [float(v) for v in CONSUMED_METRIC.findall(text)] == [42.0]


def test_the_recycle_watches_the_worst_lag_of_the_signal_path() -> None:
    def exposition(stage: str, lag: float) -> str:
        metrics = StageMetrics.create(stage)
        metrics.event_time_lag_seconds.labels(stage).set(lag)
        return generate_latest(metrics.registry).decode()

    texts = {"features": exposition("features", 1.5), "infer": exposition("infer", 17.0),
             "decision": exposition("decision", 9.0)}
    assert worst_lag(texts) == ("infer", 17.0)
    assert worst_lag({"features": exposition("features", 0.25)}) == ("features", 0.25)
    assert worst_lag({"sink": exposition("sink", 99.0)}) is None  # off the signal path
    assert worst_lag({}) is None
