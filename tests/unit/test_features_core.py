"""Unit tests of the features core: exact formula values, windows, rejects, determinism, the batch helper."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, market_pb2
from streams.features import definitions as d
from streams.features.core import FeatureState, RegimeThresholds, compute_frame, process
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs, StageContext
from streams.runtime.topics import Topic

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000  # µs, a whole second
STEP = 20_000  # 20 ms micro-batches

Level = tuple[float, float]
TradeSpec = tuple[float, float, bool]  # price, qty, buyer_is_maker

BIDS: list[Level] = [(100.0, 2.0), (99.5, 1.0), (99.0, 3.0), (98.5, 1.5), (98.0, 0.5), (97.5, 4.0),
                     (97.0, 1.0), (96.5, 2.0), (96.0, 1.0), (95.5, 1.0), (95.0, 8.0)]
ASKS: list[Level] = [(100.5, 1.0), (101.0, 2.0), (101.5, 0.5), (102.0, 1.0), (102.5, 2.5), (103.0, 1.0),
                     (103.5, 1.0), (104.0, 3.0), (104.5, 1.0), (105.0, 2.0), (105.5, 9.0)]


def tick_batch(
    seq: int,
    t_us: int,
    *,
    bids: Sequence[Level] | None = BIDS,
    asks: Sequence[Level] | None = ASKS,
    trades: Sequence[TradeSpec] = (),
    symbol: str = "BTCUSDT",
    flags: Sequence[int] = (common_pb2.SIMULATED,),
) -> market_pb2.TickBatch:
    tb = market_pb2.TickBatch(
        schema_version=SCHEMA_VERSION, batch_id=f"sim:{symbol}:{seq}", venue=common_pb2.SIMULATOR,
        symbol=symbol, sequence=seq, quality_flags=list(flags),  # type: ignore[arg-type]  # plain ints in tests
    )
    tb.ts.exchange_us = t_us
    tb.ts.ingest_us = t_us + 3_000
    for i, (price, qty, maker) in enumerate(trades):
        tr = tb.events.add().trade
        tr.trade_id, tr.price, tr.qty, tr.buyer_is_maker, tr.exchange_us = seq * 100 + i, price, qty, maker, t_us
    if bids is not None and asks is not None:
        book = tb.events.add().book
        book.exchange_us = t_us
        for p, q in bids:
            book.bids.add(price=p, qty=q)
        for p, q in asks:
            book.asks.add(price=p, qty=q)
    return tb


def run(batches: Sequence[market_pb2.TickBatch], state: FeatureState, clock: ManualClock) -> Outputs:
    return process([InRecord(value=b, key=b.symbol) for b in batches], state, clock)


def vectors(out: Outputs) -> list[features_pb2.FeatureVector]:
    vecs = []
    for e in out.emits:
        assert isinstance(e.value, features_pb2.FeatureVector)
        vecs.append(e.value)
    return vecs


def feats(vec: features_pb2.FeatureVector) -> dict[str, float]:
    return dict(zip(vec.names, vec.values, strict=True))


def test_point_features_are_exactly_the_formulas() -> None:
    clock = ManualClock(T0 + 5_000)
    out = run([tick_batch(1, T0)], FeatureState(), clock)
    assert not out.rejects
    (emit,) = out.emits
    assert emit.topic is Topic.FEATURES and emit.key == "SIMULATOR:BTCUSDT" and emit.exchange_us == T0
    vec = vectors(out)[0]
    f = feats(vec)
    bid, bq, ask, aq = 100.0, 2.0, 100.5, 1.0
    mid = (bid + ask) / 2.0
    assert vec.mid_price == mid
    assert f["spread_bps"] == (ask - bid) / mid * 1e4
    assert f["qi_l1"] == (bq - aq) / (bq + aq)
    b5, a5 = 2.0 + 1.0 + 3.0 + 1.5 + 0.5, 1.0 + 2.0 + 0.5 + 1.0 + 2.5
    assert f["qi_l5"] == (b5 - a5) / (b5 + a5)
    micro = (ask * bq + bid * aq) / (bq + aq)
    assert f["microprice_dev"] == (micro - mid) / mid
    depth = sum(q for _, q in BIDS[:10]) + sum(q for _, q in ASKS[:10])
    assert f["depth_l10_log"] == math.log(depth)
    # The contract around the numbers.
    assert tuple(vec.names) == d.FEATURE_NAMES and len(vec.values) == len(d.FEATURE_NAMES) >= 50
    assert vec.vector_id == "sim:BTCUSDT:1" and vec.feature_version == d.FEATURE_VERSION
    assert vec.schema_version == SCHEMA_VERSION and vec.venue == common_pb2.SIMULATOR
    assert vec.data_window_id == "BTCUSDT:1-1"
    assert (vec.ts.exchange_us, vec.ts.ingest_us, vec.ts.features_us) == (T0, T0 + 3_000, T0 + 5_000)
    assert list(vec.quality_flags) == [common_pb2.SIMULATED, common_pb2.WINDOW_INSUFFICIENT]
    assert vec.regime == ""  # no regime before warm-up


def test_one_batch_windows_are_nan_and_flagged() -> None:
    vec = vectors(run([tick_batch(1, T0, trades=[(100.2, 1.0, False)])], FeatureState(), ManualClock()))[0]
    f = feats(vec)
    windowed = ["ofi_1s", "ofi_5s", "trade_imbalance_5s", "trade_intensity_5s", "ret_1s", "ret_10s", "ret_60s",
                "rv_1m", "vwap_gap_bps_30s"]
    assert all(math.isnan(f[n]) for n in windowed)
    assert f["time_since_trade_s"] == 0.0
    assert common_pb2.WINDOW_INSUFFICIENT in vec.quality_flags


def test_coverage_threshold_is_half_the_window() -> None:
    state, clock = FeatureState(), ManualClock()
    # 25 batches span 480 ms: 48% of the 1 s window. The 26th brings it to exactly 500 ms.
    vecs = vectors(run([tick_batch(i + 1, T0 + i * STEP) for i in range(26)], state, clock))
    assert math.isnan(feats(vecs[24])["ofi_1s"])
    assert feats(vecs[25])["ofi_1s"] == 0.0  # a constant book has no order-flow imbalance
    assert math.isnan(feats(vecs[25])["ofi_5s"])


def test_ofi_sums_cont_increments_over_mean_top_depth() -> None:
    state, clock = FeatureState(), ManualClock()
    batches = [tick_batch(i + 1, T0 + i * STEP) for i in range(30)]
    # Batch 31: the best bid grows from 2 to 5 at the same price: e = +5 - 2 - 1 + 1 = 3.
    grown = [(100.0, 5.0), *BIDS[1:]]
    batches.append(tick_batch(31, T0 + 30 * STEP, bids=grown))
    vec = vectors(run(batches, state, clock))[-1]
    f = feats(vec)
    mean_top_depth = (30 * ((2.0 + 1.0) / 2.0) + (5.0 + 1.0) / 2.0) / 31
    assert f["ofi_1s"] == 3.0 / mean_top_depth
    assert f["qi_l1"] == (5.0 - 1.0) / (5.0 + 1.0)


def test_ofi_increment_cases() -> None:
    # Bid price up: the whole new bid queue is buying pressure; ask price down: the new ask queue is selling.
    assert d.ofi_increment((100.0, 2.0, 101.0, 3.0), (100.5, 1.0, 101.0, 3.0)) == 1.0
    assert d.ofi_increment((100.0, 2.0, 101.0, 3.0), (100.0, 2.0, 100.5, 4.0)) == -4.0
    assert d.ofi_increment((100.0, 2.0, 101.0, 3.0), (99.5, 7.0, 101.5, 1.0)) == -2.0 + 3.0


def test_trade_features_over_five_seconds() -> None:
    state, clock = FeatureState(), ManualClock()
    batches = [tick_batch(i + 1, T0 + i * STEP) for i in range(150)]  # 2.98 s of book
    batches[10] = tick_batch(11, T0 + 10 * STEP, trades=[(100.0, 1.5, False), (100.5, 0.5, False)])
    batches[100] = tick_batch(101, T0 + 100 * STEP, trades=[(100.25, 1.0, True)])
    vec = vectors(run(batches, state, clock))[-1]
    f = feats(vec)
    buy, sell = 1.5 + 0.5, 1.0
    assert f["trade_imbalance_5s"] == (buy - sell) / (buy + sell)
    covered_s = (149 * STEP) / 1e6
    assert f["trade_intensity_5s"] == 3 / covered_s
    assert f["time_since_trade_s"] == (149 - 100) * STEP / 1e6
    # 2.98 s cannot fill a 30 s window: no quiet VWAP from a sliver of it.
    assert math.isnan(f["vwap_gap_bps_30s"])


def test_returns_use_the_mid_at_the_window_start_and_gaps_invalidate() -> None:
    state, clock = FeatureState(), ManualClock()
    batches = []
    for i in range(101):  # 2 s; the book shifts up by 0.25 each batch
        shift = 0.25 * i
        batches.append(tick_batch(i + 1, T0 + i * STEP, bids=[(p + shift, q) for p, q in BIDS],
                                  asks=[(p + shift, q) for p, q in ASKS]))
    vecs = vectors(run(batches, state, clock))

    def mid(i: int) -> float:
        return (100.0 + 0.25 * i + 100.5 + 0.25 * i) / 2.0

    # At batch 100 (t0 + 2 s) the window (1 s, 2 s] starts after batch 50 (t0 + 1 s): that is the reference.
    assert feats(vecs[100])["ret_1s"] == math.log(mid(100) / mid(50))
    assert math.isnan(feats(vecs[100])["ret_10s"])
    # A 3 s outage: the 1 s window is empty, so no return and the flag, never a stale number.
    after = vectors(run([tick_batch(102, T0 + 100 * STEP + 3_000_000)], state, clock))[0]
    assert math.isnan(feats(after)["ret_1s"]) and math.isnan(feats(after)["ofi_1s"])
    assert common_pb2.WINDOW_INSUFFICIENT in after.quality_flags


def test_invalid_batches_are_rejected_and_leave_state_alone() -> None:
    state, clock = FeatureState(), ManualClock()
    crossed = tick_batch(2, T0 + STEP, bids=[(101.0, 1.0)], asks=[(100.5, 1.0)])
    nan_price = tick_batch(3, T0 + 2 * STEP, bids=[(float("nan"), 1.0)])
    negative_trade = tick_batch(4, T0 + 3 * STEP, trades=[(-5.0, 1.0, False)])
    unsorted = tick_batch(5, T0 + 4 * STEP, asks=[(101.0, 1.0), (100.5, 1.0)])
    good = tick_batch(6, T0 + 5 * STEP)
    out = run([tick_batch(1, T0), crossed, nan_price, negative_trade, unsorted, good], state, clock)
    assert [(r.record.value.sequence, r.error_type) for r in out.rejects] == [
        (2, "crossed_book"), (3, "invalid_price"), (4, "invalid_price"), (5, "invalid_book")]
    assert [v.vector_id for v in vectors(out)] == ["sim:BTCUSDT:1", "sim:BTCUSDT:6"]
    assert vectors(out)[1].data_window_id == "BTCUSDT:1-6"


def test_batch_without_book_gives_nan_book_features_not_a_reject() -> None:
    state, clock = FeatureState(), ManualClock()
    out = run([tick_batch(1, T0), tick_batch(2, T0 + STEP, bids=None, asks=None, trades=[(100.1, 1.0, True)])],
              state, clock)
    vec = vectors(out)[1]
    f = feats(vec)
    assert math.isnan(vec.mid_price) and math.isnan(f["spread_bps"]) and math.isnan(f["qi_l1"])
    assert f["time_since_trade_s"] == 0.0
    assert common_pb2.WINDOW_INSUFFICIENT in vec.quality_flags


def test_redelivered_batch_gets_the_identical_vector() -> None:
    state, clock = FeatureState(), ManualClock(T0)
    first = vectors(run([tick_batch(1, T0), tick_batch(2, T0 + STEP)], state, clock))
    clock.advance_us(1_000_000)
    again = vectors(run([tick_batch(2, T0 + STEP), tick_batch(3, T0 + 2 * STEP)], state, clock))
    assert again[0].SerializeToString() == first[1].SerializeToString()
    assert again[1].data_window_id == "BTCUSDT:1-3"  # the duplicate was not folded in twice


def random_walk(n: int, symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT"), seed: int = 3) -> Iterator[
        market_pb2.TickBatch]:
    rng = random.Random(seed)
    mids = {s: 100.0 for s in symbols}
    for i in range(n):
        for s in symbols:
            mids[s] = round(mids[s] * math.exp(rng.gauss(0.0, 2e-4)), 2)
            m = mids[s]
            bids = [(round(m - 0.01 * (k + 1), 2), 0.5 + rng.random()) for k in range(20)]
            asks = [(round(m + 0.01 * (k + 1), 2), 0.5 + rng.random()) for k in range(20)]
            trades = [(m, rng.random() + 0.01, rng.random() < 0.5) for _ in range(rng.randint(0, 2))]
            jitter = rng.randint(0, 3_000)
            yield tick_batch(i + 1, T0 + i * STEP + jitter, bids=bids, asks=asks, trades=trades, symbol=s)


def test_compute_frame_equals_the_streaming_core() -> None:
    batches = list(random_walk(3_500))  # 70 s per symbol: every window, rv_1m included, gets filled
    frame = compute_frame(batches)
    state, clock = FeatureState(), ManualClock()
    streamed: list[features_pb2.FeatureVector] = []
    i = 0
    for size in [1, 7, 32, 500] * 100:  # arbitrary micro-batch splits must not matter
        streamed += vectors(run(batches[i:i + size], state, clock))
        i += size
        if i >= len(batches):
            break
    assert len(frame) == len(streamed) == len(batches)
    n = len(d.FEATURE_NAMES)
    assert list(frame.columns[:2]) == ["symbol", "ts"] and list(frame.columns[2:2 + n]) == list(d.FEATURE_NAMES)
    assert frame.columns[2 + n] == "feature_version"
    expected = np.array([list(v.values) for v in streamed])
    np.testing.assert_array_equal(frame[list(d.FEATURE_NAMES)].to_numpy(), expected)  # NaN == NaN here
    assert list(frame["symbol"]) == [v.symbol for v in streamed]
    assert list(frame["ts"]) == [v.ts.exchange_us // 1000 for v in streamed]
    assert set(frame["feature_version"]) == {d.FEATURE_VERSION}
    last = frame.iloc[-1]
    # 70 s of a spot-like book: everything but the >= 5-minute windows and the derivatives has a value.
    needs_more = {"hawkes_branching_5m", "kyle_lambda_1h", "amihud_1h", "volume_zscore_1h", "ret_5m", "ret_15m",
                  "ret_1h", "ret_accel_5m", "vwap_gap_bps_5m", "price_zscore_1h", "rv_5m", "rv_1h", "parkinson_5m",
                  "parkinson_1h", "rv_ratio_5m_1h", "variance_ratio_1h", "funding_rate_bps", "basis_bps",
                  "mark_mid_gap_bps", "time_to_funding_h", "liq_notional_1m", "liq_count_5m", "liq_imbalance_5m",
                  "oi_change_5m", "oi_change_1h"}
    assert [n for n in d.FEATURE_NAMES if math.isnan(last[n])] == [n for n in d.FEATURE_NAMES if n in needs_more]


def test_regime_uses_preset_thresholds_once_rv_exists() -> None:
    presets = {"BTCUSDT": RegimeThresholds(vol=(1e-9, 2e-9), depth=(0.0, 100.0))}
    state, clock = FeatureState(presets), ManualClock()
    batches = [b for b in random_walk(2_000, symbols=("BTCUSDT",))]
    vecs = vectors(run(batches, state, clock))
    assert vecs[100].regime == ""  # rv_1m needs 30 s of 1 s returns
    assert vecs[-1].regime == "vol_high_depth_medium"
    assert vecs[-1].regime in d.REGIME_LABELS


def test_regime_thresholds_freeze_after_warm_up() -> None:
    state, clock = FeatureState(), ManualClock()
    run(list(random_walk(8_000, symbols=("ETHUSDT",))), state, clock)  # 160 s: 30 s to rv, then 120 s
    th = state.regime_thresholds()["ETHUSDT"]
    assert th.vol[0] <= th.vol[1] and th.depth[0] <= th.depth[1]
    more = vectors(run(list(random_walk(8_100, symbols=("ETHUSDT",)))[8_000:], state, clock))
    assert state.regime_thresholds()["ETHUSDT"] == th
    assert all(v.regime in d.REGIME_LABELS for v in more)


def test_feature_version_is_stable_and_tracks_every_definition() -> None:
    assert d.feature_version() == d.feature_version(d.FEATURES) == d.FEATURE_VERSION
    assert len(d.FEATURE_VERSION) == 12
    changed_window = tuple(dataclasses.replace(f, window_s=2.0) if f.name == "ofi_1s" else f for f in d.FEATURES)
    renamed = tuple(dataclasses.replace(f, name="spread") if f.name == "spread_bps" else f for f in d.FEATURES)

    def other_spread(bid: float, ask: float) -> float:
        return (ask - bid) / bid * 1e4

    reformulated = tuple(dataclasses.replace(f, formula=other_spread) if f.name == "spread_bps" else f
                         for f in d.FEATURES)
    versions = {d.feature_version(x) for x in (d.FEATURES, changed_window, renamed, reformulated)}
    assert len(versions) == 4


def test_rv_1m_is_realized_vol_of_one_second_returns() -> None:
    state, clock = FeatureState(), ManualClock()

    def m(s: int) -> float:
        return 100.0 * math.exp(0.001 * (s % 3))

    batches = []
    for k in range(90):  # two batches per second for 45 s; the mid changes only across seconds
        s = k // 2
        batches.append(tick_batch(k + 1, T0 + k * 500_000, bids=[(m(s) - 0.5, 1.0)], asks=[(m(s) + 0.5, 1.0)]))
    vecs = vectors(run(batches, state, clock))
    mids = [((m(s) - 0.5) + (m(s) + 0.5)) / 2.0 for s in range(45)]
    # At 44.5 s the completed seconds are 0..43: 43 returns (second 0 has no predecessor), 43/60 >= 50%.
    r2 = [math.log(mids[s] / mids[s - 1]) ** 2 for s in range(1, 44)]
    assert feats(vecs[-1])["rv_1m"] == pytest.approx(math.sqrt(sum(r2) * 60 / 43), rel=1e-12)
    # 30 s of data give only 29 returns: not enough.
    assert math.isnan(feats(vecs[60])["rv_1m"]) and not math.isnan(feats(vecs[62])["rv_1m"])
    # A batch after a 70 s outage: every return left the window.
    after = vectors(run([tick_batch(91, T0 + 115_000_000)], state, clock))[0]
    assert math.isnan(feats(after)["rv_1m"]) and common_pb2.WINDOW_INSUFFICIENT in after.quality_flags


def test_stage_spec() -> None:
    from streams.features.stage import spec
    from streams.runtime.settings import Settings

    s = spec(Settings())
    assert (s.name, s.input_topics, s.process) == ("features", (Topic.TICKS,), process)
    assert isinstance(s.make_state(StageContext.standalone("features", Settings())), FeatureState)
