"""Decision stage core: predictions -> LONG / SHORT / WAIT signals, after costs, tiers and per-symbol cooldown.

Pure: no I/O, time only from the injected clock. Rules, on the horizon ``decision_horizon_min`` (or the first
horizon of the prediction when that one is absent):

* expected_return_bps of each side from p_up and the label's barriers (``cost.expected_moves``; |2p - 1| x B for
  symmetric barriers); net_utility_bps = expected - round-trip cost (see ``cost.py``).
* LONG when p_up - p* >= min_edge and the LONG's net >= tier B threshold, with p* the break-even probability
  (0.5 for symmetric barriers); SHORT when p* - p_up >= min_edge, the SHORT can be priced (the model's
  "not up" is "down first", not "down or timeout") and its net clears the same threshold; otherwise WAIT.
  Tier A when net >= tier A threshold, else B (WAIT has no tier).
* After a LONG/SHORT the symbol cools down for ``cooldown_s``: no new LONG/SHORT is emitted until it ends.
* WAIT is emitted only as the transition to flat: the symbol's last emitted decision was LONG/SHORT, its
  cooldown has expired, and the current decision is WAIT. Repeated WAITs are never emitted.

Before any of that, ``validate`` rejects a prediction that cannot be priced (``streams.runtime.validate``): no
horizon, a p_up outside [0, 1] (or NaN), a spread outside [0, MAX_SPREAD_BPS] or a label barrier outside
[0, MAX_BARRIER_BPS] (the cost inputs), a mid_price that is not a finite positive price (it becomes the
signal's price), or timestamps outside ``DecisionConfig.bounds`` of the clock: an exchange time too far ahead
of the clock or too old, or a stage stamp earlier than the exchange time by more than the skew (a negative
latency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas import SCHEMA_VERSION, prediction_pb2, signal_pb2
from streams.decision.cost import CostModel
from streams.runtime import validate as v
from streams.runtime.clock import Clock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

LONG = signal_pb2.LONG
SHORT = signal_pb2.SHORT
WAIT = signal_pb2.WAIT
ACTIONABLE = (LONG, SHORT)
# p_up - 0.5 is inexact in binary floating point (0.5 - 0.46 < 0.04); the tolerance keeps LONG/SHORT symmetric.
EDGE_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    horizon_min: int
    min_edge: float
    tier_a_utility_bps: float
    tier_b_utility_bps: float
    cooldown_us: int
    bounds: v.TimeBounds = v.UNBOUNDED  # prediction timestamps vs the clock

    @classmethod
    def from_settings(cls, settings: Settings) -> DecisionConfig:
        return cls(
            horizon_min=settings.decision_horizon_min,
            min_edge=settings.min_edge,
            tier_a_utility_bps=settings.tier_a_utility_bps,
            tier_b_utility_bps=settings.tier_b_utility_bps,
            cooldown_us=round(settings.cooldown_s * 1_000_000),
            bounds=v.TimeBounds.from_settings(settings),
        )


@dataclass(slots=True)
class SymbolState:
    last_decision: signal_pb2.Decision = signal_pb2.DECISION_UNSPECIFIED  # last *emitted* decision
    cooldown_until_us: int = 0


@dataclass(slots=True)
class DecisionState:
    config: DecisionConfig
    cost: CostModel
    symbols: dict[str, SymbolState] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> DecisionState:
        return cls(config=DecisionConfig.from_settings(settings), cost=CostModel(fee_bps=settings.fee_bps))


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The economics of one prediction, before cooldown and WAIT-emission rules."""

    decision: signal_pb2.Decision
    tier: signal_pb2.Tier
    horizon: prediction_pb2.HorizonProbability
    expected_return_bps: float
    estimated_cost_bps: float
    net_utility_bps: float
    upper_barrier_bps: float   # the barriers the expectation was priced on, which the outcome is judged by
    lower_barrier_bps: float


def pick_horizon(
    prediction: prediction_pb2.Prediction, horizon_min: int
) -> prediction_pb2.HorizonProbability | None:
    for h in prediction.horizons:
        if h.horizon_min == horizon_min:
            return h
    return prediction.horizons[0] if prediction.horizons else None


def validate(prediction: prediction_pb2.Prediction, config: DecisionConfig, now_us: int) -> v.Problem | None:
    """(error_type, reason) when the prediction cannot be priced or published, else None (see the module doc)."""
    horizon = pick_horizon(prediction, config.horizon_min)
    if horizon is None:
        return "no_horizons", "prediction carries no horizon probabilities"
    h = horizon.horizon_min
    return (v.probability(f"horizon {h} p_up", horizon.p_up)
            or v.finite_in_range("spread_bps", prediction.spread_bps, 0.0, v.MAX_SPREAD_BPS, "invalid_spread")
            or v.finite_in_range(f"horizon {h} upper_barrier_bps", horizon.upper_barrier_bps, 0.0,
                                 v.MAX_BARRIER_BPS, "invalid_barrier")
            or v.finite_in_range(f"horizon {h} lower_barrier_bps", horizon.lower_barrier_bps, 0.0,
                                 v.MAX_BARRIER_BPS, "invalid_barrier")
            or v.finite_positive_price("mid_price", prediction.mid_price)
            or v.timestamps_within(prediction.ts, now_us, config.bounds, ("ingest_us", "features_us", "infer_us")))


def evaluate(prediction: prediction_pb2.Prediction, config: DecisionConfig, cost: CostModel) -> Evaluation:
    """Decision and tier from edge and net utility; assumes ``validate`` passed."""
    horizon = pick_horizon(prediction, config.horizon_min)
    assert horizon is not None  # validate() guarantees a horizon
    p = horizon.p_up
    moves = cost.expected_moves(p, horizon.horizon_min, upper_bps=horizon.upper_barrier_bps,
                                lower_bps=horizon.lower_barrier_bps,
                                timeout_counts_as_not_up=horizon.timeout_counts_as_not_up)
    estimated = cost.round_trip_cost_bps(prediction.regime, prediction.spread_bps)
    edge = config.min_edge - EDGE_EPSILON
    short = moves.short_bps  # None: this model's p_up cannot price a SHORT
    decision: signal_pb2.Decision
    if p - moves.breakeven_p >= edge and moves.long_bps - estimated >= config.tier_b_utility_bps:
        decision, expected = LONG, moves.long_bps
    elif short is not None and moves.breakeven_p - p >= edge and short - estimated >= config.tier_b_utility_bps:
        decision, expected = SHORT, short
    else:
        # WAIT reports the favoured side's expectation: the SHORT's only when a SHORT can be priced.
        decision = WAIT
        expected = short if short is not None and p < moves.breakeven_p else moves.long_bps
    net = expected - estimated
    tier: signal_pb2.Tier
    if decision == WAIT:
        tier = signal_pb2.TIER_NONE
    elif net >= config.tier_a_utility_bps:
        tier = signal_pb2.TIER_A
    else:
        tier = signal_pb2.TIER_B
    return Evaluation(decision, tier, horizon, expected, estimated, net, moves.upper_bps, moves.lower_bps)


def build_signal(
    prediction: prediction_pb2.Prediction, ev: Evaluation, cost: CostModel, now_us: int, cooldown_until_us: int
) -> signal_pb2.Signal:
    signal = signal_pb2.Signal(
        schema_version=SCHEMA_VERSION,
        # Deterministic, so a redelivered prediction yields the same id and the sink writes it once.
        signal_id=f"{prediction.prediction_id}:{ev.horizon.horizon_min}",
        venue=prediction.venue,
        symbol=prediction.symbol,
        decision=ev.decision,
        tier=ev.tier,
        p_up=ev.horizon.p_up,
        horizon_min=ev.horizon.horizon_min,
        expected_return_bps=ev.expected_return_bps,
        estimated_cost_bps=ev.estimated_cost_bps,
        net_utility_bps=ev.net_utility_bps,
        regime=prediction.regime,
        top_features=prediction.top_features,
        model_version=prediction.model_version,
        feature_version=prediction.feature_version,
        cost_model_version=cost.version,
        data_window_id=prediction.data_window_id,
        quality_flags=prediction.quality_flags,
        cooldown_until_us=cooldown_until_us,
        price=prediction.mid_price,
        upper_barrier_bps=ev.upper_barrier_bps,
        lower_barrier_bps=ev.lower_barrier_bps,
    )
    signal.ts.CopyFrom(prediction.ts)
    signal.ts.decision_us = now_us
    return signal


def process(
    batch: Sequence[InRecord[prediction_pb2.Prediction]], state: DecisionState, clock: Clock
) -> Outputs:
    out = Outputs()
    now_us = clock.now_us()
    config = state.config
    for record in batch:
        prediction = record.value
        problem = validate(prediction, config, now_us)
        if problem is not None:
            out.rejects.append(Reject(record, *problem))
            continue
        ev = evaluate(prediction, config, state.cost)
        sym = state.symbols.setdefault(prediction.symbol, SymbolState())
        cooling = now_us < sym.cooldown_until_us
        if ev.decision in ACTIONABLE:
            if cooling:
                continue  # one position idea per cooldown window
            sym.cooldown_until_us = now_us + config.cooldown_us
            signal = build_signal(prediction, ev, state.cost, now_us, sym.cooldown_until_us)
        elif sym.last_decision in ACTIONABLE and not cooling:
            signal = build_signal(prediction, ev, state.cost, now_us, 0)  # the transition to flat
        else:
            continue  # never repeat WAIT; stay silent while a position idea is cooling
        sym.last_decision = ev.decision
        out.emits.append(Emit(Topic.SIGNALS, prediction.symbol, signal, prediction.ts.exchange_us))
    return out
