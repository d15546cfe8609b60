"""Unit tests of the feature contract: formulas (exact values), the table, feature_version and the generated docs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from streams.features import definitions as d
from streams.features.docs import DOCS_PATH, render

pytestmark = pytest.mark.unit

CONTRACT = ("spread_bps", "qi_l1", "qi_l5", "microprice_dev", "ofi_1s", "rv_1m")
ORIGINAL_15 = ("spread_bps", "qi_l1", "qi_l5", "microprice_dev", "ofi_1s", "ofi_5s", "trade_imbalance_5s",
               "trade_intensity_5s", "ret_1s", "ret_10s", "ret_60s", "rv_1m", "vwap_gap_bps_30s", "depth_l10_log",
               "time_since_trade_s")


def test_the_table_is_a_stable_contract() -> None:
    names = d.FEATURE_NAMES
    assert len(names) == len(set(names)) >= 50
    assert names[:15] == ORIGINAL_15  # the original columns keep their positions
    assert set(CONTRACT) <= set(names)
    assert {f.category for f in d.FEATURES} == set(d.CATEGORIES)
    assert {f.tier for f in d.FEATURES} == {d.TIER_FAST, d.TIER_MEDIUM, d.TIER_SLOW}
    for f in d.FEATURES:
        assert f.doc and f.unit and callable(f.formula), f.name
        assert f.window_s is None or f.window_s > 0
    # The categories, by representative names.
    for name in ("qi_l10", "depth_slope_bid", "touch_void_bid_bps", "book_pressure", "ofi_30s",
                 "trade_sign_imbalance_5s", "buy_intensity_5s", "sell_intensity_5s", "large_trade_share_30s",
                 "vwap_gap_bps_5m", "ret_5m", "ret_1h", "ret_accel_10s", "rv_5m", "rv_1h", "parkinson_5m",
                 "rv_ratio_5m_1h", "trade_interarrival_s", "funding_rate_bps", "basis_bps", "hawkes_buy_intensity",
                 "book_age_s", "feature_age_medium_s", "quality_score", "coverage_1m"):
        assert name in names
    assert len(d.REGIME_LABELS) == 9
    assert d.new_kernel_state().tier.tolist() == [f.tier for f in d.FEATURES]


def test_original_formulas() -> None:
    assert d.spread_bps(100.0, 100.5) == 0.5 / 100.25 * 1e4
    assert d.queue_imbalance(3.0, 1.0) == 0.5 and math.isnan(d.queue_imbalance(0.0, 0.0))
    micro = (100.5 * 2.0 + 100.0 * 1.0) / 3.0
    assert d.microprice_dev(100.0, 2.0, 100.5, 1.0) == (micro - 100.25) / 100.25
    assert d.ofi_normalised(3.0, 6.0, 4.0) == 2.0 and math.isnan(d.ofi_normalised(1.0, 0.0, 0.0))
    assert d.trade_imbalance(3.0, 1.0, 2.0) == 0.5 and math.isnan(d.trade_imbalance(0.0, 0.0, 0.0))
    assert d.realized_vol(0.02, 30, 60) == math.sqrt(0.02 * 60 / 30) and math.isnan(d.realized_vol(1.0, 0, 60))
    assert d.vwap_gap_bps(101.0, 200.0, 2.0, 2.0) == 1.0 / 100.0 * 1e4


def test_book_and_flow_formulas() -> None:
    assert d.depth_slope(20.0, 99.0, 100.0) == math.log(20.0 / 100.0)
    assert math.isnan(d.depth_slope(20.0, 100.0, 100.0)) and math.isnan(d.depth_slope(0.0, 99.0, 100.0))
    sb, sa = 20.0 / 100.0, 10.0 / 200.0
    assert d.slope_imbalance(20.0, 99.0, 10.0, 102.0, 100.0) == (sb - sa) / (sb + sa)
    assert d.touch_void_bps(100.0, 99.5, 100.25) == 0.5 / 100.25 * 1e4
    b = np.array([3.0, 1.0, 2.0])
    a = np.array([1.0, 1.0, 4.0])
    num = (3.0 - 1.0) + (1.0 - 1.0) / 2 + (2.0 - 4.0) / 3
    den = (3.0 + 1.0) + (1.0 + 1.0) / 2 + (2.0 + 4.0) / 3
    assert d.book_pressure(b, a, 3) == num / den
    assert d.count_imbalance(3.0, 1.0) == 0.5 and math.isnan(d.count_imbalance(0.0, 0.0))
    assert d.trade_intensity(10.0, 4.0) == 2.5
    assert d.log_rate(200.0, 2.0) == math.log(100.0) and math.isnan(d.log_rate(0.0, 2.0))
    assert d.share(1.0, 4.0) == 0.25 and math.isnan(d.share(1.0, 0.0))
    assert d.kyle_lambda(2e-4, 4e12) == 2e-4 / 4e12 * 1e4 * 1e6 and math.isnan(d.kyle_lambda(1.0, 0.0))
    assert d.amihud(3e-9, 3) == 1e-9 * 1e4 * 1e6
    assert d.zscore(3.0, 1.0, 4.0) == 0.5 and math.isnan(d.zscore(1.0, 1.0, 0.0))


def test_hawkes_formulas() -> None:
    assert d.decayed(2.0, 10.0, 10.0) == 2.0 * math.exp(-1.0)
    assert d.hawkes_intensity(2.0, 10.0, 10.0) == 2.0 * math.exp(-1.0) / 10.0
    # Counts 0,2,0,2: mean 1, variance 1, VMR 1 -> Poisson-like, no excitation.
    assert d.hawkes_branching(4.0, 8.0, 4) == 0.0
    # Counts 0,4,0,4: mean 2, variance 4, VMR 2 -> n = 1 - 1/sqrt(2).
    assert d.hawkes_branching(8.0, 32.0, 4) == 1.0 - 1.0 / math.sqrt(2.0)
    assert math.isnan(d.hawkes_branching(0.0, 0.0, 4))


def test_price_and_volatility_formulas() -> None:
    assert d.acceleration(103.0, 102.0, 100.0) == math.log(103.0 / 102.0) - math.log(102.0 / 100.0)
    assert d.parkinson_vol(0.0004, 4, 5) == math.sqrt(0.0004 / (4.0 * math.log(2.0)) * 5 / 4)
    assert d.vol_ratio(1e-6, 2, 4e-6, 4) == math.sqrt((1e-6 / 2) / (4e-6 / 4))
    assert d.variance_ratio(5e-6, 1, 1e-6, 1, 5) == (5e-6 / 1) / (5 * 1e-6 / 1)
    assert math.isnan(d.vol_ratio(1.0, 1, 0.0, 1)) and math.isnan(d.variance_ratio(1.0, 1, 0.0, 1, 5))


def test_time_meta_and_derivatives_formulas() -> None:
    mean, var = d.ewm_moments(0.5, 0.0, 1.5, 0.5)
    assert (mean, var) == (1.0, 0.5 * (0.0 + 0.5 * 1.0))
    assert d.burstiness(1.0, 0.0) == -1.0 and d.burstiness(1.0, 1.0) == 0.0
    assert d.ewma_update(1.0, 3.0, 0.25) == 1.5
    assert d.time_of_day_sin(6 * 3_600_000_000) == math.sin(math.pi / 2)
    assert d.time_of_day_cos(86_400_000_000 + 12 * 3_600_000_000) == math.cos(math.pi)
    assert d.seconds_since(3_500_000, 1_000_000) == 2.5 and d.seconds_since(1, 2) == 0.0
    assert d.hours_until(7_200_000_000, 0) == 2.0
    assert d.to_bps(0.0001) == 0.0001 * 1e4
    assert d.relative_bps(100.1, 100.0) == (100.1 - 100.0) / 100.0 * 1e4
    assert d.fraction(3.0, 2.0) == 1.0 and d.fraction(1.0, 4.0) == 0.25
    assert d.quality_score(3.0, 4.0) == 0.75


def test_regime_and_quantiles() -> None:
    assert d.regime_index(1.0, 5.0, 2.0, 3.0, 4.0, 6.0) == 0 * 3 + 1
    assert d.regime_label(d.regime_index(9.0, 9.0, 2.0, 3.0, 4.0, 6.0)) == "vol_high_depth_thick"
    assert d.regime_index(math.nan, 1.0, 0.0, 1.0, 0.0, 1.0) == -1 and d.regime_label(-1) == ""
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 7.0])
    sorted_values = d._sorted(values)
    np.testing.assert_array_equal(sorted_values, np.sort(values))
    for q in (0.0, 1 / 3, 0.5, 2 / 3, 1.0):
        assert d.interpolated_quantile(sorted_values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-15)


def test_feature_version_tracks_names_tiers_windows_and_formulas() -> None:
    base = d.feature_version()
    assert base == d.FEATURE_VERSION and len(base) == 12

    def other(bid: float, ask: float) -> float:
        return (ask - bid) / bid * 1e4

    variants = [
        tuple(dataclasses.replace(f, tier=d.TIER_SLOW) if f.name == "ofi_30s" else f for f in d.FEATURES),
        tuple(dataclasses.replace(f, window_s=45.0) if f.name == "ofi_30s" else f for f in d.FEATURES),
        tuple(dataclasses.replace(f, name="x") if f.name == "qi_l10" else f for f in d.FEATURES),
        tuple(dataclasses.replace(f, formula=other) if f.name == "spread_bps" else f for f in d.FEATURES),
        d.FEATURES[:-1],
    ]
    versions = {d.feature_version(v) for v in variants}
    assert len(versions) == len(variants) and base not in versions
    # Documentation does not change the version; code does.
    assert d.code_text('def f(x):\n    """Doc."""\n    # why\n    return x  # note\n') == "def f(x):\nreturn x"
    assert d.code_text("def f(x):\n    return x + 1\n") != d.code_text("def f(x):\n    return x\n")


def test_docs_are_generated_from_the_code() -> None:
    text = render()
    assert DOCS_PATH.read_text(encoding="utf-8") == text, "docs/features.md is stale: python -m streams.features.docs"
    assert d.FEATURE_VERSION in text
    for f in d.FEATURES:
        assert f"| `{f.name}` |" in text
