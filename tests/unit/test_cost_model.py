"""Cost model cost-v3: components, fees, funding, quantiles, book walk, impact, the tables and their L1 cache."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from schemas import common_pb2, signal_pb2
from streams.decision.cost import (
    COST_V3,
    DEFAULT_FEES,
    POOLED,
    QUANTILES,
    VENUES,
    CostEstimate,
    CostModel,
    CostTableCache,
    CostTables,
    VenueFees,
    load_into_redis,
    packaged_tables,
    round_trip_walk_bps,
    walk_vwap,
)
from streams.runtime.clock import ManualClock
from streams.runtime.regimes import REGIME_LABELS, UNKNOWN_REGIME
from streams.runtime.settings import Settings
from streams.storage.cache import COST_ACTIVE_KEY, COST_TABLES_PREFIX, open_redis

pytestmark = pytest.mark.unit

SPOT, USDM = common_pb2.BINANCE_SPOT, common_pb2.BINANCE_USDM
LONG, SHORT, WAIT = signal_pb2.LONG, signal_pb2.SHORT, signal_pb2.WAIT
LOW_THICK = "vol_low_depth_thick"
HIGH_THIN = "vol_high_depth_thin"


def entry(base: float, *, n: int = 300, lam: float = 2.0, psi: float = 0.5, fallback: str = "") -> dict[str, Any]:
    """Quantiles base x (1, 2, 3, 5, 6, 8): p25 = base, p50 = 2 base, ..., p97.5 = 6 base, p99 = 8 base."""
    mult = dict(zip(QUANTILES, (1.0, 2.0, 3.0, 5.0, 6.0, 8.0), strict=True))
    return {"n": n, "quantiles": {q: base * m for q, m in mult.items()}, "impact": {"lambda": lam, "psi": psi},
            "confidence": n / (n + 100), "fallback": fallback}


def make_doc(version: str = "ct-test00000001", *, spot_high_thin: float = 0.5) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {}
    for venue in VENUES:
        cells = {regime: entry(0.1) for regime in REGIME_LABELS}
        cells[POOLED] = entry(0.1, n=2700)
        cells[UNKNOWN_REGIME] = entry(1.0, n=50, fallback="worst")
        tables[venue] = cells
    tables["spot"][HIGH_THIN] = entry(spot_high_thin)
    return {"format": 1, "model": COST_V3, "version": version, "fitted_at": "2026-01-01T00:00:00+00:00",
            "notional_usd": 10_000.0, "tables": tables,
            "adv_usd": {"spot:BTCUSDT": {"adv_usd": 1e9}, "spot:ETHUSDT": {"adv_usd": 4e8},
                        "usdm:BTCUSDT": {"adv_usd": 1e10}}}


@pytest.fixture
def tables() -> CostTables:
    return CostTables.from_json(make_doc())


@pytest.fixture
def model(tables: CostTables) -> CostModel:
    return CostModel(tables=tables)


def total_of(est: CostEstimate) -> float:
    return (est.fee_bps + est.spread_bps + est.slippage_bps + est.impact_bps + est.funding_bps
            + est.opportunity_bps)


# --- components -------------------------------------------------------------------------------------------------


OPPORTUNITY_5MIN = 0.05 * 1e4 * 5 / (365 * 24 * 60)


def test_spot_estimate_components_are_exact(model: CostModel) -> None:
    est = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 1.5, 5)
    assert est.fee_bps == 20.0                       # 2 x 10 bps spot taker
    assert est.spread_bps == 1.5
    assert est.slippage_bps == pytest.approx(0.2)    # p50 = 2 x 0.1
    assert est.impact_bps == 0.0                     # the reference notional
    assert est.funding_bps == 0.0
    assert est.opportunity_bps == pytest.approx(OPPORTUNITY_5MIN)
    assert est.total_bps == pytest.approx(20.0 + 1.5 + 0.2 + OPPORTUNITY_5MIN)
    assert est.quantile == "p50"
    assert est.confidence == pytest.approx(300 / 400)
    assert est.version == f"{COST_V3}/ct-test00000001"


@pytest.mark.parametrize("kwargs", [
    {},
    {"side": SHORT, "funding_rate": 0.0003},
    {"funding_rate": -0.0001, "notional_usd": 250_000.0},
    {"quantile": "p99", "notional_usd": 1_000.0},
    {"stressed": True, "maker": True},
    {"book": ([(100.0, 5.0), (99.9, 50.0)], [(100.1, 5.0), (100.2, 50.0)])},
])
@pytest.mark.parametrize("venue", [SPOT, USDM])
def test_components_sum_to_the_total(model: CostModel, venue: int, kwargs: dict[str, Any]) -> None:
    est = model.estimate(venue, "BTCUSDT", HIGH_THIN, 0.8, 15, **kwargs)
    assert est.total_bps == pytest.approx(total_of(est), abs=1e-12)
    assert est._fields == ("total_bps", "fee_bps", "spread_bps", "slippage_bps", "impact_bps", "funding_bps",
                           "opportunity_bps", "quantile", "confidence", "version")


def test_estimate_is_immutable(model: CostModel) -> None:
    est = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 1.0, 5)
    with pytest.raises(AttributeError):
        est.total_bps = 0.0  # type: ignore[misc]


def test_fees_per_venue_maker_taker_and_the_flat_override(tables: CostTables) -> None:
    model = CostModel(tables=tables)
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 10.0            # 2 x 5 taker
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 5, maker=True).fee_bps == 4.0  # 2 x 2 maker
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5, maker=True).fee_bps == 20.0
    assert model.estimate("usdm", "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 10.0
    # The simulator and an unset venue are priced as spot.
    assert model.estimate(common_pb2.SIMULATOR, "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 20.0
    assert model.estimate(common_pb2.VENUE_UNSPECIFIED, "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 20.0
    flat = CostModel(fee_bps=2.0, tables=tables)
    assert flat.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 4.0
    assert flat.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 5, maker=True).fee_bps == 4.0
    assert dict(DEFAULT_FEES) == {"spot": VenueFees(10.0, 10.0), "usdm": VenueFees(5.0, 2.0)}
    assert model.round_trip_fee_bps(USDM) == 10.0 and model.round_trip_fee_bps("usdm", maker=True) == 4.0
    assert model.round_trip_fee_bps(common_pb2.SIMULATOR) == 20.0 and flat.round_trip_fee_bps(SPOT) == 4.0


# --- funding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "horizon", "expected"), [
    (LONG, 480, 1.0),       # 1 bps per 8 h, a full interval
    (LONG, 60, 0.125),      # pro-rated: 60 / 480
    (SHORT, 60, -0.125),    # a SHORT receives a positive rate
    (SHORT, 5, -1.0 * 5 / 480),
    (WAIT, 60, 0.0),        # no side, no funding
])
def test_usdm_funding_is_signed_by_side_and_pro_rated(model: CostModel, side: int, horizon: int,
                                                      expected: float) -> None:
    est = model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, horizon, side=side, funding_rate=0.0001)
    assert est.funding_bps == pytest.approx(expected, abs=1e-15)


def test_negative_funding_pays_the_long(model: CostModel) -> None:
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 240, side=LONG,
                          funding_rate=-0.0002).funding_bps == pytest.approx(-1.0)
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 240, side=SHORT,
                          funding_rate=-0.0002).funding_bps == pytest.approx(1.0)


def test_funding_interval_is_a_setting(tables: CostTables) -> None:
    four_hourly = CostModel(tables=tables, funding_interval_h=4.0)
    assert four_hourly.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 60, funding_rate=0.0001).funding_bps == \
        pytest.approx(0.25)


@pytest.mark.parametrize("side", [LONG, SHORT])
def test_spot_has_no_funding(model: CostModel, side: int) -> None:
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 480, side=side, funding_rate=0.01).funding_bps == 0.0
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 480, side=side).funding_bps == 0.0  # rate unknown


def test_opportunity_cost_scales_with_horizon_and_rate(tables: CostTables) -> None:
    model = CostModel(tables=tables, opportunity_rate=0.10)
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 60).opportunity_bps == \
        pytest.approx(0.10 * 1e4 * 60 / 525_600)
    assert CostModel(tables=tables, opportunity_rate=0.0).estimate(
        SPOT, "BTCUSDT", LOW_THICK, 0.0, 60).opportunity_bps == 0.0


# --- quantiles and regimes --------------------------------------------------------------------------------------


def test_the_quantile_switch_reads_the_tables_values(model: CostModel) -> None:
    assert model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5).slippage_bps == pytest.approx(1.0)   # p50 = 2 x 0.5
    stressed = model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5, stressed=True)
    assert stressed.slippage_bps == pytest.approx(3.0) and stressed.quantile == "p97.5"          # 6 x 0.5
    explicit = model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5, quantile="p97.5")
    assert explicit.slippage_bps == stressed.slippage_bps
    by_quantile = {q: model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5, quantile=q).slippage_bps
                   for q in QUANTILES}
    assert by_quantile == pytest.approx({"p25": 0.5, "p50": 1.0, "p75": 1.5, "p95": 2.5, "p97.5": 3.0, "p99": 4.0})
    # an explicit quantile wins over stressed
    assert model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5, quantile="p25", stressed=True).quantile == "p25"


def test_packaged_tables_switch_to_their_p97_5(model: CostModel) -> None:
    tables = packaged_tables()
    real = CostModel(tables=tables)
    for venue in VENUES:
        for regime in REGIME_LABELS:
            e = tables.entry(venue, regime)
            assert real.estimate(venue, "BTCUSDT", regime, 0.0, 5).slippage_bps == e.quantiles["p50"]
            assert real.estimate(venue, "BTCUSDT", regime, 0.0, 5, stressed=True).slippage_bps == \
                e.quantiles["p97.5"]
            assert e.quantiles["p97.5"] >= e.quantiles["p50"]


def test_unknown_quantile_is_refused(model: CostModel, tables: CostTables) -> None:
    with pytest.raises(ValueError, match="unknown cost quantile"):
        model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5, quantile="p42")
    with pytest.raises(ValueError, match="unknown cost quantile"):
        CostModel(tables=tables, stressed_quantile="p100")


@pytest.mark.parametrize("regime", ["", "vol_extreme_depth_none", "VOL_LOW_DEPTH_THICK"])
def test_an_unknown_regime_is_charged_the_unknown_entry(model: CostModel, regime: str) -> None:
    est = model.estimate(SPOT, "BTCUSDT", regime, 0.0, 5)
    assert est.slippage_bps == pytest.approx(2.0)      # p50 of the "" entry (base 1.0)
    assert est.confidence == pytest.approx(50 / 150)


def test_packaged_unknown_regime_is_the_worst_of_the_regimes() -> None:
    tables = packaged_tables()
    for venue in VENUES:
        unknown = tables.entry(venue, UNKNOWN_REGIME)
        assert unknown.fallback == "worst"
        for q in QUANTILES:
            assert unknown.quantiles[q] == max(tables.entry(venue, r).quantiles[q] for r in REGIME_LABELS
                                               if tables.entry(venue, r).fallback == "")


# --- book walk and impact ---------------------------------------------------------------------------------------


BIDS = [(100.0, 10.0), (99.0, 100.0)]   # 1,000 USDT at the touch, then 9,900
ASKS = [(101.0, 10.0), (102.0, 100.0)]  # 1,010 at the touch, then 10,200


def test_walk_vwap_fills_level_by_level() -> None:
    vwap, filled = walk_vwap(ASKS, 2_030.0)   # 10 @ 101 (1,010) + 10 @ 102 (1,020)
    assert vwap == pytest.approx(2_030.0 / 20.0) and filled == 2_030.0
    vwap, filled = walk_vwap(ASKS, 1_000_000.0)
    assert filled == pytest.approx(1_010.0 + 10_200.0)
    assert vwap == pytest.approx((1_010.0 + 10_200.0) / 110.0)
    assert math.isnan(walk_vwap([], 10.0)[0])


def test_round_trip_walk_is_the_cost_beyond_the_touch() -> None:
    # buy 2,030: vwap 101.5 (0.5 beyond the ask); sell 2,030: 10 @ 100 + 10.303 @ 99 -> vwap below the bid
    sell_qty = 10.0 + 1_030.0 / 99.0
    expected = ((101.5 - 101.0) + (100.0 - 2_030.0 / sell_qty)) / 100.5 * 1e4
    assert round_trip_walk_bps(BIDS, ASKS, 2_030.0) == pytest.approx(expected)
    assert round_trip_walk_bps(BIDS, ASKS, 500.0) == 0.0     # inside the touch
    assert round_trip_walk_bps(BIDS, ASKS, 50_000.0) is None  # deeper than the book
    assert round_trip_walk_bps([], ASKS, 10.0) is None


def test_a_live_book_replaces_the_table_at_and_below_the_median(model: CostModel) -> None:
    walked = round_trip_walk_bps(BIDS, ASKS, 2_030.0)
    assert walked is not None
    est = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 99.5, 5, book=(BIDS, ASKS), notional_usd=2_030.0)
    assert est.slippage_bps == pytest.approx(walked)
    assert est.impact_bps == 0.0                         # the walk is at the order's notional
    assert est.confidence == pytest.approx(0.5 + 0.5 * 0.75)
    # above the median the table is a floor
    calm = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 99.5, 5, book=(BIDS, ASKS), notional_usd=500.0,
                          quantile="p99")
    assert calm.slippage_bps == pytest.approx(0.8)       # walk 0 < p99 0.8
    rough = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 99.5, 5, book=(BIDS, ASKS), notional_usd=2_030.0,
                           quantile="p99")
    assert rough.slippage_bps == pytest.approx(max(walked, 0.8))


def test_a_book_too_shallow_for_the_notional_falls_back_to_the_table(model: CostModel) -> None:
    est = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 1.0, 5, book=(BIDS[:1], ASKS[:1]))  # 10,000 > the touch
    assert est.slippage_bps == pytest.approx(0.2)
    assert est.confidence == pytest.approx(0.75)


def test_impact_is_the_power_law_size_term(model: CostModel) -> None:
    # lam 2, psi 0.5, BTCUSDT spot ADV 1e9, N0 1e4: 2 x (sqrt(1e5 / 1e9) - sqrt(1e4 / 1e9))
    est = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5, notional_usd=100_000.0)
    assert est.impact_bps == pytest.approx(2.0 * (math.sqrt(1e-4) - math.sqrt(1e-5)))
    # ETHUSDT has its own ADV; an unknown symbol gets the venue's smallest (4e8: the most impact)
    eth = model.estimate(SPOT, "ETHUSDT", LOW_THICK, 0.0, 5, notional_usd=100_000.0)
    assert eth.impact_bps == pytest.approx(2.0 * (math.sqrt(1e5 / 4e8) - math.sqrt(1e4 / 4e8)))
    assert model.estimate(SPOT, "DOGEUSDT", LOW_THICK, 0.0, 5, notional_usd=100_000.0).impact_bps == \
        eth.impact_bps
    # a smaller order saves some of the walk ...
    small = model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5, notional_usd=1.0)
    assert small.impact_bps == pytest.approx(2.0 * (math.sqrt(1 / 1e9) - math.sqrt(1e-5)))
    # ... but never more than all of it
    doc = make_doc()
    doc["tables"]["spot"][LOW_THICK]["impact"]["lambda"] = 1_000.0
    steep = CostModel(tables=CostTables.from_json(doc)).estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5, notional_usd=1.0)
    assert steep.slippage_bps == pytest.approx(0.2) and steep.impact_bps == pytest.approx(-0.2)
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5, notional_usd=10_000.0).impact_bps == 0.0


def test_order_notional_is_a_model_setting(tables: CostTables) -> None:
    model = CostModel(tables=tables, notional_usd=100_000.0)
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).impact_bps == pytest.approx(
        2.0 * (math.sqrt(1e-4) - math.sqrt(1e-5)))


# --- the tables artifact ----------------------------------------------------------------------------------------


def test_packaged_tables_cover_every_venue_and_regime() -> None:
    tables = packaged_tables()
    assert tables.version.startswith("ct-") and len(tables.version) == 15
    assert tables.model_version == f"{COST_V3}/{tables.version}"
    assert tables.notional_usd == 10_000.0
    for venue in VENUES:
        for regime in (*REGIME_LABELS, UNKNOWN_REGIME, POOLED):
            e = tables.entry(venue, regime)
            assert 0.0 <= e.confidence <= 1.0 and e.n > 0
            assert list(e.quantiles.values()) == sorted(e.quantiles.values())
            assert e.impact_psi > 0.0 and e.impact_lambda >= 0.0
        assert tables.adv(venue, "BTCUSDT") > 1e8
    sources = tables.doc["sources"]
    assert any(s["file"] == "btcusdt_20240808.gz" for s in sources)
    assert all(len(s["sha256"]) == 64 for s in sources)


def test_a_table_missing_a_regime_is_refused() -> None:
    doc = make_doc()
    del doc["tables"]["usdm"]["vol_medium_depth_medium"]
    with pytest.raises(ValueError, match="lack usdm:vol_medium_depth_medium"):
        CostTables.from_json(doc)
    doc = make_doc()
    doc["tables"]["spot"][LOW_THICK]["quantiles"]["p99"] = 0.0   # below p97.5
    with pytest.raises(ValueError, match="non-decreasing"):
        CostTables.from_json(doc)
    with pytest.raises(ValueError, match="not a cost-v3 table artifact"):
        CostTables.from_json({**make_doc(), "model": "cost-v2"})


def test_redis_fields_round_trip(tables: CostTables) -> None:
    fields = tables.redis_fields()
    assert set(fields) >= {f"{v}:{r}" for v in VENUES for r in (*REGIME_LABELS, "")}
    assert fields["adv:spot:BTCUSDT"] == b"1000000000.0"


# --- L1 cache over Redis ----------------------------------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def test_l1_serves_a_redis_update_only_after_the_ttl(client: redis.Redis, tables: CostTables) -> None:
    load_into_redis(client, CostTables.from_json(make_doc(spot_high_thin=0.5)))
    clock = ManualClock(1_000_000)
    cache = CostTableCache(tables, clock, client, ttl_us=200_000)
    model = CostModel(tables=cache)
    assert model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5).slippage_bps == pytest.approx(1.0)
    # an operator rewrites the field of the active version
    updated = CostTables.from_json(make_doc(spot_high_thin=2.0))
    client.hset(COST_TABLES_PREFIX + updated.version, f"spot:{HIGH_THIN}",
                updated.redis_fields()[f"spot:{HIGH_THIN}"])
    clock.advance_us(199_999)
    assert model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5).slippage_bps == pytest.approx(1.0)   # not before
    clock.advance_us(1)
    assert model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5).slippage_bps == pytest.approx(4.0)   # after
    assert cache.stats.redis_reads == 2 and cache.stats.fallbacks == 0


def test_l1_follows_a_new_active_version_after_the_ttl(client: redis.Redis, tables: CostTables) -> None:
    load_into_redis(client, CostTables.from_json(make_doc("ct-aaaaaaaaaaaa")))
    clock = ManualClock(0)
    model = CostModel(tables=CostTableCache(tables, clock, client, ttl_us=150_000))
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).version == f"{COST_V3}/ct-aaaaaaaaaaaa"
    load_into_redis(client, CostTables.from_json(make_doc("ct-bbbbbbbbbbbb", spot_high_thin=3.0)))
    assert client.get(COST_ACTIVE_KEY) == b"ct-bbbbbbbbbbbb"
    clock.advance_us(149_999)
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).version == f"{COST_V3}/ct-aaaaaaaaaaaa"
    clock.advance_us(1)
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).version == f"{COST_V3}/ct-bbbbbbbbbbbb"
    assert model.estimate(SPOT, "BTCUSDT", HIGH_THIN, 0.0, 5).slippage_bps == pytest.approx(6.0)
    # each (venue, regime) has its own L1 entry; ADV is cached too
    assert model.estimate(SPOT, "ETHUSDT", LOW_THICK, 0.0, 5, notional_usd=1e5).impact_bps > 0


def test_l1_hits_do_not_touch_redis(client: redis.Redis, tables: CostTables) -> None:
    load_into_redis(client, tables)
    clock = ManualClock(0)
    cache = CostTableCache(tables, clock, client, ttl_us=200_000)
    for _ in range(100):
        cache.entry("spot", LOW_THICK)
        clock.advance_us(1_000)
    assert cache.stats.redis_reads == 1


def test_no_redis_means_the_packaged_artifact() -> None:
    clock = ManualClock(0)
    cache = CostTableCache(packaged_tables(), clock, None)
    model = CostModel(tables=cache)
    expected = packaged_tables().entry("usdm", LOW_THICK)
    est = model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 5)
    assert est.slippage_bps == expected.quantiles["p50"] and est.version == packaged_tables().model_version
    assert CostModel().tables is packaged_tables()   # the default source


def test_redis_without_tables_means_the_artifact(client: redis.Redis, tables: CostTables) -> None:
    cache = CostTableCache(tables, ManualClock(0), client)
    assert cache.entry("spot", HIGH_THIN) is tables.entry("spot", HIGH_THIN)
    assert cache.stats.fallbacks == 1


def test_unreachable_redis_serves_the_artifact_and_backs_off(tmp_path: Any, tables: CostTables) -> None:
    dead = open_redis(f"unix://{tmp_path / 'none.sock'}", timeout_s=0.2)
    clock = ManualClock(0)
    cache = CostTableCache(tables, clock, dead, ttl_us=200_000, retry_us=5_000_000)
    assert cache.entry("spot", LOW_THICK) is tables.entry("spot", LOW_THICK)
    assert cache.stats.redis_errors == 1
    for _ in range(20):  # past the TTL, but within the retry delay: Redis is not tried again
        clock.advance_us(200_000)
        cache.entry("spot", LOW_THICK)
    assert cache.stats.redis_errors == 1
    clock.advance_us(1_000_000)
    cache.entry("spot", LOW_THICK)
    assert cache.stats.redis_errors == 2


def test_a_redis_outage_keeps_the_last_value_read(client: redis.Redis, tables: CostTables) -> None:
    load_into_redis(client, CostTables.from_json(make_doc("ct-cccccccccccc", spot_high_thin=3.0)))
    clock = ManualClock(0)
    cache = CostTableCache(tables, clock, client, ttl_us=100_000, retry_us=1_000_000)
    assert cache.entry("spot", HIGH_THIN).quantiles["p50"] == pytest.approx(6.0)
    cache.client = open_redis("unix:///nonexistent/redis.sock", timeout_s=0.2)
    clock.advance_us(100_000)
    stale = cache.entry("spot", HIGH_THIN)
    assert stale.quantiles["p50"] == pytest.approx(6.0) and stale.version.endswith("ct-cccccccccccc")
    assert cache.stats.redis_errors == 1


def test_from_settings_builds_fees_quantiles_and_the_cache(client: redis.Redis) -> None:
    settings = Settings.defaults().model_copy(update={
        "fee_spot_taker_bps": 7.5, "fee_usdm_taker_bps": 4.5, "cost_stressed_quantile": "p99",
        "cost_l1_ttl_ms": 120.0, "cost_notional_usd": 10_000.0})
    clock = ManualClock(0)
    model = CostModel.from_settings(settings, clock=clock, client=client)
    assert isinstance(model.tables, CostTableCache) and model.tables.ttl_us == 120_000
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 15.0
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 5).fee_bps == 9.0
    assert model.estimate(USDM, "BTCUSDT", LOW_THICK, 0.0, 5, stressed=True).quantile == "p99"
    assert CostModel.from_settings(settings).tables is packaged_tables()


# --- one list of regimes, legacy API ----------------------------------------------------------------------------


def test_one_list_of_regimes() -> None:
    from streams.decision import cost
    from streams.features import definitions

    assert cost.REGIMES is REGIME_LABELS
    assert definitions.REGIME_LABELS == REGIME_LABELS
    assert [definitions.regime_label(i) for i in range(9)] == list(REGIME_LABELS)


def test_the_cost_model_does_not_import_the_feature_kernel() -> None:
    code = ("import sys, streams.decision.cost, streams.decision.core; "
            "print('numba' in sys.modules, 'streams.features' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_legacy_round_trip_is_unchanged(tables: CostTables) -> None:
    legacy = CostModel(fee_bps=2.0, tables=tables)
    assert legacy.round_trip_cost_bps(LOW_THICK, 1.5) == pytest.approx(4.0 + 1.5 + 0.5)
    assert legacy.round_trip_cost_bps("", 0.0) == 4.0 + 5.0
    assert legacy.version == "cost-v2"
    doc = copy.deepcopy(make_doc())
    assert CostTables.from_json(doc) == tables


def test_fixed_tables_price_as_cost_v2_did() -> None:
    from streams.decision.cost import SLIPPAGE_BPS

    model = CostModel(fee_bps=2.0, tables=CostTables.fixed(SLIPPAGE_BPS), opportunity_rate=0.0)
    for regime, slippage in SLIPPAGE_BPS.items():
        for venue in (SPOT, USDM):
            est = model.estimate(venue, "BTCUSDT", regime, 1.5, 5, stressed=True)
            assert est.total_bps == pytest.approx(model.round_trip_cost_bps(regime, 1.5)) == \
                pytest.approx(4.0 + 1.5 + slippage)
    assert model.estimate(SPOT, "BTCUSDT", "", 0.0, 5).total_bps == 4.0 + 5.0
    assert model.estimate(SPOT, "BTCUSDT", LOW_THICK, 0.0, 5).version == f"{COST_V3}/ct-fixed"
