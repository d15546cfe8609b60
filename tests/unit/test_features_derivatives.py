"""The liquidation and open-interest features (USD-M): exact values on hand-built streams, NaN on spot and klines,
and the stage and the batch driver giving identical vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from schemas import common_pb2, features_pb2, market_pb2
from streams.features import definitions as d
from streams.features.core import FeatureState, compute_frame, fold_rows
from streams.features.rows import InvalidBatch, encode_bars, parse_batch
from streams.runtime.clock import ManualClock
from tests.unit.test_features_core import T0, feats, run, tick_batch, vectors

pytestmark = pytest.mark.unit

S = 1_000_000
STEP_US = 500_000  # two batches a second: every window covered, every minute bucket valid
SELL, BUY = market_pb2.LIQUIDATION_SIDE_SELL, market_pb2.LIQUIDATION_SIDE_BUY
DERIVATIVES = ("liq_notional_1m", "liq_count_5m", "liq_imbalance_5m", "oi_change_5m", "oi_change_1h")

Liq = tuple[int, int, float, float, float, float]  # side, trade time µs, price, qty, avg price, filled qty


def usdm_stream(seconds: int, liquidations: Sequence[Liq] = (), open_interest: Sequence[tuple[int, float]] = (),
                ) -> list[market_pb2.TickBatch]:
    """A batch every 500 ms from T0 for ``seconds``, a mark price on the first; each liquidation and open-interest
    sample rides on the first batch at or after its time."""
    liqs = sorted(liquidations, key=lambda liq: liq[1])
    ois = sorted(open_interest)
    out = []
    for k in range(seconds * S // STEP_US + 1):
        t = T0 + k * STEP_US
        tb = tick_batch(k + 1, t)
        if k == 0:
            mp = tb.events.add().mark_price
            mp.mark_price, mp.index_price, mp.funding_rate, mp.exchange_us = 100.3, 100.2, 0.0001, t
            mp.next_funding_us = t + 3_600 * S
        while liqs and liqs[0][1] <= t:
            side, at, price, qty, avg, filled = liqs.pop(0)
            tb.liquidations.add(side=side, price=price, qty=qty, avg_price=avg, filled_qty=filled, trade_time_us=at,
                                exchange_us=at)
        while ois and ois[0][0] <= t:
            at, value = ois.pop(0)
            tb.open_interest.add(open_interest=value, exchange_us=at)
        out.append(tb)
    return out


def at(vecs: Sequence[features_pb2.FeatureVector], t_us: int) -> dict[str, float]:
    return feats(next(v for v in vecs if v.ts.exchange_us == t_us))


LIQUIDATIONS: tuple[Liq, ...] = (
    (SELL, T0 + 10 * S, 100.0, 2.0, 101.0, 2.0),    # notional 101 * 2 = 202
    (BUY, T0 + 330 * S, 100.0, 1.0, 0.0, 0.0),      # unfilled: 100 * 1 = 100
    (SELL, T0 + 345 * S, 99.0, 3.0, 98.0, 1.0),     # 98 * 1 = 98
)


def test_liquidation_density_is_exact() -> None:
    state = FeatureState()
    vecs = vectors(run(usdm_stream(400, LIQUIDATIONS), state, ManualClock()))
    before = at(vecs, T0 + 5 * S)  # no liquidation yet: they cannot exist (NaN, not insufficient)
    assert all(math.isnan(before[n]) for n in DERIVATIVES)
    early = at(vecs, T0 + 200 * S)
    assert early["liq_notional_1m"] == 0.0  # (140 s, 200 s]: none, and the stream is watched since T0
    assert math.isnan(early["liq_count_5m"]) and math.isnan(early["liq_imbalance_5m"])  # not 300 s watched yet
    quiet = at(vecs, T0 + 320 * S)  # (20 s, 320 s]: nothing
    assert (quiet["liq_notional_1m"], quiet["liq_count_5m"]) == (0.0, 0.0)
    assert math.isnan(quiet["liq_imbalance_5m"])
    both = at(vecs, T0 + 360 * S)  # (300 s, 360 s] and (60 s, 360 s]: the BUY and the second SELL
    assert both["liq_notional_1m"] == 100.0 + 98.0
    assert both["liq_count_5m"] == 2.0
    assert both["liq_imbalance_5m"] == (98.0 - 100.0) / (98.0 + 100.0)
    later = at(vecs, T0 + 400 * S)  # (340 s, 400 s]: only the second SELL; (100 s, 400 s]: both
    assert (later["liq_notional_1m"], later["liq_count_5m"]) == (98.0, 2.0)
    assert later["liq_imbalance_5m"] == (98.0 - 100.0) / (98.0 + 100.0)
    kernel = state.symbol(common_pb2.SIMULATOR, "BTCUSDT").kernel
    assert kernel.held_app[d.I_LIQ_COUNT_5M] and kernel.held_app[d.I_LIQ_NOTIONAL_1M]
    # Open interest never came: those features cannot exist.
    assert math.isnan(later["oi_change_5m"]) and not kernel.held_app[d.I_OI_CHG_5M]


def test_a_quiet_five_minutes_has_no_imbalance_and_it_is_not_insufficient() -> None:
    state = FeatureState()
    run(usdm_stream(320, LIQUIDATIONS[:1]), state, ManualClock())
    kernel = state.symbol(common_pb2.SIMULATOR, "BTCUSDT").kernel
    assert not kernel.held_app[d.I_LIQ_IMB_5M] and kernel.held_app[d.I_LIQ_COUNT_5M]


OPEN_INTEREST = tuple((T0 + 30 * k * S, 1000.0 + 10.0 * k) for k in range(121))  # every 30 s for an hour


def test_open_interest_change_is_exact() -> None:
    vecs = vectors(run(usdm_stream(3_800, (), OPEN_INTEREST), FeatureState(), ManualClock()))
    f = at(vecs, T0 + 3_615 * S)  # now: 3600 s (2200); 5 min before: 3300 s (2100); 1 h before: 0 s (1000)
    assert f["oi_change_5m"] == 2200.0 / 2100.0 - 1.0
    assert f["oi_change_1h"] == 2200.0 / 1000.0 - 1.0
    early = at(vecs, T0 + 200 * S)
    assert math.isnan(early["oi_change_5m"])  # no sample 5 min before 200 s
    assert math.isnan(early["oi_change_1h"])
    assert at(vecs, T0 + 330 * S)["oi_change_5m"] == 1110.0 / 1010.0 - 1.0  # the samples at 330 s and 30 s
    stale = at(vecs, T0 + 3_781 * S)  # the newest sample (3600 s) is more than 180 s old
    assert math.isnan(stale["oi_change_5m"]) and math.isnan(stale["oi_change_1h"])
    assert all(math.isnan(at(vecs, T0 + 5 * S)[n]) for n in ("liq_notional_1m", "liq_count_5m"))


def test_samples_closer_than_the_spacing_replace_the_newest() -> None:
    samples = [(T0 + 10 * S, 500.0), (T0 + 20 * S, 600.0), (T0 + 21 * S, 610.0), (T0 + 22 * S, 620.0),
               (T0 + 22 * S, 999.0)]  # the last: no newer than the newest, ignored
    state = FeatureState()
    run(usdm_stream(30, (), samples), state, ManualClock())
    kernel = state.symbol(common_pb2.SIMULATOR, "BTCUSDT").kernel
    n = int(kernel.si[d.S_OI_END])
    assert n == 3
    assert list(kernel.oi_t[:n]) == [T0 + 10 * S, T0 + 20 * S, T0 + 22 * S]
    assert list(kernel.oi_v[:n]) == [500.0, 600.0, 620.0]


def test_spot_and_klines_have_no_derivatives() -> None:
    spot = vectors(run([tick_batch(k + 1, T0 + k * STEP_US) for k in range(700)], FeatureState(), ManualClock()))
    assert all(math.isnan(feats(spot[-1])[n]) for n in DERIVATIVES)
    n = 400
    open_us = np.arange(n, dtype=np.int64) * 60 * S + T0
    close = np.full(n, 100.0)
    ones = np.ones(n)
    res = fold_rows(d.new_kernel_state(), encode_bars(open_us, close, close + 1, close - 1, close, ones, ones * 100,
                                                      ones * 10, ones / 2, ones * 50))
    for name in DERIVATIVES:
        assert np.isnan(res.values[:, d.FEATURE_NAMES.index(name)]).all()


def test_bad_liquidations_and_open_interest_reject_the_batch() -> None:
    tb = tick_batch(1, T0)
    tb.liquidations.add(side=SELL, price=float("nan"), qty=1.0, avg_price=1.0, filled_qty=1.0, trade_time_us=T0)
    with pytest.raises(InvalidBatch) as bad:
        parse_batch(tb)
    assert bad.value.error_type == "invalid_price"
    tb = tick_batch(1, T0)
    tb.liquidations.add(price=1.0, qty=1.0, trade_time_us=T0)  # side unspecified
    with pytest.raises(InvalidBatch) as bad:
        parse_batch(tb)
    assert bad.value.error_type == "invalid_field"
    tb = tick_batch(1, T0)
    tb.open_interest.add(open_interest=-1.0, exchange_us=T0)
    with pytest.raises(InvalidBatch) as bad:
        parse_batch(tb)
    assert bad.value.error_type == "invalid_qty"


def test_stage_and_batch_driver_agree_on_derivatives() -> None:
    batches = usdm_stream(400, LIQUIDATIONS, OPEN_INTEREST[:14])
    frame = compute_frame(batches)
    state, clock = FeatureState(), ManualClock()
    streamed: list[features_pb2.FeatureVector] = []
    for i in range(0, len(batches), 37):  # the stage's micro-batches, split anywhere
        streamed += vectors(run(batches[i:i + 37], state, clock))
    expected = np.array([list(v.values) for v in streamed])
    np.testing.assert_array_equal(frame[list(d.FEATURE_NAMES)].to_numpy(), expected)  # NaN == NaN here
    last = frame.iloc[-1]
    assert all(math.isfinite(last[n]) for n in ("liq_notional_1m", "liq_count_5m", "liq_imbalance_5m",
                                                 "oi_change_5m"))
