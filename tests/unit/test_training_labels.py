"""Hypothesis properties of the labelling and sampling the trainer relies on (beyond test_labels_cv.py): touch
price/MFE/time-to-peak, scale invariance, segmentation by symbol and gap, uniqueness weights, weighted class
balance, purged folds with tied start times, and the train/evaluation purge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.training.cv import purged_kfold
from services.training.dataset import BAR_MS, LabelSpec, label_frame
from services.training.labels import (
    LABEL_DOWN,
    LABEL_INCOMPLETE,
    LABEL_TIMEOUT,
    LABEL_UP,
    BarrierConfig,
    average_uniqueness,
    balanced_weights,
    outcome,
    triple_barrier,
    triple_barrier_segmented,
)
from services.training.train import split_rows

pytestmark = pytest.mark.unit

steps = st.lists(st.floats(min_value=-0.008, max_value=0.008), min_size=5, max_size=80)
wicks = st.floats(min_value=0.0, max_value=0.006)


def path(rets: list[float], wick_up: float, wick_dn: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    close = 100 * np.exp(np.cumsum(rets))
    return close, close * (1 + wick_up), close * (1 - wick_dn)


@settings(max_examples=80, deadline=None)
@given(steps, wicks, wicks, st.integers(1, 12))
def test_touch_price_mfe_and_time_to_peak(rets: list[float], wu: float, wd: float, horizon: int) -> None:
    close, high, low = path(rets, wu, wd)
    cfg = BarrierConfig(0.005, 0.004, horizon)
    out = triple_barrier(close, high, low, cfg)
    for t in range(len(close)):
        if out.label[t] == LABEL_INCOMPLETE:
            assert t >= len(close) - horizon
            continue
        k = out.touch_index[t]
        expected_price = {LABEL_UP: close[t] * 1.005, LABEL_DOWN: close[t] * 0.996, LABEL_TIMEOUT: close[k]}
        assert out.touch_price[t] == pytest.approx(expected_price[int(out.label[t])], rel=1e-12)
        window = high[t + 1:k + 1]
        assert out.mfe[t] == pytest.approx(window.max() / close[t] - 1, rel=1e-12, abs=1e-15)
        assert 1 <= out.time_to_peak[t] <= k - t
        assert high[t + out.time_to_peak[t]] == window.max()


@settings(max_examples=60, deadline=None)
@given(steps, wicks, wicks, st.integers(1, 10), st.sampled_from([0.25, 2.0, 1024.0]))
def test_labels_do_not_depend_on_the_price_level(rets: list[float], wu: float, wd: float, horizon: int,
                                                 scale: float) -> None:
    close, high, low = path(rets, wu, wd)
    cfg = BarrierConfig(0.003, 0.002, horizon)
    a = triple_barrier(close, high, low, cfg)
    b = triple_barrier(close * scale, high * scale, low * scale, cfg)  # powers of two scale exactly
    assert a.label.tolist() == b.label.tolist() and a.touch_index.tolist() == b.touch_index.tolist()


@settings(max_examples=60, deadline=None)
@given(steps, steps, st.integers(1, 6), st.integers(0, 60))
def test_segmented_labels_per_symbol_and_contiguous_run(r1: list[float], r2: list[float], horizon: int,
                                                        gap_at: int) -> None:
    c1, h1, l1 = path(r1, 0.001, 0.001)
    c2, h2, l2 = path(r2, 0.002, 0.0)
    t1 = np.arange(len(c1), dtype=np.int64) * BAR_MS
    cut = min(gap_at, len(c1))
    t1[cut:] += 7 * BAR_MS  # a hole of 7 missing bars
    t2 = np.arange(len(c2), dtype=np.int64) * BAR_MS
    ts = np.r_[t1, t2]
    groups = np.r_[np.zeros(len(c1), np.int64), np.ones(len(c2), np.int64)]
    perm = np.random.default_rng(len(r1) + 7 * len(r2)).permutation(len(ts))  # input order must not matter
    cfg = BarrierConfig(0.004, 0.003, horizon)
    close, high, low = np.r_[c1, c2], np.r_[h1, h2], np.r_[l1, l2]
    seg = triple_barrier_segmented(ts[perm], close[perm], high[perm], low[perm], cfg, BAR_MS, groups[perm])
    label = np.empty(len(ts), np.int64)
    label[perm] = seg.label
    touch = np.empty(len(ts), np.int64)
    touch[perm] = np.where(seg.touch_row >= 0, perm[np.maximum(seg.touch_row, 0)], -1)
    runs = [(0, cut), (cut, len(c1)), (len(c1), len(ts))]
    for lo, hi in runs:
        if hi <= lo:
            continue
        ref = triple_barrier(close[lo:hi], high[lo:hi], low[lo:hi], cfg)
        assert label[lo:hi].tolist() == ref.label.tolist()
        ok = ref.touch_index >= 0
        assert (touch[lo:hi][ok] == ref.touch_index[ok] + lo).all()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 25)), min_size=1, max_size=60))
def test_uniqueness_shares_each_bar_exactly_once(spans: list[tuple[int, int]]) -> None:
    start = np.array([s for s, _ in spans], np.int64)
    end = start + np.array([d for _, d in spans], np.int64)
    u = average_uniqueness(start, end)
    assert np.all((u > 0) & (u <= 1 + 1e-12))
    covered = np.zeros(int(end.max()) + 1, bool)
    for s, e in zip(start, end, strict=True):
        covered[s:e + 1] = True
    # Every covered bar hands out exactly 1 in total, so sum(u_i * len_i) is the number of covered bars.
    assert float(np.sum(u * (end - start + 1))) == pytest.approx(float(covered.sum()), rel=1e-9)
    pairs = list(zip(start.tolist(), end.tolist(), strict=True))
    disjoint = not any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(pairs) for b in pairs[i + 1:])
    if disjoint:
        assert np.allclose(u, 1.0)
    assert average_uniqueness(np.array([3]), np.array([-1])).tolist() == [0.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0.01, 5.0)), min_size=2, max_size=50))
def test_weighted_class_balance(rows: list[tuple[bool, float]]) -> None:
    y = np.array([int(b) for b, _ in rows])
    base = np.array([w for _, w in rows])
    w = balanced_weights(y, base=base)
    assert w.sum() == pytest.approx(base.sum(), rel=1e-9)
    if 0 < y.sum() < len(y):
        assert w[y == 1].sum() == pytest.approx(w[y == 0].sum(), rel=1e-9)
        # Within a class the ratios of the base weights are kept.
        for cls in (0, 1):
            m = y == cls
            assert np.allclose(w[m] / base[m], (w[m] / base[m])[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), min_size=12, max_size=150),
       st.integers(2, 5), st.integers(0, 30))
def test_purged_folds_with_tied_starts_never_leak(rows: list[tuple[int, int]], k: int, embargo: int) -> None:
    # Several symbols share a bar time: starts are tied, as in the trainer's (ts, symbol) ordering.
    start = np.cumsum([gap for gap, _ in rows]).astype(np.int64)
    end = start + np.array([d for _, d in rows], np.int64)
    tested: list[int] = []
    for train, test in purged_kfold(start, end, n_splits=k, embargo=embargo):
        tested += test.tolist()
        lo, hi = start[test].min(), end[test].max()
        for i in train:
            assert end[i] < lo or start[i] > hi + embargo
    assert sorted(tested) == list(range(len(rows)))


@settings(max_examples=30, deadline=None)
@given(steps, st.integers(1, 10), st.integers(5, 60))
def test_training_labels_never_reach_the_evaluation_period(rets: list[float], horizon: int, split: int) -> None:
    close, high, low = path(rets * 3, 0.002, 0.002)
    n = len(close)
    frame = pd.DataFrame({"symbol": "X", "ts": np.arange(n, dtype=np.int64) * BAR_MS, "close": close,
                          "high": high, "low": low, "feature_version": "f"})
    lab = label_frame(frame, LabelSpec.minute_bars([horizon], 0.002, 0.002))
    split = min(split, n - 1)
    eval_lo = split * BAR_MS
    train, ev = split_rows(lab, (eval_lo, (n - 1) * BAR_MS), [(0, (n - 1) * BAR_MS)], horizon)
    assert np.all(lab.end_ts[horizon][train] < eval_lo) and np.all(lab.ts[train] < eval_lo)
    assert np.all(lab.ts[ev] >= eval_lo) and not set(train) & set(ev)
    # Only samples whose label is still open at the split are dropped, nothing else.
    expected = [i for i in range(n) if lab.valid(horizon)[i] and lab.end_ts[horizon][i] < eval_lo]
    assert train.tolist() == expected


@settings(max_examples=40, deadline=None)
@given(steps, st.integers(1, 10))
def test_sign_labels_differ_from_not_up_only_on_timeouts(rets: list[float], horizon: int) -> None:
    close, high, low = path(rets * 2, 0.001, 0.001)
    n = len(close)
    frame = pd.DataFrame({"symbol": "X", "ts": np.arange(n, dtype=np.int64) * 1000, "close": close,
                          "high": high, "low": low, "feature_version": "f"})
    spec = LabelSpec({7: BarrierConfig(0.003, 0.003, horizon)}, bar_ms=1000, timeout="sign")
    lab = label_frame(frame, spec)
    plain = label_frame(frame, LabelSpec({7: BarrierConfig(0.003, 0.003, horizon)}, bar_ms=1000))
    assert lab.bar_ms == 1000 and lab.horizons == (7,)
    seg = triple_barrier(close, high, low, BarrierConfig(0.003, 0.003, horizon))
    np.testing.assert_array_equal(lab.y[7], outcome(seg.label, close, seg.touch_price, "sign"))
    decided = seg.label != LABEL_TIMEOUT
    np.testing.assert_array_equal(lab.y[7][decided], plain.y[7][decided])
    # A flat timeout has no label, so no span either.
    assert np.all(lab.end_ts[7][~lab.valid(7)] == -1) and np.all(lab.end_ts[7][lab.valid(7)] >= 0)
