"""Unit tests of the features kernel on hand-built streams: exact values, tiers, breaks, derivatives, chunking."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest

from schemas import common_pb2, features_pb2, market_pb2
from streams.features import definitions as d
from streams.features.core import (
    Backpressure,
    FeatureState,
    RegimeThresholds,
    compute_frame,
    fold_rows,
    process,
)
from streams.features.rows import encode_batches, parse_batch
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from tests.unit.test_features_core import ASKS, BIDS, STEP, T0, tick_batch
from tests.unit.test_features_oracle import fine_features, table_of, walk

pytestmark = pytest.mark.unit


def feats(vec: features_pb2.FeatureVector) -> dict[str, float]:
    return dict(zip(vec.names, vec.values, strict=True))


def emit_all(batches: Sequence[market_pb2.TickBatch], state: FeatureState,
             clock: ManualClock) -> list[features_pb2.FeatureVector]:
    out = process([InRecord(value=b, key=b.symbol) for b in batches], state, clock)
    assert not out.rejects
    vecs = []
    for e in out.emits:
        assert isinstance(e.value, features_pb2.FeatureVector)
        vecs.append(e.value)
    return vecs


def test_book_features_are_exactly_the_formulas() -> None:
    vec = emit_all([tick_batch(1, T0)], FeatureState(), ManualClock())[0]
    f = feats(vec)
    bid, ask = BIDS[0][0], ASKS[0][0]
    mid = (bid + ask) / 2.0
    b10, a10 = sum(q for _, q in BIDS[:10]), sum(q for _, q in ASKS[:10])
    assert f["qi_l10"] == (b10 - a10) / (b10 + a10)
    dist_b, dist_a = abs(BIDS[9][0] - mid) / mid * 1e4, abs(ASKS[9][0] - mid) / mid * 1e4
    assert f["depth_slope_bid"] == math.log(b10 / dist_b)
    assert f["depth_slope_ask"] == math.log(a10 / dist_a)
    sb, sa = b10 / dist_b, a10 / dist_a
    assert f["depth_slope_imbalance"] == (sb - sa) / (sb + sa)
    assert f["touch_void_bid_bps"] == abs(BIDS[4][0] - bid) / mid * 1e4
    assert f["touch_void_ask_bps"] == abs(ASKS[4][0] - ask) / mid * 1e4
    num = den = 0.0
    for i in range(10):
        w = 1.0 / (i + 1)
        num += w * (BIDS[i][1] - ASKS[i][1])
        den += w * (BIDS[i][1] + ASKS[i][1])
    assert f["book_pressure"] == num / den
    assert f["book_age_s"] == 0.0
    day = 86_400_000_000
    assert f["tod_sin"] == math.sin(2.0 * math.pi * (T0 % day) / day)
    assert f["tod_cos"] == math.cos(2.0 * math.pi * (T0 % day) / day)
    assert (f["coverage_5s"], f["coverage_1m"]) == (0.0, 0.0)  # one batch vouches for nothing yet
    assert (f["feature_age_medium_s"], f["feature_age_slow_s"]) == (0.0, 0.0)
    # Spot (no mark price): derivatives NaN; they do not count against the quality score.
    derivatives = [g.name for g in d.FEATURES if g.category == "derivatives"]
    assert len(derivatives) == 9 and all(math.isnan(f[n]) for n in derivatives)
    valid = sum(1 for n in d.FEATURE_NAMES if n != "quality_score" and not math.isnan(f[n]))
    assert f["quality_score"] == valid / (d.N_FEATURES - 1 - len(derivatives))


def test_a_thin_book_has_no_void_and_a_shallow_slope() -> None:
    f = feats(emit_all([tick_batch(1, T0, bids=BIDS[:3], asks=ASKS[:3])], FeatureState(), ManualClock())[0])
    mid = (BIDS[0][0] + ASKS[0][0]) / 2.0
    b3 = BIDS[0][1] + BIDS[1][1] + BIDS[2][1]
    assert f["depth_slope_bid"] == math.log(b3 / (abs(BIDS[2][0] - mid) / mid * 1e4))
    assert math.isnan(f["touch_void_bid_bps"]) and math.isnan(f["touch_void_ask_bps"])


def trade_stream(n: int = 1_000) -> list[market_pb2.TickBatch]:
    """20 ms batches, one trade each (qty 1, every third a sell); batch 200's trade is a large sell of 10."""
    out = []
    for i in range(n):
        qty = 10.0 if i == 200 else 1.0
        out.append(tick_batch(i + 1, T0 + i * STEP, trades=[(100.25, qty, i % 3 == 0 or i == 200)]))
    return out


def test_trade_flow_intensity_sign_and_large_trades() -> None:
    batches = trade_stream()
    vecs = emit_all(batches, FeatureState(), ManualClock())
    last = feats(vecs[299])  # t0 + 5.98 s: the 5 s window holds batches 50..299
    window = range(50, 300)
    n_sell = sum(1 for i in window if i % 3 == 0 or i == 200)
    n_buy = len(window) - n_sell
    assert last["trade_sign_imbalance_5s"] == (n_buy - n_sell) / (n_buy + n_sell)
    assert last["buy_intensity_5s"] == n_buy / 5.0 and last["sell_intensity_5s"] == n_sell / 5.0
    assert last["coverage_5s"] == 1.0
    # The inter-arrival EWMA needs a covered 30 s window (>= 15 s).
    assert math.isnan(last["trade_interarrival_s"])
    f = feats(vecs[999])
    # Every trade 20 ms after the last: the EWMA inter-arrival is exactly 20 ms, perfectly regular.
    assert f["trade_interarrival_s"] == 0.02 and f["trade_burstiness"] == -1.0
    # large_trade_share_30s is medium tier: at batch 999 it holds the value evaluated at batch 950 (t0 + 19 s).
    volume = 950 * 1.0 + 10.0
    assert f["large_trade_share_30s"] == 10.0 / volume
    assert f["feature_age_medium_s"] == pytest.approx(0.98, abs=1e-12)
    # Hawkes (slow tier) evaluated at batch 750 (t0 + 15 s): sum of exp(-age / 10 s) / 10 s per side.
    t_eval = T0 + 750 * STEP
    hb = sum(math.exp(-((t_eval - (T0 + i * STEP)) / 1e6) / 10.0) for i in range(751) if not (i % 3 == 0 or i == 200))
    hs = sum(math.exp(-((t_eval - (T0 + i * STEP)) / 1e6) / 10.0) for i in range(751) if i % 3 == 0 or i == 200)
    assert f["hawkes_buy_intensity"] == pytest.approx(hb / 10.0, rel=1e-12)
    assert f["hawkes_sell_intensity"] == pytest.approx(hs / 10.0, rel=1e-12)
    assert f["hawkes_imbalance"] == pytest.approx((hb - hs) / (hb + hs), rel=1e-12)
    assert f["feature_age_slow_s"] == pytest.approx(4.98, abs=1e-12)


def test_medium_and_slow_tiers_are_held_between_evaluations() -> None:
    batches = list(walk(1_500, 20_000, seed=4))  # 30 s
    frame = compute_frame(batches)
    sec = frame["exchange_us"].to_numpy() // 1_000_000
    block = frame["exchange_us"].to_numpy() // 5_000_000
    for f in d.FEATURES:
        values = frame[f.name].to_numpy()
        if f.tier == d.TIER_FAST:
            continue
        groups = sec if f.tier == d.TIER_MEDIUM else block
        for g in np.unique(groups):
            chunk = values[groups == g]
            assert np.array_equal(chunk, np.full(len(chunk), chunk[0]), equal_nan=True), (f.name, g)
    # A fast feature does change inside a second.
    assert frame["qi_l1"][sec == sec[100]].nunique() > 1
    # The age says how old the held values are.
    first = np.r_[True, sec[1:] != sec[:-1]]
    t_eval = np.maximum.accumulate(np.where(first, frame["exchange_us"].to_numpy(), 0))
    np.testing.assert_array_equal(frame["feature_age_medium_s"].to_numpy(),
                                  (frame["exchange_us"].to_numpy() - t_eval) / 1e6)


def test_backpressure_drops_and_restores_the_tiers() -> None:
    state = FeatureState(backpressure=Backpressure(drop_lag_s=5.0, resume_lag_s=1.0))
    batches = list(walk(3_000, 20_000, seed=6))  # 60 s
    clock = ManualClock(T0)
    clock.set_us(batches[1_999].ts.exchange_us)
    emit_all(batches[:2_000], state, clock)
    # The stage falls 10 s behind: tiers dropped on every vector of the batch, flagged, counted.
    clock.set_us(batches[2_099].ts.exchange_us + 10_000_000)
    lagging = emit_all(batches[2_000:2_100], state, clock)
    stats = state.backpressure.stats
    assert stats.dropped and stats.episodes == 1 and stats.vectors_dropped == 100
    for vec in lagging:
        f = feats(vec)
        assert common_pb2.TIERS_DROPPED in vec.quality_flags
        assert all(math.isnan(f[x.name]) for x in d.FEATURES if x.tier != d.TIER_FAST)
        assert math.isnan(f["feature_age_medium_s"]) and not math.isnan(f["qi_l1"]) and not math.isnan(f["ret_10s"])
    # 3 s behind: still above the resume threshold (hysteresis).
    clock.set_us(batches[2_599].ts.exchange_us + 3_000_000)
    assert all(common_pb2.TIERS_DROPPED in v.quality_flags for v in emit_all(batches[2_100:2_600], state, clock))
    # Caught up: the medium tier is evaluated at once, on the very first vector, and equals the batch value.
    clock.set_us(batches[2_899].ts.exchange_us + 500_000)
    restored = emit_all(batches[2_600:2_900], state, clock)
    assert not stats.dropped and stats.episodes == 1 and stats.vectors_dropped == 600
    f0 = feats(restored[0])
    assert common_pb2.TIERS_DROPPED not in restored[0].quality_flags
    assert f0["feature_age_medium_s"] == 0.0 and f0["feature_age_slow_s"] == 0.0
    fresh = fine_features(table_of(batches[:2_601]), 2_600)  # recomputed from scratch at that batch
    assert f0["ofi_30s"] == pytest.approx(fresh["ofi_30s"], rel=1e-9)
    assert f0["trade_imbalance_1m"] == pytest.approx(fresh["trade_imbalance_1m"], rel=1e-9)


def test_dropped_tiers_alone_do_not_claim_insufficient_windows() -> None:
    # Presets make the regime known; at 70 s only >= 5-minute windows are short, and they are medium/slow.
    presets = {"BTCUSDT": RegimeThresholds(vol=(1e-9, 2e-9), depth=(0.0, 100.0))}
    state = FeatureState(presets, Backpressure(drop_lag_s=5.0, resume_lag_s=1.0))
    batches = list(walk(3_500, 20_000, seed=8))
    clock = ManualClock(batches[-2].ts.exchange_us)
    emit_all(batches[:-1], state, clock)
    clock.set_us(batches[-1].ts.exchange_us + 60_000_000)
    vec = emit_all(batches[-1:], state, clock)[0]
    assert common_pb2.TIERS_DROPPED in vec.quality_flags
    assert common_pb2.WINDOW_INSUFFICIENT not in vec.quality_flags


def test_a_sequence_discontinuity_invalidates_the_windows_that_contain_it() -> None:
    batches = list(walk(5_500, 20_000, seed=2))  # 110 s
    # Batches 2000..2009 are lost: sequence jumps from 2000 to 2011.
    kept = batches[:2_000] + batches[2_010:]
    vecs = emit_all(kept, FeatureState(), ManualClock())
    at = 2_000  # the first vector after the break
    t_break = kept[at].ts.exchange_us
    before = feats(vecs[at - 1])
    assert not math.isnan(before["ofi_1s"]) and not math.isnan(before["trade_imbalance_5s"])
    for k in range(at, at + 200):
        f = feats(vecs[k])
        age = kept[k].ts.exchange_us - t_break
        for name, width in (("ofi_1s", 1), ("ret_1s", 1), ("trade_imbalance_5s", 5), ("ret_10s", 10)):
            if age < width * 1_000_000:
                assert math.isnan(f[name]), (name, k)
        assert common_pb2.WINDOW_INSUFFICIENT in vecs[k].quality_flags
    # Once the break has left a window, that window is valid again.
    later = next(k for k in range(at, len(kept)) if kept[k].ts.exchange_us - t_break >= 1_000_000)
    assert not math.isnan(feats(vecs[later])["ofi_1s"])
    end = feats(vecs[-1])  # > 60 s after the break
    assert not math.isnan(end["trade_imbalance_1m"]) and not math.isnan(end["ret_60s"])


def mark_batch(seq: int, t_us: int, mark: float, index: float, funding: float, next_funding_us: int,
               ) -> market_pb2.TickBatch:
    tb = tick_batch(seq, t_us)
    mp = tb.events.add().mark_price
    mp.mark_price, mp.index_price, mp.funding_rate = mark, index, funding
    mp.next_funding_us, mp.exchange_us = next_funding_us, t_us
    return tb


def test_derivatives_features_from_mark_prices() -> None:
    next_funding = T0 + 3_600_000_000
    vecs = emit_all([mark_batch(1, T0, 100.3, 100.2, 0.0001, next_funding)], FeatureState(), ManualClock())
    f = feats(vecs[0])
    mid = (BIDS[0][0] + ASKS[0][0]) / 2.0
    assert f["funding_rate_bps"] == 0.0001 * 1e4
    assert f["basis_bps"] == (100.3 - 100.2) / 100.2 * 1e4
    assert f["mark_mid_gap_bps"] == (mid - 100.3) / 100.3 * 1e4
    assert f["time_to_funding_h"] == 1.0


def test_stale_mark_prices_are_nan_and_flagged_but_spot_is_not_flagged() -> None:
    state = FeatureState()
    batches = [mark_batch(1, T0, 100.3, 100.2, 0.0001, T0 + 3_600_000_000)]
    batches += [tick_batch(i + 1, T0 + i * STEP) for i in range(1, 400)]  # 8 s without a mark price
    vecs = emit_all(batches, state, ManualClock())
    assert not math.isnan(feats(vecs[240])["basis_bps"])  # evaluated at t0 + 4.8 s < 5 s
    assert math.isnan(feats(vecs[-1])["basis_bps"]) and math.isnan(feats(vecs[-1])["funding_rate_bps"])
    kernel = state.symbol(common_pb2.SIMULATOR, "BTCUSDT").kernel
    assert kernel.app[d.I_BASIS]  # NaN that should have a value: it counts as insufficient
    spot = FeatureState()
    emit_all([tick_batch(i + 1, T0 + i * STEP) for i in range(10)], spot, ManualClock())
    assert not spot.symbol(common_pb2.SIMULATOR, "BTCUSDT").kernel.app[d.I_BASIS]


def test_kernel_output_does_not_depend_on_how_rows_are_split() -> None:
    batches = list(walk(2_000, 20_000, seed=11))
    rows = encode_batches([parse_batch(b) for b in batches])
    whole = fold_rows(d.new_kernel_state(), rows)
    st = d.new_kernel_state()
    parts = []
    rng = random.Random(3)
    i = 0
    n = len(rows.kinds)
    while i < n:
        j = min(n, i + rng.randint(1, 400))
        sub = type(rows)(rows.kinds[i:j], rows.times[i:j], rows.aux[i:j], rows.x[i:j])
        parts.append(fold_rows(st, sub))
        i = j
    np.testing.assert_array_equal(np.vstack([p.values for p in parts]), whole.values)
    np.testing.assert_array_equal(np.concatenate([p.status for p in parts]), whole.status)
    np.testing.assert_array_equal(np.concatenate([p.first_seq for p in parts]), whole.first_seq)


def test_regime_warm_up_uses_linear_terciles() -> None:
    state = FeatureState()
    emit_all(list(walk(9_000, 20_000, seed=12)), state, ManualClock())  # 180 s: 30 s to rv_1m, then 120 s
    kernel = state.symbol(common_pb2.SIMULATOR, "BTCUSDT").kernel
    th = state.regime_thresholds()["BTCUSDT"]
    vq = np.quantile(kernel.warm[0], [1 / 3, 2 / 3])
    dq = np.quantile(kernel.warm[1], [1 / 3, 2 / 3])
    assert th.vol == pytest.approx(tuple(vq), rel=1e-12) and th.depth == pytest.approx(tuple(dq), rel=1e-12)
