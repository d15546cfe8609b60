"""Decision core: thresholds, tiers, cost per regime, cooldown and WAIT transitions, on a ManualClock."""

from __future__ import annotations

import math
from typing import Any

import pytest

from schemas import SCHEMA_VERSION, common_pb2, prediction_pb2, signal_pb2
from streams.decision import stage
from streams.decision.core import DecisionState, drop_unclaimed, evaluate, process
from streams.decision.cost import REGIMES, SLIPPAGE_BPS, CostModel, CostTables
from streams.outcomes.risk import RiskLevel
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs, StageContext
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000
SECOND = 1_000_000


def settings(**overrides: object) -> Settings:
    """Balanced tiers, the 5-minute horizon, no cooldown and no lag pause unless a test asks for them."""
    base: dict[str, object] = {
        "fee_bps": 2.0, "decision_horizons": "5", "cooldown_low_vol_s": 0, "cooldown_medium_vol_s": 0,
        "cooldown_high_vol_s": 0, "decision_max_exchange_lag_s": 0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]  # a test's overrides are typed by the model at run time


def state_of(**overrides: object) -> DecisionState:
    """A decision state on fixed cost tables (cost-v2's slippage per regime, 2 bps fees, no opportunity cost), so
    every number below can be worked out by hand."""
    cost = CostModel(fee_bps=2.0, tables=CostTables.fixed(SLIPPAGE_BPS), opportunity_rate=0.0)
    return DecisionState.from_settings(settings(**overrides), cost)


def pred(
    p_up: float,
    *,
    i: int = 1,
    symbol: str = "BTCUSDT",
    regime: str = "vol_low_depth_thick",
    spread_bps: float = 1.0,
    horizons: tuple[int, ...] = (5, 10),
    exchange_us: int = T0 - 50_000,
    flags: tuple[int, ...] = (common_pb2.SIMULATED,),
    venue: int = common_pb2.BINANCE_SPOT,
    p_other: float = 0.5,
) -> prediction_pb2.Prediction:
    return prediction_pb2.Prediction(
        schema_version=SCHEMA_VERSION,
        prediction_id=f"{symbol}:{i}:m7",
        venue=venue,  # type: ignore[arg-type]  # a Venue number
        symbol=symbol,
        model_version="m7",
        feature_version="f3",
        horizons=[prediction_pb2.HorizonProbability(horizon_min=h, p_up=p_up if h == horizons[0] else p_other)
                  for h in horizons],
        regime=regime,
        mid_price=64_000.5,
        spread_bps=spread_bps,
        top_features=[prediction_pb2.FeatureContribution(name="ofi_1s", value=0.7, contribution=0.12)],
        data_window_id=f"{symbol}:10-12",
        ts=common_pb2.Timestamps(exchange_us=exchange_us, ingest_us=exchange_us + 1000,
                                 features_us=exchange_us + 2000, infer_us=exchange_us + 3000),
        quality_flags=list(flags),  # type: ignore[arg-type]  # QualityFlag numbers
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
    assert model.version == "cost-v2"  # the legacy stamp; estimate() stamps cost-v3/<tables>


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


def first_eval(state: DecisionState, p: prediction_pb2.Prediction) -> tuple[str, str]:
    ev = evaluate(p, p.horizons[0], state.config, state.cost)
    return signal_pb2.Decision.Name(ev.decision), signal_pb2.Tier.Name(ev.tier)


# --- tiers from tau and kappa --------------------------------------------------------------------------------
# 5-minute B = 20 bps; vol_low_depth_thick at spread 1: cost = 2 x 2 fee + 1 spread + 0.5 slippage = 5.5 bps.

@pytest.mark.parametrize(
    ("p_up", "expected"),
    [
        (0.90, [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]),   # expected 16, net 10.5, U/cost 1.91
        (0.78, [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_B")]),   # expected 11.2, net 5.7, U/cost 1.04 < 1.2
        (0.70, []),                                            # U/cost 0.45: WAIT, never emitted first
        (0.10, [("BINANCE_SPOT:BTCUSDT", "SHORT", "TIER_A")]),
        (0.22, [("BINANCE_SPOT:BTCUSDT", "SHORT", "TIER_B")]),
        (0.50, []),
    ],
)
def test_tiers_need_both_the_probability_and_the_utility_to_cost_ratio(
    clock: ManualClock, p_up: float, expected: list[tuple[str, str, str]]
) -> None:
    out = run(state_of(), clock, pred(p_up))
    assert decisions(out) == expected
    assert out.rejects == []


def test_a_tier_boundary_is_inclusive(clock: ManualClock) -> None:
    """U / cost exactly 1.2 at p = 0.8025 (expected 12.1, cost 5.5): tier A; a hair below: tier B."""
    state = state_of()
    assert first_eval(state, pred(0.8025)) == ("LONG", "TIER_A")
    assert first_eval(state, pred(0.8024)) == ("LONG", "TIER_B")
    # p exactly tau_B with a ratio far above every kappa: tier B; just under tau_B: nothing.
    assert first_eval(state, pred(0.65, spread_bps=0.0, regime="vol_low_depth_thick")) == ("WAIT", "TIER_NONE")


@pytest.mark.parametrize(("profile", "p_up", "expected"), [
    ("conservative", 0.78, ("WAIT", "TIER_NONE")),   # B needs U/cost >= 1.2
    ("balanced", 0.78, ("LONG", "TIER_B")),
    ("aggressive", 0.78, ("LONG", "TIER_A")),        # A needs p >= 0.70 and U/cost >= 1.0
    ("conservative", 0.90, ("LONG", "TIER_A")),
])
def test_profiles_are_presets_of_tau_and_kappa(profile: str, p_up: float, expected: tuple[str, str]) -> None:
    assert first_eval(state_of(decision_profile=profile), pred(p_up)) == expected


def test_single_thresholds_override_the_profile() -> None:
    state = state_of(tau_a=0.95, kappa_b=2.0)
    assert (state.config.tier_a.tau, state.config.tier_a.kappa) == (0.95, 1.2)
    assert first_eval(state, pred(0.90)) == ("WAIT", "TIER_NONE")  # A needs p 0.95; B now needs U/cost 2.0


def test_a_not_up_model_never_reads_a_small_p_up_as_a_short(clock: ManualClock) -> None:
    """The klines model's p_up is P(+0.6 % before -0.4 % or timeout): small by construction. Read as 1 - p it
    would be a confident SHORT; such a model prices no SHORT at all."""
    state = state_of()
    assert run(state, clock, barrier_pred(0.03, 60.0, 40.0, True)).emits == []
    not_up = barrier_pred(0.03, 60.0, 40.0, True)
    ev = evaluate(not_up, not_up.horizons[0], state.config, state.cost)
    assert ev.decision == signal_pb2.WAIT
    assert ev.expected_return_bps == pytest.approx(0.03 * 60 - 0.97 * 40)
    # The same p from a model whose "not up" is "down first" is a SHORT worth 0.97 x 40 - 0.03 x 60 = 37 bps.
    (emit,) = run(state, clock, barrier_pred(0.03, 60.0, 40.0, False)).emits
    assert isinstance(emit.value, signal_pb2.Signal)
    assert (emit.value.decision, emit.value.tier) == (signal_pb2.SHORT, signal_pb2.TIER_A)
    assert emit.value.expected_return_bps == pytest.approx(0.97 * 40 - 0.03 * 60)
    assert (emit.value.upper_barrier_bps, emit.value.lower_barrier_bps) == (60.0, 40.0)


def test_signal_carries_cost_for_its_regime_and_the_table_barriers(clock: ManualClock) -> None:
    state = state_of()
    thin = pred(0.95, regime="vol_high_depth_thin", spread_bps=2.0)
    ev = evaluate(thin, thin.horizons[0], state.config, state.cost)
    assert ev.estimated_cost_bps == pytest.approx(4.0 + 2.0 + 5.0)
    assert ev.net_utility_bps == pytest.approx(18.0 - 11.0)
    assert ev.decision == signal_pb2.WAIT  # U/cost 0.64: the costly regime eats the edge
    unknown = pred(0.95, regime="nonsense")
    assert evaluate(unknown, unknown.horizons[0], state.config, state.cost).estimated_cost_bps == pytest.approx(
        4.0 + 1.0 + 5.0)  # unknown regime -> worst slippage
    (emit,) = run(state, clock, pred(0.95)).emits
    assert isinstance(emit.value, signal_pb2.Signal)
    assert (emit.value.upper_barrier_bps, emit.value.lower_barrier_bps) == (20.0, 20.0)  # not stated: table B


# --- degradation rules and the risk state ----------------------------------------------------------------------

def test_flagged_input_raises_tau_and_kappa_and_allows_tier_a_only(clock: ManualClock) -> None:
    state = state_of()
    gap = (common_pb2.SIMULATED, common_pb2.SEQUENCE_GAP)
    # 0.78 is tier B on clean input; flagged, B is not allowed.
    out = run(state, clock, pred(0.78, flags=gap), pred(0.90, symbol="ETHUSDT", flags=gap),
              pred(0.82, symbol="SOLUSDT", flags=gap), pred(0.82, symbol="XRPUSDT"))
    # 0.90: tau 0.80, kappa 1.4 -> U/cost 1.91 passes. 0.82: U/cost 1.33 < 1.4 flagged, but A when clean.
    assert decisions(out) == [("BINANCE_SPOT:ETHUSDT", "LONG", "TIER_A"), ("BINANCE_SPOT:XRPUSDT", "LONG", "TIER_A")]
    assert state.rule_counts == {"degraded_input": 2}


def test_simulated_is_not_a_degrading_flag(clock: ManualClock) -> None:
    state = state_of()
    assert decisions(run(state, clock, pred(0.78, flags=(common_pb2.SIMULATED,)))) == [
        ("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_B")]
    assert state.rule_counts == {}


@pytest.mark.parametrize(("level", "p_up", "expected"), [
    (RiskLevel.CAUTIOUS, 0.735, []),      # spread 0: tier B on NORMAL (p < 0.75, U/cost 1.07), blocked
    (RiskLevel.CAUTIOUS, 0.90, [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]),
    (RiskLevel.RISK_AVERSE, 0.78, []),    # spread 0: U/cost 1.49 is A on NORMAL, but tau is now 0.80
    (RiskLevel.RISK_AVERSE, 0.80, [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]),
    (RiskLevel.SHUTDOWN, 0.99, []),
])
def test_the_risk_state_restricts_what_is_actionable(clock: ManualClock, level: RiskLevel, p_up: float,
                                                     expected: list[tuple[str, str, str]]) -> None:
    state = state_of()
    state.risk = level
    assert decisions(run(state, clock, pred(p_up, spread_bps=0.0))) == expected
    assert sum(state.rule_counts.values()) == (0 if expected else 1)


def test_risk_averse_doubles_the_cooldown(clock: ManualClock) -> None:
    state = state_of(cooldown_low_vol_s=600)
    state.risk = RiskLevel.RISK_AVERSE
    (emit,) = run(state, clock, pred(0.9)).emits
    assert emit.value.cooldown_until_us == T0 - 50_000 + 1_200 * SECOND  # type: ignore[attr-defined]  # a Signal


def test_exchange_lag_pauses_actionable_signals_and_says_why(clock: ManualClock) -> None:
    state = state_of(decision_max_exchange_lag_s=2.0)
    assert run(state, clock, pred(0.9, exchange_us=T0 - 3 * SECOND)).emits == []
    assert (state.paused, state.rule_counts) == ("exchange lag 3.0s > 2s", {"exchange_lag_paused": 1})
    assert decisions(run(state, clock, pred(0.9, i=2, exchange_us=T0 - SECOND))) == [
        ("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]
    assert state.paused == ""


# --- position ideas: horizons, cooldown, merging, claims ----------------------------------------------------

def test_every_horizon_is_its_own_idea(clock: ManualClock) -> None:
    state = state_of(decision_horizons="")
    out = run(state, clock, pred(0.9, horizons=(5, 10, 30), p_other=0.9))
    assert [(e.value.signal_id, e.value.horizon_min) for e in out.emits] == [  # type: ignore[attr-defined]
        ("BTCUSDT:1:m7:5", 5), ("BTCUSDT:1:m7:10", 10), ("BTCUSDT:1:m7:30", 30)]


def test_cooldown_depends_on_the_volatility_regime(clock: ManualClock) -> None:
    state = state_of(cooldown_low_vol_s=1800, cooldown_medium_vol_s=1200,
                                                 cooldown_high_vol_s=600)
    out = run(state, clock, pred(0.95, regime="vol_low_depth_thick"),
              pred(0.95, symbol="ETHUSDT", regime="vol_medium_depth_thick"),
              pred(0.95, symbol="SOLUSDT", regime="vol_high_depth_thick"),
              pred(0.99, symbol="XRPUSDT", regime="", spread_bps=0.0))
    # Cooldowns run on event time: from the predictions' exchange time (T0 - 50 ms).
    assert [e.value.cooldown_until_us - (T0 - 50_000) for e in out.emits] == [  # type: ignore[attr-defined]
        1800 * SECOND, 1200 * SECOND, 600 * SECOND, 600 * SECOND]


def test_cooldown_and_the_wait_transition(clock: ManualClock) -> None:
    state = state_of(cooldown_low_vol_s=30)

    def at(p_up: float, i: int) -> Outputs:
        return run(state, clock, pred(p_up, i=i, exchange_us=clock.now_us() - 50_000))

    assert decisions(at(0.9, 1)) == [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]
    clock.advance_us(10 * SECOND)
    assert at(0.9, 2).emits == []         # cooling: one idea per window
    assert at(0.5, 3).emits == []         # cooling: no WAIT yet either
    assert state.rule_counts == {"cooldown": 1}
    clock.advance_us(20 * SECOND)
    assert decisions(at(0.5, 4)) == [("BINANCE_SPOT:BTCUSDT", "WAIT", "TIER_NONE")]
    assert at(0.5, 5).emits == []         # never a repeated WAIT
    assert decisions(at(0.1, 6)) == [("BINANCE_SPOT:BTCUSDT", "SHORT", "TIER_A")]


def test_the_cooldown_runs_on_event_time_not_on_the_clock(clock: ManualClock) -> None:
    """A replay at full speed: predictions a minute apart in event time arrive a millisecond apart."""
    state = state_of(cooldown_low_vol_s=30)
    assert decisions(run(state, clock, pred(0.9, i=1, exchange_us=T0 - 120 * SECOND))) == [
        ("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]
    clock.advance_us(1_000)
    assert run(state, clock, pred(0.9, i=2, exchange_us=T0 - 100 * SECOND)).emits == []   # 20 s later: cooling
    assert decisions(run(state, clock, pred(0.9, i=3, exchange_us=T0 - 60 * SECOND))) == [  # 60 s later: free
        ("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]


def test_spot_and_usdm_of_one_symbol_are_separate_ideas(clock: ManualClock) -> None:
    """The bug this fixes: cooldowns keyed by symbol alone let a spot BTCUSDT signal silence USD-M BTCUSDT."""
    state = state_of(cooldown_low_vol_s=1800)
    out = run(state, clock, pred(0.9, venue=common_pb2.BINANCE_SPOT), pred(0.9, venue=common_pb2.BINANCE_USDM))
    assert decisions(out) == [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A"), ("BINANCE_USDM:BTCUSDT", "LONG", "TIER_A")]
    assert [c.key for c in state.claims] == ["surge:idea:BINANCE_SPOT:BTCUSDT:5", "surge:idea:BINANCE_USDM:BTCUSDT:5"]
    assert {c.ttl_ms for c in state.claims} == {1_800_000}


def test_near_simultaneous_predictions_of_one_idea_merge_into_the_first(clock: ManualClock) -> None:
    """The first in event order wins, whatever the batching: one batch of three, or three batches of one."""
    together = state_of(cooldown_low_vol_s=1800)
    out = run(together, clock, pred(0.80, i=1), pred(0.95, i=2), pred(0.85, i=3))
    apart = state_of(cooldown_low_vol_s=1800)
    split = [e for i in (1, 2, 3) for e in run(apart, clock, pred((0.80, 0.95, 0.85)[i - 1], i=i)).emits]
    assert [e.value.signal_id for e in out.emits] == [e.value.signal_id for e in split] == [  # type: ignore[attr-defined]
        "BTCUSDT:1:m7:5"]
    assert together.rule_counts == apart.rule_counts == {"cooldown": 2}


def test_an_idea_claimed_elsewhere_is_dropped_and_its_state_restored(clock: ManualClock) -> None:
    state = state_of(cooldown_low_vol_s=1800)
    out = run(state, clock, pred(0.9), pred(0.9, symbol="ETHUSDT"))
    kept = drop_unclaimed(state, out, {0})
    assert decisions(kept) == [("BINANCE_SPOT:ETHUSDT", "LONG", "TIER_A")]
    assert state.rule_counts == {"claimed_elsewhere": 1}
    clock.advance_us(SECOND)
    # This process never published the BTCUSDT idea, so it has no cooldown of its own for it.
    assert [c.key for c in state.claims] == ["surge:idea:BINANCE_SPOT:BTCUSDT:5", "surge:idea:BINANCE_SPOT:ETHUSDT:5"]
    assert decisions(run(state, clock, pred(0.9, i=2))) == [("BINANCE_SPOT:BTCUSDT", "LONG", "TIER_A")]


def test_signal_fields_are_copied_and_stamped(clock: ManualClock) -> None:
    state = state_of()
    p = pred(0.9)
    (emit,) = run(state, clock, p).emits
    s = emit.value
    assert isinstance(s, signal_pb2.Signal)
    assert (s.signal_id, s.symbol, s.venue, s.horizon_min, s.p_up) == ("BTCUSDT:1:m7:5", "BTCUSDT",
                                                                       common_pb2.BINANCE_SPOT, 5, 0.9)
    assert (s.model_version, s.feature_version, s.cost_model_version) == ("m7", "f3", "cost-v3/ct-fixed")
    assert (s.regime, s.data_window_id, s.price) == ("vol_low_depth_thick", "BTCUSDT:10-12", 64_000.5)
    assert list(s.quality_flags) == [common_pb2.SIMULATED]
    assert s.top_features[0].name == "ofi_1s"
    assert (s.ts.exchange_us, s.ts.infer_us, s.ts.decision_us) == (p.ts.exchange_us, p.ts.infer_us, T0)
    assert emit.exchange_us == p.ts.exchange_us


def test_same_prediction_yields_the_same_signal_id(clock: ManualClock) -> None:
    a = run(state_of(), clock, pred(0.9)).emits[0].value
    b = run(state_of(), clock, pred(0.9)).emits[0].value
    assert a == b


@pytest.mark.parametrize(("mutate", "error_type"), [
    (lambda p: p.ClearField("horizons"), "no_horizons"),
    (lambda p: setattr(p.horizons[0], "p_up", math.nan), "invalid_probability"),
    (lambda p: setattr(p.horizons[1], "p_up", 1.5), "invalid_probability"),
    (lambda p: setattr(p, "spread_bps", -1.0), "invalid_spread"),
    (lambda p: setattr(p, "mid_price", -100.0), "invalid_price"),
    (lambda p: setattr(p.horizons[0], "upper_barrier_bps", math.inf), "invalid_barrier"),
])
def test_unpriceable_predictions_are_rejected(clock: ManualClock, mutate: Any, error_type: str) -> None:
    p = pred(0.9)
    mutate(p)
    out = run(state_of(), clock, p)
    assert [r.error_type for r in out.rejects] == [error_type] and out.emits == []


def test_stage_spec(tmp_path: Any) -> None:
    spec = stage.spec(settings())
    assert (spec.name, spec.input_topics, spec.batch_timeout_ms) == ("decision", (Topic.PREDICTIONS,), 0)
    rt = spec.make_state(StageContext.standalone("decision", settings(redis_url="redis://127.0.0.1:9/0")))
    assert isinstance(rt.state, DecisionState)
    assert rt.state.cost.fee_bps is None and rt.state.config.tier_a.tau == 0.75  # per-venue fees from settings
    assert rt.state.cost.estimate(1, "BTCUSDT", "vol_low_depth_thick", 1.0, 5).fee_bps == 20.0  # spot 10 bps a side


def test_without_a_cooldown_every_prediction_stands_on_its_own(clock: ManualClock) -> None:
    """No cooldown, nothing to merge: three predictions of one idea in one batch are three signals."""
    out = run(state_of(), clock, pred(0.80, i=1), pred(0.95, i=2), pred(0.85, i=3))
    assert [e.value.signal_id for e in out.emits] == [  # type: ignore[attr-defined]
        "BTCUSDT:1:m7:5", "BTCUSDT:2:m7:5", "BTCUSDT:3:m7:5"]


def test_no_cooldown_lets_an_older_prediction_through_too(clock: ManualClock) -> None:
    """Found by the broker-outage chaos test: predictions re-sent with earlier event times than the last signal
    were held back as "cooling" although the cooldown was 0."""
    state = state_of()
    assert len(run(state, clock, pred(0.9, i=1, exchange_us=T0 - 10_000)).emits) == 1
    assert len(run(state, clock, pred(0.9, i=2, exchange_us=T0 - 20_000)).emits) == 1
    assert state.rule_counts == {}
