"""Triple-barrier labels, cooldown, class weights and purged CV: exact cases plus Hypothesis invariants."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.training.cv import purged_kfold
from services.training.labels import (
    LABEL_DOWN,
    LABEL_INCOMPLETE,
    LABEL_TIMEOUT,
    LABEL_UP,
    BarrierConfig,
    balanced_weights,
    cooldown_select,
    outcome,
    triple_barrier,
)

pytestmark = pytest.mark.unit


def bars(closes: list[float], highs: list[float], lows: list[float]) -> tuple[np.ndarray, ...]:
    return np.array(closes, float), np.array(highs, float), np.array(lows, float)


def test_up_down_both_and_timeout_cases() -> None:
    cfg = BarrierConfig(theta_up=0.01, theta_dn=0.01, horizon=3)
    # bar0 entry 100: bar2 high 101 touches upper (101) -> UP at 2.
    # bar1 entry 100: bar2 touches upper 101 -> UP; bar3 entry 100: bar4 high 101.5 and low 98.9 -> both -> DOWN.
    close, high, low = bars([100, 100, 100, 100, 100, 100, 100, 100],
                            [100, 100.5, 101, 100, 101.5, 100.2, 100.2, 100.2],
                            [100, 99.5, 99.8, 99.5, 98.9, 99.8, 99.8, 99.8])
    out = triple_barrier(close, high, low, cfg)
    assert out.label.tolist()[:5] == [LABEL_UP, LABEL_UP, LABEL_DOWN, LABEL_DOWN, LABEL_TIMEOUT]
    assert out.touch_index.tolist()[:5] == [2, 2, 4, 4, 7]
    assert out.touch_price[0] == pytest.approx(101.0)
    assert out.touch_price[3] == pytest.approx(99.0)   # both touched: the lower barrier price
    assert out.touch_price[4] == pytest.approx(100.0)  # timeout: close at the vertical barrier
    assert out.label.tolist()[5:] == [LABEL_INCOMPLETE] * 3
    assert out.mfe[0] == pytest.approx(0.01)
    assert out.time_to_peak[0] == 2


def test_outcome_of_a_timeout_is_not_up_or_the_sign_of_the_move() -> None:
    label = np.array([LABEL_UP, LABEL_DOWN, LABEL_TIMEOUT, LABEL_TIMEOUT, LABEL_TIMEOUT, LABEL_INCOMPLETE])
    entry = np.full(6, 100.0)
    touch = np.array([101.0, 99.0, 100.5, 99.5, 100.0, np.nan])
    np.testing.assert_array_equal(outcome(label, entry, touch), [1.0, 0.0, 0.0, 0.0, 0.0, np.nan])
    np.testing.assert_array_equal(outcome(label, entry, touch, "sign"), [1.0, 0.0, 1.0, 0.0, np.nan, np.nan])
    with pytest.raises(ValueError, match="timeout"):
        outcome(label, entry, touch, "up")  # type: ignore[arg-type]


def test_default_barriers_match_the_issue() -> None:
    cfg = BarrierConfig()
    assert (cfg.theta_up, cfg.theta_dn, cfg.horizon) == (0.006, 0.004, 5)
    with pytest.raises(ValueError):
        BarrierConfig(theta_up=0)
    with pytest.raises(ValueError):
        triple_barrier(np.array([1.0, -1.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]), cfg)


price_paths = st.lists(st.floats(min_value=-0.01, max_value=0.01), min_size=10, max_size=120)


@settings(max_examples=60, deadline=None)
@given(price_paths, st.integers(1, 10))
def test_label_invariants(steps: list[float], horizon: int) -> None:
    close = 100 * np.exp(np.cumsum(steps))
    high = close * 1.002
    low = close * 0.998
    cfg = BarrierConfig(theta_up=0.004, theta_dn=0.003, horizon=horizon)
    out = triple_barrier(close, high, low, cfg)
    n = len(close)
    for t in range(n):
        if t >= n - horizon:
            assert out.label[t] == LABEL_INCOMPLETE
            continue
        assert t < out.touch_index[t] <= t + horizon
        window = slice(t + 1, out.touch_index[t] + 1)
        up = close[t] * 1.004
        dn = close[t] * 0.997
        if out.label[t] == LABEL_UP:
            assert high[out.touch_index[t]] >= up and low[out.touch_index[t]] > dn
        elif out.label[t] == LABEL_DOWN:
            assert low[out.touch_index[t]] <= dn
        else:
            assert np.all(high[window] < up) and np.all(low[window] > dn)
        # nothing touched strictly before the decided bar
        before = slice(t + 1, out.touch_index[t])
        assert np.all(high[before] < up) and np.all(low[before] > dn)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 30), st.integers(0, 2)), min_size=1, max_size=80))
def test_cooldown_never_overlaps_per_symbol(spec: list[tuple[int, int, int]]) -> None:
    start = np.array([s for s, _, _ in spec], np.int64)
    end = start + np.array([d for _, d, _ in spec], np.int64)
    codes = np.array([c for _, _, c in spec], np.int64)
    chosen = cooldown_select(start, end, codes)
    for code in set(codes.tolist()):
        picked = sorted((start[i], end[i]) for i in chosen if codes[i] == code)
        for (_, e0), (s1, _) in itertools.pairwise(picked):
            assert s1 > e0
        assert picked, "every symbol keeps at least its first label"


def test_balanced_weights_equalise_classes() -> None:
    y = np.array([1, 0, 0, 0])
    w = balanced_weights(y)
    assert w.tolist() == [2.0, 2 / 3, 2 / 3, 2 / 3]
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=10, max_size=200), st.integers(2, 6), st.integers(0, 15))
def test_purged_kfold_no_train_label_overlaps_its_test_fold(durations: list[int], k: int, embargo: int) -> None:
    n = len(durations)
    start = np.arange(n, dtype=np.int64) * 2
    end = start + np.array(durations, np.int64)
    seen_test: list[int] = []
    for train, test in purged_kfold(start, end, n_splits=k, embargo=embargo):
        seen_test.extend(test.tolist())
        t0, t1 = start[test].min(), end[test].max()
        assert not set(train) & set(test)
        for i in train:
            assert end[i] < t0 or start[i] > t1 + embargo  # purged and embargoed
    assert sorted(seen_test) == list(range(n))


def test_purged_kfold_rejects_unsorted_input() -> None:
    with pytest.raises(ValueError, match="sorted"):
        list(purged_kfold(np.array([3, 1, 2]), np.array([3, 1, 2]), n_splits=2))
