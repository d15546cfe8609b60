"""Decision core: thresholds, tiers, cost per regime, cooldown and WAIT transitions, on a ManualClock."""

from __future__ import annotations

import math

import pytest

from schemas import SCHEMA_VERSION, common_pb2, prediction_pb2, signal_pb2
from streams.decision import stage
from streams.decision.core import DecisionState, evaluate, process
from streams.decision.cost import COST_MODEL_VERSION, REGIMES, SLIPPAGE_BPS, CostModel
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs, StageContext
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000
SECOND = 1_000_000


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "fee_bps": 2.0, "min_edge": 0.04, "tier_a_utility_bps": 4.0, "tier_b_utility_bps": 1.0,
        "cooldown_s": 30.0, "decision_horizon_min": 5,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def pred(
    p_up: float,
    *,
    i: int = 1,
    symbol: str = "BTCUSDT",
    regime: str = "vol_low_depth_thick",
    spread_bps: float = 1.0,
    horizons: tuple[int, ...] = (5, 10),
    exchange_us: int = T0 - 50_000,
) -> prediction_pb2.Prediction:
    return prediction_pb2.Prediction(
        schema_version=SCHEMA_VERSION,
        prediction_id=f"{symbol}:{i}:m7",
        venue=common_pb2.BINANCE_SPOT,
        symbol=symbol,
        model_version="m7",
        feature_version="f3",
        horizons=[prediction_pb2.HorizonProbability(horizon_min=h, p_up=p_up if h == horizons[0] else 0.5)
                  for h in horizons],
        regime=regime,
        mid_price=64_000.5,
        spread_bps=spread_bps,
        top_features=[prediction_pb2.FeatureContribution(name="ofi_1s", value=0.7, contribution=0.12)],
        data_window_id=f"{symbol}:10-12",
        ts=common_pb2.Timestamps(exchange_us=exchange_us, ingest_us=exchange_us + 1000,
                                 features_us=exchange_us + 2000, infer_us=exchange_us + 3000),
        quality_flags=[common_pb2.SIMULATED, common_pb2.SEQUENCE_GAP],
    )


def run(state: DecisionState, clock: ManualClock, *preds: prediction_pb2.Prediction) -> Outputs:
    return process([InRecord(value=p, key=p.symbol) for p in preds], state, clock)


def decisions(out: Outputs) -> list[tuple[str, str, str]]:
    return [(e.key, signal_pb2.Decision.Name(e.value.decision),  # type: ignore[attr-defined]
             signal_pb2.Tier.Name(e.value.tier)) for e in out.emits]  # type: ignore[attr-defined]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# --- cost model ---------------------------------------------------------------------------------------------

EXPECTED_SLIPPAGE = {
    "vol_low_depth_thick": 0.5, "vol_low_depth_medium": 1.0, "vol_low_depth_thin": 2.0,
    "vol_medium_depth_thick": 1.0, "vol_medium_depth_medium": 1.5, "vol_medium_depth_thin": 3.0,
    "vol_high_depth_thick": 2.0, "vol_high_depth_medium": 3.0, "vol_high_depth_thin": 5.0,
}


def test_slippage_table_covers_exactly_the_nine_regimes() -> None:
    assert set(REGIMES) == set(SLIPPAGE_BPS) == set(EXPECTED_SLIPPAGE)
    assert len(REGIMES) == 9


@pytest.mark.parametrize(("regime", "slippage"), sorted(EXPECTED_SLIPPAGE.items()))
def test_round_trip_cost_per_regime(regime: str, slippage: float) -> None:
    model = CostModel(fee_bps=2.0)
    # 2 x 2 bps fee + 2 x (1.5 / 2) half spread + slippage
    assert model.round_trip_cost_bps(regime, 1.5) == pytest.approx(4.0 + 1.5 + slippage, abs=1e-12)


@pytest.mark.parametrize("regime", ["", "vol_extreme_depth_none", "VOL_LOW_DEPTH_THICK"])
def test_unknown_regime_is_charged_the_worst_slippage(regime: str) -> None:
    model = CostModel(fee_bps=2.0)
    assert model.round_trip_cost_bps(regime, 0.0) == 4.0 + 5.0


def test_expected_move_table_and_sqrt_scaling() -> None:
    model = CostModel(fee_bps=0.0)
    assert model.expected_moves(0.9, 5).long_bps == pytest.approx(16.0)     # (2*0.9-1) * 20
    assert model.expected_moves(0.1, 5).short_bps == pytest.approx(16.0)    # symmetric
    assert model.expected_moves(0.1, 5).long_bps == pytest.approx(-16.0)
    assert model.expected_moves(0.5, 60).long_bps == 0.0
    assert model.expected_moves(0.75, 10).long_bps == pytest.approx(14.0)  # 0.5 * 28
    assert model.expected_moves(0.3, 5).breakeven_p == 0.5
    assert model.horizon_move_bps(20) == pytest.approx(40.0)                # 20 * sqrt(20 / 5)
    assert model.version == COST_MODEL_VERSION == "cost-v2"


def test_expected_moves_under_asymmetric_barriers() -> None:
    model = CostModel(fee_bps=0.0)
    # +60 / -40 bps, "not up" = lower barrier first: p* = 40 / 100.
    moves = model.expected_moves(0.5, 5, upper_bps=60.0, lower_bps=40.0)
    assert moves.breakeven_p == pytest.approx(0.4)
    assert moves.long_bps == pytest.approx(0.5 * 60 - 0.5 * 40)   # 10
    assert moves.short_bps == pytest.approx(0.5 * 40 - 0.5 * 60)  # -10
    assert model.expected_moves(0.4, 5, upper_bps=60.0, lower_bps=40.0).long_bps == pytest.approx(0.0)
    # Timeouts inside "not up": the LONG charges them as full losses, and no SHORT can be priced.
    moves = model.expected_moves(0.05, 5, upper_bps=60.0, lower_bps=40.0, timeout_counts_as_not_up=True)
    assert moves.long_bps == pytest.approx(0.05 * 60 - 0.95 * 40)
    assert moves.short_bps is None
    # Barriers not stated (0): the table's symmetric B.
    assert model.expected_moves(0.9, 5, upper_bps=0.0, lower_bps=40.0).long_bps == pytest.approx(16.0)


def barrier_pred(p_up: float, upper: float, lower: float, timeout_not_up: bool) -> prediction_pb2.Prediction:
    p = pred(p_up, horizons=(5,))
    h = p.horizons[0]
    h.upper_barrier_bps, h.lower_barrier_bps, h.timeout_counts_as_not_up = upper, lower, timeout_not_up
    return p


def test_a_not_up_model_never_reads_a_small_p_up_as_a_short(clock: ManualClock) -> None:
    """The klines model's p_up is P(+0.6 % before -0.4 % or timeout): small by construction. cost-v1 read
    p = 0.03 as a confident SHORT; now it is a WAIT-worthy LONG with a negative expectation."""
    state = DecisionState.from_settings(settings(cooldown_s=0))
    assert run(state, clock, barrier_pred(0.03, 60.0, 40.0, True)).emits == []
    ev = evaluate(barrier_pred(0.03, 60.0, 40.0, True), state.config, state.cost)
    assert ev.decision == signal_pb2.WAIT
    assert ev.expected_return_bps == pytest.approx(0.03 * 60 - 0.97 * 40)
    # The same p from a model whose "not up" is "down first" is a SHORT worth 0.97*40 - 0.03*60 = 37 bps.
    (emit,) = run(state, clock, barrier_pred(0.03, 60.0, 40.0, False)).emits
    assert isinstance(emit.value, signal_pb2.Signal)
    assert emit.value.decision == signal_pb2.SHORT
    assert emit.value.expected_return_bps == pytest.approx(0.97 * 40 - 0.03 * 60)


def test_long_edge_is_measured_from_the_break_even_probability(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings(cooldown_s=0, min_edge=0.04))
    # p* = 0.4 with +60/-40: p = 0.45 is a LONG edge of 0.05 (>= 0.04) worth 0.45*60 - 0.55*40 = 5 bps,
    # minus 4 (fees) + 1 (spread) + 0.5 (slippage) = 5.5 bps of cost: net -0.5, below tier B, so WAIT.
    assert evaluate(barrier_pred(0.45, 60.0, 40.0, True), state.config, state.cost).decision == signal_pb2.WAIT
    # p = 0.5: 0.5*60 - 0.5*40 = 10 bps, net 4.5 >= tier A (4): LONG tier A, though p - 0.5 is 0 < min_edge.
    ev = evaluate(barrier_pred(0.5, 60.0, 40.0, True), state.config, state.cost)
    assert (ev.decision, ev.tier) == (signal_pb2.LONG, signal_pb2.TIER_A)
    assert ev.net_utility_bps == pytest.approx(10.0 - 5.5)
    # p = 0.42 clears the cost nowhere and its edge (0.02) is below min_edge.
    assert evaluate(barrier_pred(0.42, 60.0, 40.0, False), state.config, state.cost).decision == signal_pb2.WAIT


def test_signal_carries_cost_for_its_regime(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings(cooldown_s=0))
    out = run(state, clock, pred(0.9, regime="vol_high_depth_thin", spread_bps=2.0),
              pred(0.9, symbol="ETHUSDT", regime="nonsense"))
    btc, eth = (e.value for e in out.emits)
    assert isinstance(btc, signal_pb2.Signal) and isinstance(eth, signal_pb2.Signal)
    assert btc.estimated_cost_bps == pytest.approx(4.0 + 2.0 + 5.0)
    assert btc.net_utility_bps == pytest.approx(16.0 - 11.0)
    assert eth.estimated_cost_bps == pytest.approx(4.0 + 1.0 + 5.0)  # unknown regime -> worst slippage


# --- thresholds and tiers ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("p_up", "expected"),
    [
        (0.90, [("BTCUSDT", "LONG", "TIER_A")]),    # expected 16.0, cost 5.5, net 10.5 >= 4
        (0.70, [("BTCUSDT", "LONG", "TIER_B")]),    # expected 8.0, net 2.5 in [1, 4)
        (0.10, [("BTCUSDT", "SHORT", "TIER_A")]),
        (0.30, [("BTCUSDT", "SHORT", "TIER_B")]),
        (0.65, []),                                 # expected 6.0, net 0.5 < tier B: WAIT, never emitted first
        (0.50, []),
    ],
)
def test_decision_and_tier_from_edge_and_net_utility(
    clock: ManualClock, p_up: float, expected: list[tuple[str, str, str]]
) -> None:
    out = run(DecisionState.from_settings(settings()), clock, pred(p_up))
    assert decisions(out) == expected
    assert out.rejects == []


def test_tier_boundaries_are_inclusive(clock: ManualClock) -> None:
    # p=0.75: expected 0.5*20 = 10. Spread 1.5 -> cost 6.0, net exactly 4.0 (tier A); spread 4.5 -> net 1.0 (B).
    state = DecisionState.from_settings(settings(cooldown_s=0))
    out = run(state, clock, pred(0.75, spread_bps=1.5), pred(0.75, symbol="ETHUSDT", spread_bps=4.5),
              pred(0.75, symbol="SOLUSDT", spread_bps=4.51))
    assert [e.value.net_utility_bps for e in out.emits] == [4.0, 1.0]  # type: ignore[attr-defined]
    assert decisions(out) == [("BTCUSDT", "LONG", "TIER_A"), ("ETHUSDT", "LONG", "TIER_B")]


def test_min_edge_blocks_even_a_profitable_signal(clock: ManualClock) -> None:
    out = run(DecisionState.from_settings(settings(min_edge=0.45)), clock, pred(0.9), pred(0.1, symbol="ETHUSDT"))
    assert decisions(out) == []


def test_min_edge_is_symmetric_despite_float_rounding(clock: ManualClock) -> None:
    # 0.5 - 0.46 == 0.03999999999999998 in binary floating point; SHORT must still qualify like LONG at 0.54.
    state = DecisionState.from_settings(settings(tier_b_utility_bps=-100.0, tier_a_utility_bps=-100.0))
    out = run(state, clock, pred(0.54), pred(0.46, symbol="ETHUSDT"), pred(0.535, symbol="SOLUSDT"))
    assert decisions(out) == [("BTCUSDT", "LONG", "TIER_A"), ("ETHUSDT", "SHORT", "TIER_A")]


def test_signal_fields_are_copied_and_stamped(clock: ManualClock) -> None:
    p = pred(0.9)
    out = run(DecisionState.from_settings(settings()), clock, p)
    assert len(out.emits) == 1
    emit = out.emits[0]
    assert (emit.topic, emit.key, emit.exchange_us) == (Topic.SIGNALS, "BTCUSDT", T0 - 50_000)
    s = emit.value
    assert isinstance(s, signal_pb2.Signal)
    assert s.signal_id == "BTCUSDT:1:m7:5"
    assert s.schema_version == SCHEMA_VERSION
    assert s.venue == common_pb2.BINANCE_SPOT
    assert (s.decision, s.tier) == (signal_pb2.LONG, signal_pb2.TIER_A)
    assert s.p_up == 0.9 and s.horizon_min == 5
    assert s.expected_return_bps == pytest.approx(16.0)
    assert s.estimated_cost_bps == pytest.approx(5.5)
    assert s.net_utility_bps == pytest.approx(10.5)
    assert (s.regime, s.model_version, s.feature_version) == ("vol_low_depth_thick", "m7", "f3")
    assert s.cost_model_version == "cost-v2"
    assert s.data_window_id == "BTCUSDT:10-12"
    assert list(s.quality_flags) == [common_pb2.SIMULATED, common_pb2.SEQUENCE_GAP]
    assert [(f.name, f.value, f.contribution) for f in s.top_features] == [("ofi_1s", 0.7, 0.12)]
    assert s.price == 64_000.5
    assert s.cooldown_until_us == T0 + 30 * SECOND
    assert (s.ts.exchange_us, s.ts.ingest_us, s.ts.features_us, s.ts.infer_us, s.ts.decision_us) == (
        T0 - 50_000, T0 - 49_000, T0 - 48_000, T0 - 47_000, T0)
    assert signal_pb2.Signal.FromString(s.SerializeToString()) == s


def test_same_prediction_yields_the_same_signal_id(clock: ManualClock) -> None:
    first = run(DecisionState.from_settings(settings()), clock, pred(0.9))
    again = run(DecisionState.from_settings(settings()), clock, pred(0.9))  # e.g. redelivered after a restart
    assert [e.value.signal_id for e in first.emits] == [e.value.signal_id for e in again.emits]  # type: ignore[attr-defined]


def test_falls_back_to_the_first_horizon_present(clock: ManualClock) -> None:
    out = run(DecisionState.from_settings(settings()), clock, pred(0.9, horizons=(10, 30)))
    s = out.emits[0].value
    assert isinstance(s, signal_pb2.Signal)
    assert (s.horizon_min, s.signal_id) == (10, "BTCUSDT:1:m7:10")
    assert s.expected_return_bps == pytest.approx(0.8 * 28.0)


def test_configured_horizon_is_preferred_over_the_first(clock: ManualClock) -> None:
    p = pred(0.5, horizons=(10, 5))
    p.horizons[1].p_up = 0.9  # only the 5-minute horizon has an edge
    out = run(DecisionState.from_settings(settings()), clock, p)
    assert [(e.value.horizon_min, e.value.p_up) for e in out.emits] == [(5, 0.9)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mutate", "error_type"),
    [
        (lambda p: p.ClearField("horizons"), "no_horizons"),
        (lambda p: setattr(p.horizons[0], "p_up", math.nan), "invalid_probability"),
        (lambda p: setattr(p.horizons[0], "p_up", 1.5), "invalid_probability"),
        (lambda p: setattr(p, "spread_bps", -0.1), "invalid_spread"),
        (lambda p: setattr(p, "spread_bps", math.inf), "invalid_spread"),
    ],
)
def test_unpriceable_predictions_are_rejected(clock: ManualClock, mutate: object, error_type: str) -> None:
    bad = pred(0.9)
    mutate(bad)  # type: ignore[operator]
    out = run(DecisionState.from_settings(settings()), clock, bad, pred(0.9, symbol="ETHUSDT"))
    assert [r.error_type for r in out.rejects] == [error_type]
    assert out.rejects[0].record.value is bad
    assert decisions(out) == [("ETHUSDT", "LONG", "TIER_A")]  # the rest of the batch goes on


# --- cooldown and WAIT transitions --------------------------------------------------------------------------

def test_cooldown_and_wait_transition(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings())
    assert decisions(run(state, clock, pred(0.9, i=1))) == [("BTCUSDT", "LONG", "TIER_A")]

    clock.advance_us(10 * SECOND)
    assert decisions(run(state, clock, pred(0.9, i=2))) == []    # cooling: no new LONG
    assert decisions(run(state, clock, pred(0.1, i=3))) == []    # nor a flip to SHORT
    assert decisions(run(state, clock, pred(0.5, i=4))) == []    # nor WAIT while cooling

    clock.set_us(T0 + 30 * SECOND - 1)
    assert decisions(run(state, clock, pred(0.5, i=5))) == []    # one microsecond before the end

    clock.set_us(T0 + 30 * SECOND)
    out = run(state, clock, pred(0.5, i=6))
    assert decisions(out) == [("BTCUSDT", "WAIT", "TIER_NONE")]   # the transition to flat
    wait = out.emits[0].value
    assert isinstance(wait, signal_pb2.Signal)
    assert (wait.signal_id, wait.cooldown_until_us, wait.ts.decision_us) == ("BTCUSDT:6:m7:5", 0, T0 + 30 * SECOND)

    assert decisions(run(state, clock, pred(0.5, i=7))) == []    # never a repeated WAIT
    assert decisions(run(state, clock, pred(0.62, i=8))) == []   # net below tier B is WAIT too: silent

    clock.advance_us(1)
    out = run(state, clock, pred(0.1, i=9))
    assert decisions(out) == [("BTCUSDT", "SHORT", "TIER_A")]
    assert out.emits[0].value.cooldown_until_us == T0 + 60 * SECOND + 1  # type: ignore[attr-defined]


def test_actionable_after_cooldown_without_wait_in_between(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings())
    run(state, clock, pred(0.9, i=1))
    clock.advance_us(31 * SECOND)
    assert decisions(run(state, clock, pred(0.1, i=2))) == [("BTCUSDT", "SHORT", "TIER_A")]


def test_cooldown_is_per_symbol(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings())
    run(state, clock, pred(0.9, symbol="BTCUSDT"))
    clock.advance_us(SECOND)
    out = run(state, clock, pred(0.9, i=2, symbol="BTCUSDT"), pred(0.1, i=2, symbol="ETHUSDT"))
    assert decisions(out) == [("ETHUSDT", "SHORT", "TIER_A")]


def test_cooldown_applies_within_one_batch(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings())
    out = run(state, clock, pred(0.9, i=1), pred(0.9, i=2), pred(0.5, i=3))
    assert decisions(out) == [("BTCUSDT", "LONG", "TIER_A")]


def test_zero_cooldown_emits_every_actionable_prediction(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings(cooldown_s=0))
    out = run(state, clock, pred(0.9, i=1), pred(0.9, i=2), pred(0.5, i=3), pred(0.5, i=4), pred(0.2, i=5))
    assert decisions(out) == [("BTCUSDT", "LONG", "TIER_A"), ("BTCUSDT", "LONG", "TIER_A"),
                              ("BTCUSDT", "WAIT", "TIER_NONE"), ("BTCUSDT", "SHORT", "TIER_A")]


def test_no_wait_for_a_symbol_that_never_acted(clock: ManualClock) -> None:
    state = DecisionState.from_settings(settings())
    for i in range(5):
        clock.advance_us(SECOND)
        assert run(state, clock, pred(0.5, i=i)).emits == []


def test_stage_spec() -> None:
    spec = stage.spec(settings())
    assert (spec.name, spec.input_topics, spec.batch_timeout_ms) == ("decision", (Topic.PREDICTIONS,), 0)
    state = spec.make_state(StageContext.standalone("decision", settings()))
    assert isinstance(state, DecisionState)
    assert state.config.cooldown_us == 30 * SECOND
    assert state.cost.fee_bps == 2.0
