"""Unit tests of the features stage wiring: the spec, backpressure settings and the tier metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from schemas import common_pb2, features_pb2
from streams.features.core import FeatureState, process
from streams.features.stage import TierMetrics, new_state, register_metrics, spec, warm_up_kernel
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, StageContext
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from tests.unit.test_features_oracle import walk

pytestmark = pytest.mark.unit


def test_spec_reads_the_backpressure_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_FEATURES_BACKPRESSURE_LAG_S", "2.5")
    monkeypatch.setenv("SURGE_FEATURES_RESUME_LAG_S", "0.5")
    settings = Settings()
    s = spec(settings)
    assert (s.name, s.input_topics, s.process) == ("features", (Topic.TICKS,), process)
    context = StageContext.standalone("features", settings)
    state = s.make_state(context)
    assert isinstance(state, FeatureState)
    assert (state.backpressure.drop_lag_s, state.backpressure.resume_lag_s) == (2.5, 0.5)
    # The tier metrics are on the registry the context carries, i.e. on the stage's own /metrics.
    assert context.registry.get_sample_value("surge_features_tiers_dropped", {"stage": "features"}) == 0.0
    assert warm_up_kernel() < 30.0  # compiled once, then loaded from numba's cache


def test_tier_metrics_are_exported() -> None:
    state = new_state(Settings())
    assert state.backpressure.drop_lag_s == 5.0  # the default
    registry = CollectorRegistry()
    register_metrics(registry, state)
    batches = list(walk(300, 20_000, seed=1))
    clock = ManualClock(batches[-1].ts.exchange_us + 8_000_000)  # 8 s behind: above the 5 s default
    out = process([InRecord(value=b, key=b.symbol) for b in batches], state, clock)
    vec = out.emits[0].value
    assert isinstance(vec, features_pb2.FeatureVector) and common_pb2.TIERS_DROPPED in vec.quality_flags
    text = generate_latest(registry).decode()
    assert 'surge_features_tiers_dropped{stage="features"} 1.0' in text
    assert 'surge_features_tier_drops_total{stage="features"} 1.0' in text
    assert 'surge_features_vectors_tiers_dropped_total{stage="features"} 300.0' in text
    assert 'surge_features_lag_seconds{stage="features"} 8.0' in text
    assert isinstance(TierMetrics(state).state, FeatureState)
