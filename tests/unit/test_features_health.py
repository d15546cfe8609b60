"""Feature health metrics per tier (issue 13 item 5): kernel time, NaN ratio and window-insufficient rate, counted
once per kernel call through the features core's ``process`` and exported on the stage's registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.features import definitions as d
from streams.features.core import Backpressure, FeatureState
from streams.features.health import TIER_MASK, FeatureHealth
from streams.features.stage import register_metrics
from streams.runtime.clock import ManualClock
from tests.unit import test_features_core as fc

pytestmark = pytest.mark.unit


def feed(state: FeatureState, n: int, start: int = 0, lag_us: int = 5_000) -> list[float]:
    """n one-batch calls, 20 ms apart; returns the fraction of NaN among each vector's fast features."""
    fast = TIER_MASK[:, d.TIER_FAST] > 0
    out = []
    for i in range(start, start + n):
        t = fc.T0 + i * fc.STEP
        vec = fc.vectors(fc.run([fc.tick_batch(i, t, trades=[(100.25, 0.1, i % 2 == 0)])], state,
                                ManualClock(t + lag_us)))[0]
        out.append(float(np.isnan(np.asarray(vec.values)[fast]).mean()))
    return out


def test_counts_follow_the_vectors_and_the_kernel_calls() -> None:
    state = FeatureState()
    feed(state, 150)  # 3 s: the fine windows fill, the minute ones do not
    h = state.health.snapshot()
    assert h.vectors == 150 and sum(h.kernel_calls) == 150
    assert h.kernel_calls[d.TIER_SLOW] >= 1 and h.kernel_calls[d.TIER_FAST] > 100  # slow evaluated on the 1st call
    assert all(s > 0.0 for s, c in zip(h.kernel_seconds, h.kernel_calls, strict=True) if c)
    assert h.tier_vectors == [150.0, 150.0, 150.0]
    for k in range(3):
        assert 0.0 < h.tier_values[k] <= 150 * TIER_MASK[:, k].sum()
        assert h.tier_nan[k] <= h.tier_values[k]
        assert h.tier_insufficient[k] <= 150
        assert 0.0 <= h.tier_nan_ratio[k] <= 1.0
    # Three seconds of data: the slow (hour) windows are all insufficient, the flag is on every vector.
    assert h.tier_insufficient[d.TIER_SLOW] == 150 and h.vectors_insufficient == 150


def test_nan_counts_are_exact_for_one_call() -> None:
    values = np.full((2, d.N_FEATURES), 1.0)
    fast = np.flatnonzero(TIER_MASK[:, d.TIER_FAST])
    values[0, fast[:3]] = np.nan
    values[:, d.I_QUALITY] = np.nan  # not counted
    app = np.ones(d.N_FEATURES, bool)
    app[fast[3]] = False
    values[1, fast[3]] = np.nan  # not applicable: not counted
    h = FeatureHealth()
    h.observe(values, np.array([d.STATUS_INSUFFICIENT, 0]), app, True, 0.002, d.TIER_MEDIUM)
    n_fast = len(fast) - 1  # one not applicable
    assert h.tier_values[d.TIER_FAST] == 2 * n_fast and h.tier_nan[d.TIER_FAST] == 3
    assert h.tier_insufficient == [1.0, 0.0, 0.0]
    assert h.tier_nan_ratio[d.TIER_FAST] == pytest.approx(3 / (2 * n_fast))
    assert h.kernel_seconds == [0.0, 0.002, 0.0] and h.kernel_calls == [0.0, 1.0, 0.0]
    assert h.vectors == 2 and h.vectors_insufficient == 1


def test_dropped_tiers_are_not_counted_as_nan() -> None:
    state = FeatureState(backpressure=Backpressure(drop_lag_s=1.0, resume_lag_s=0.5))
    feed(state, 10, lag_us=3_000_000)  # 3 s behind: medium and slow dropped on every vector
    h = state.health.snapshot()
    assert h.tier_vectors == [10.0, 0.0, 0.0] and h.tier_nan[1] == h.tier_nan[2] == 0.0
    assert math.isnan(h.tier_nan_ratio[d.TIER_MEDIUM])


def test_metrics_on_the_stage_registry() -> None:
    state = FeatureState()
    feed(state, 60)
    registry = CollectorRegistry()
    register_metrics(registry, state)
    text = generate_latest(registry).decode()
    for tier in d.TIER_NAMES:
        assert f'surge_features_tier_nan_ratio{{stage="features",tier="{tier}"}}' in text
        assert f'surge_features_kernel_seconds_count{{stage="features",tier="{tier}"}}' in text
        assert f'surge_features_tier_insufficient_total{{stage="features",tier="{tier}"}}' in text
    assert 'surge_features_vectors_total{stage="features"} 60.0' in text
    assert registry.get_sample_value("surge_features_window_insufficient_total", {"stage": "features"}) == 60.0
    assert registry.get_sample_value("surge_features_tier_vectors_total",
                                     {"stage": "features", "tier": "fast"}) == 60.0


def test_batch_drivers_do_not_count() -> None:
    from streams.features.core import compute_frame

    state = FeatureState()
    compute_frame([fc.tick_batch(i, fc.T0 + i * fc.STEP) for i in range(5)], state)
    assert state.health.snapshot().vectors == 0
