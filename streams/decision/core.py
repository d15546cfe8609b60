"""Decision stage core: predictions -> LONG / SHORT / WAIT signals per horizon, after costs, tiers, degradation
rules, the risk state and a cooldown per position idea.

Pure: no I/O, time only from the injected clock. For every horizon it acts on (``SURGE_DECISION_HORIZONS``,
default all a prediction carries):

* **Economics**: the expected return of each side from p_up and the label's barriers (``cost.expected_moves``);
  net utility U = expected - round-trip cost (``CostModel.estimate``: fees per venue, spread, slippage quantile
  per venue and regime, size impact, funding, opportunity; ``cost.py``). A side's probability is p_up for a LONG and
  1 - p_up for a SHORT; a SHORT exists only when the model's "not up" is "down first" (not "down or timeout").
* **Tiers**: tier A needs p_side >= tau_A and U / cost >= kappa_A, tier B p_side >= tau_B and U / cost >= kappa_B
  (``TierRule``; presets ``conservative | balanced | aggressive``). The side with the better tier wins; otherwise
  WAIT (no tier).
* **Degradation rules**, each counted in ``state.rule_counts`` when it changes a signal:
  - input carrying a degrading quality flag (``DEGRADING_FLAGS``): tau and kappa are raised by the degraded
    steps and only tier A is allowed;
  - a high-volatility regime, or a liquidation burst (USD-M: at least ``liquidation_burst_usd`` liquidated in the
    last minute, the prediction's ``liquidation_notional_1m``): the cost is priced at the stressed slippage
    quantile (p97.5, ``cost.py``);
  - exchange lag (clock minus the input's exchange time) above ``max_exchange_lag_us``: actionable signals pause
    (the stage reports it on /healthz and a metric); replays run without this rule;
  - the risk state of the paper book (``streams/outcomes/risk.py``, read by the stage from Redis): CAUTIOUS
    allows tier A only; RISK_AVERSE also raises tau and doubles the cooldown (half the rate); SHUTDOWN allows
    no actionable signal;
  - live quality (``streams/outcomes/quality.py``): bounded offsets added to tau and kappa when the live ECE
    drifts from the model's held-out ECE or the realized utility falls below its floor.
* **Position ideas**: an idea is (venue, symbol, horizon). After a LONG/SHORT the idea cools down for the regime's
  cooldown (10-30 min by volatility), in event time (the prediction's exchange time), so replays and backtests at
  any speed cool down as live does: near-simultaneous predictions of one idea merge into the first, whatever the
  batching (merging into the "best" would make the chosen signal depend on where batches split). WAIT is emitted
  only as the transition to flat: the idea's last emitted decision was actionable, its cooldown has ended, and the
  current decision is WAIT. Across processes (replicas, restarts) the stage claims each actionable idea in Redis
  (``SET NX PX``) before it is published; ``state.claims`` lists what this batch wants to claim.

``validate`` first rejects a prediction that cannot be priced (``streams.runtime.validate``): no horizon, a
p_up outside [0, 1] (or NaN), a spread or label barrier out of range, a mid_price that is not a finite positive
price, or timestamps outside ``DecisionConfig.bounds`` of the clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, NamedTuple

from schemas import SCHEMA_VERSION, common_pb2, prediction_pb2, signal_pb2
from streams.decision.cost import CostBase, CostModel, levels_of
from streams.outcomes.risk import RiskLevel
from streams.runtime import validate as v
from streams.runtime.clock import Clock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.instrument import Instrument
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

LONG: Final = signal_pb2.LONG
SHORT: Final = signal_pb2.SHORT
WAIT: Final = signal_pb2.WAIT
ACTIONABLE: Final = (LONG, SHORT)
# Comparisons of probabilities and ratios against thresholds tolerate binary rounding (0.75 stored as 0.7499...).
EPSILON: Final = 1e-9

MAX_INSTRUMENTS: Final = 100_000

# Flags that make an input less trustworthy; SIMULATED is not one (it says where the data comes from).
DEGRADING_FLAGS: Final = frozenset({
    common_pb2.SEQUENCE_GAP, common_pb2.BOOK_RESYNCING, common_pb2.DEGRADED_TIME_SYNC, common_pb2.STALE_INPUT,
    common_pb2.TIERS_DROPPED, common_pb2.WINDOW_INSUFFICIENT, common_pb2.BOOK_TICKER_DIVERGENCE,
    common_pb2.QUARANTINED,
})


@dataclass(frozen=True, slots=True)
class TierRule:
    tau: float     # the side's probability must be at least this
    kappa: float   # net utility / cost must be at least this

    def passes(self, p_side: float, ratio: float) -> bool:
        return p_side >= self.tau - EPSILON and ratio >= self.kappa - EPSILON


PROFILES: Final[Mapping[str, tuple[TierRule, TierRule]]] = MappingProxyType({
    "conservative": (TierRule(0.80, 1.50), TierRule(0.70, 1.20)),
    "balanced": (TierRule(0.75, 1.20), TierRule(0.65, 1.00)),
    "aggressive": (TierRule(0.70, 1.00), TierRule(0.60, 0.80)),
})


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    tier_a: TierRule = PROFILES["balanced"][0]
    tier_b: TierRule = PROFILES["balanced"][1]
    horizons: frozenset[int] = frozenset()        # empty: every horizon a prediction carries
    degraded_tau_step: float = 0.05
    degraded_kappa_step: float = 0.20
    risk_averse_tau_step: float = 0.05
    cooldown_us_by_vol: tuple[int, int, int] = (1_800_000_000, 1_200_000_000, 600_000_000)  # low, medium, high
    max_exchange_lag_us: int = 0                  # 0: never pause
    liquidation_burst_usd: float = 0.0            # 0: liquidations never stress the cost
    bounds: v.TimeBounds = v.UNBOUNDED            # prediction timestamps vs the clock

    @classmethod
    def from_settings(cls, settings: Settings) -> DecisionConfig:
        a, b = PROFILES[settings.decision_profile]
        horizons = frozenset(int(h) for h in settings.decision_horizons.split(",") if h.strip())
        return cls(
            tier_a=TierRule(a.tau if settings.tau_a is None else settings.tau_a,
                            a.kappa if settings.kappa_a is None else settings.kappa_a),
            tier_b=TierRule(b.tau if settings.tau_b is None else settings.tau_b,
                            b.kappa if settings.kappa_b is None else settings.kappa_b),
            horizons=horizons,
            degraded_tau_step=settings.degraded_tau_step,
            degraded_kappa_step=settings.degraded_kappa_step,
            risk_averse_tau_step=settings.risk_averse_tau_step,
            cooldown_us_by_vol=(round(settings.cooldown_low_vol_s * 1e6), round(settings.cooldown_medium_vol_s * 1e6),
                                round(settings.cooldown_high_vol_s * 1e6)),
            max_exchange_lag_us=round(settings.decision_max_exchange_lag_s * 1e6),
            liquidation_burst_usd=settings.decision_liquidation_burst_usd,
            bounds=v.TimeBounds.from_settings(settings),
        )

    def cooldown_us(self, regime: str, risk: RiskLevel) -> int:
        low, medium, high = self.cooldown_us_by_vol
        base = low if regime.startswith("vol_low") else medium if regime.startswith("vol_medium") else high
        return base * 2 if risk == RiskLevel.RISK_AVERSE else base


def stressed(prediction: prediction_pb2.Prediction, config: DecisionConfig) -> bool:
    """A volatility burst (the high-volatility regime) or a liquidation burst: costs at the stressed quantile."""
    if prediction.regime.startswith("vol_high"):
        return True
    return (config.liquidation_burst_usd > 0 and prediction.HasField("liquidation_notional_1m")
            and prediction.liquidation_notional_1m >= config.liquidation_burst_usd)


IdeaKey = tuple[Instrument, int]  # (instrument, horizon_min)


@dataclass(slots=True)
class IdeaState:
    last_decision: signal_pb2.Decision = signal_pb2.DECISION_UNSPECIFIED  # last *emitted* decision
    cooldown_until_us: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """An actionable signal the stage must claim across processes before it is published."""

    key: str                    # Redis key of the idea
    signal_id: str
    ttl_ms: int
    event_us: int               # the signal's event time (its prediction's exchange time)
    cooldown_until_us: int      # ... and the end of its cooldown, in event time
    emit_index: int             # its position in the batch's Outputs.emits
    idea: IdeaKey
    before: IdeaState           # the idea's state before this signal, restored when another process owns it


@dataclass(slots=True)
class DecisionState:
    config: DecisionConfig
    cost: CostModel
    ideas: dict[IdeaKey, IdeaState] = field(default_factory=dict)
    risk: RiskLevel = RiskLevel.NORMAL     # set by the stage from the outcomes stage's risk state
    tau_offset: float = 0.0                # set by the stage from the outcomes stage's live quality
    kappa_offset: float = 0.0
    paused: str = ""                       # why actionable signals are paused ("" when they are not)
    exchange_lag_us: int = 0               # of the newest input
    claims: list[Claim] = field(default_factory=list)
    rule_counts: dict[str, int] = field(default_factory=dict)
    # One Instrument object per (venue, symbol), so idea lookups compare keys by identity (bounded like a cache).
    instruments: dict[tuple[int, str], Instrument] = field(default_factory=dict)
    # The ideas as they were before their first change since the stage's last checkpoint (None: the idea did not
    # exist), so a failed batch is undone by restoring only what it touched; None while no checkpoint is open.
    journal: dict[IdeaKey, IdeaState | None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, cost: CostModel | None = None) -> DecisionState:
        """``cost`` defaults to the settings' model over the artifact tables (the stage passes one over Redis)."""
        return cls(config=DecisionConfig.from_settings(settings), cost=cost or CostModel.from_settings(settings))

    def count(self, rule: str) -> None:
        self.rule_counts[rule] = self.rule_counts.get(rule, 0) + 1


class Conditions(NamedTuple):  # immutable and cheap to build: one per prediction or horizon
    """What the rules see besides the prediction itself."""

    degraded: bool = False
    risk: RiskLevel = RiskLevel.NORMAL
    paused: bool = False
    tau_offset: float = 0.0     # from live quality (the outcomes stage), within its bounds
    kappa_offset: float = 0.0
    stressed: bool = False      # a volatility burst: cost priced at the stressed slippage quantile


NORMAL_CONDITIONS: Final = Conditions()


class Evaluation(NamedTuple):  # immutable and cheap to build: one per prediction or horizon
    """The economics of one horizon of one prediction, before cooldown and WAIT-emission rules."""

    decision: signal_pb2.Decision
    tier: signal_pb2.Tier
    horizon: prediction_pb2.HorizonProbability
    expected_return_bps: float
    estimated_cost_bps: float
    net_utility_bps: float
    upper_barrier_bps: float   # the barriers the expectation was priced on, which the outcome is judged by
    lower_barrier_bps: float
    cost_model_version: str = ""


def horizons_to_act_on(prediction: prediction_pb2.Prediction,
                       config: DecisionConfig) -> list[prediction_pb2.HorizonProbability]:
    return [h for h in prediction.horizons if not config.horizons or h.horizon_min in config.horizons]


def validate(prediction: prediction_pb2.Prediction, config: DecisionConfig, now_us: int) -> v.Problem | None:
    """(error_type, reason) when the prediction cannot be priced or published, else None (see the module doc)."""
    if not prediction.horizons:
        return "no_horizons", "prediction carries no horizon probabilities"
    top = v.MAX_BARRIER_BPS
    for horizon in prediction.horizons:
        if 0.0 <= horizon.p_up <= 1.0 and 0.0 <= horizon.upper_barrier_bps <= top \
                and 0.0 <= horizon.lower_barrier_bps <= top:
            continue  # the usual case, without building the messages below (NaN fails every comparison)
        h = horizon.horizon_min
        problem = (v.probability(f"horizon {h} p_up", horizon.p_up)
                   or v.finite_in_range(f"horizon {h} upper_barrier_bps", horizon.upper_barrier_bps, 0.0,
                                        v.MAX_BARRIER_BPS, "invalid_barrier")
                   or v.finite_in_range(f"horizon {h} lower_barrier_bps", horizon.lower_barrier_bps, 0.0,
                                        v.MAX_BARRIER_BPS, "invalid_barrier"))
        if problem is not None:
            return problem
    return (v.finite_in_range("spread_bps", prediction.spread_bps, 0.0, v.MAX_SPREAD_BPS, "invalid_spread")
            or v.finite_positive_price("mid_price", prediction.mid_price)
            or v.timestamps_within(prediction.ts, now_us, config.bounds, ("ingest_us", "features_us", "infer_us")))


class Rules(NamedTuple):
    """The tier rules in force under one set of conditions (the same for most of a batch)."""

    tier_a: TierRule
    tier_b: TierRule
    allow_b: bool      # tier B may be emitted at all
    allow_any: bool    # anything actionable may be emitted at all


def rules_under(config: DecisionConfig, conditions: Conditions) -> Rules:
    """The tiers raised by live quality, degraded input and RISK_AVERSE; B and anything actionable allowed or not."""
    tier_a, tier_b = config.tier_a, config.tier_b
    if conditions.tau_offset or conditions.kappa_offset:
        tier_a = TierRule(tier_a.tau + conditions.tau_offset, tier_a.kappa + conditions.kappa_offset)
        tier_b = TierRule(tier_b.tau + conditions.tau_offset, tier_b.kappa + conditions.kappa_offset)
    if conditions.degraded:
        tier_a = TierRule(tier_a.tau + config.degraded_tau_step, tier_a.kappa + config.degraded_kappa_step)
    if conditions.risk == RiskLevel.RISK_AVERSE:
        tier_a = replace(tier_a, tau=tier_a.tau + config.risk_averse_tau_step)
    return Rules(tier_a, tier_b, not conditions.degraded and conditions.risk == RiskLevel.NORMAL,
                 not conditions.paused and conditions.risk != RiskLevel.SHUTDOWN)


def price_base(prediction: prediction_pb2.Prediction, cost: CostModel, conditions: Conditions) -> CostBase:
    """The prediction's cost before horizon and side: its venue, regime, spread, live book and funding rate."""
    book = (levels_of(prediction.book_bids), levels_of(prediction.book_asks)) \
        if prediction.book_bids and prediction.book_asks else None
    funding = prediction.funding_rate if prediction.HasField("funding_rate") else None
    return cost.base(prediction.venue, prediction.symbol, prediction.regime, prediction.spread_bps,
                     funding_rate=funding, book=book, stressed=conditions.stressed)


def _rank(rules: Rules, p_side: float, net: float, estimated: float) -> int:
    """2 for tier A, 1 for tier B, 0 for neither (before ``Rules.allow_any``)."""
    ratio = net / estimated if estimated > 0 else (math.inf if net > 0 else -math.inf)
    if rules.tier_a.passes(p_side, ratio):
        return 2
    return 1 if rules.allow_b and rules.tier_b.passes(p_side, ratio) else 0


def evaluate_horizon(horizon: prediction_pb2.HorizonProbability, base: CostBase, rules: Rules,
                     cost: CostModel) -> Evaluation:
    """Decision and tier of one horizon, priced on its prediction's ``base`` under ``rules``."""
    p = horizon.p_up
    h = horizon.horizon_min
    moves = cost.expected_moves(p, h, upper_bps=horizon.upper_barrier_bps, lower_bps=horizon.lower_barrier_bps,
                                timeout_counts_as_not_up=horizon.timeout_counts_as_not_up)
    long_cost = base.total_bps(h, LONG)
    # Only funding differs by side (a LONG pays a positive rate, a SHORT receives it).
    short_cost = base.total_bps(h, SHORT) if base.funding_per_min_bps else long_cost
    long_net = moves.long_bps - long_cost
    short_bps = moves.short_bps
    short_net = short_bps - short_cost if short_bps is not None else -math.inf
    if rules.allow_any:
        long_rank = _rank(rules, p, long_net, long_cost)
        if short_bps is not None:
            short_rank = _rank(rules, 1.0 - p, short_net, short_cost)
            # The better tier wins, then the better net utility; the LONG on a tie.
            if short_rank and (short_rank, short_net) > (long_rank, long_net):
                tier = signal_pb2.TIER_A if short_rank == 2 else signal_pb2.TIER_B
                return Evaluation(SHORT, tier, horizon, short_bps, short_cost, short_net, moves.upper_bps,
                                  moves.lower_bps, base.version)
        if long_rank:
            tier = signal_pb2.TIER_A if long_rank == 2 else signal_pb2.TIER_B
            return Evaluation(LONG, tier, horizon, moves.long_bps, long_cost, long_net, moves.upper_bps,
                              moves.lower_bps, base.version)
    # WAIT reports the favoured side's expectation: the SHORT's only when a SHORT can be priced.
    if short_bps is not None and p < moves.breakeven_p:
        return Evaluation(WAIT, signal_pb2.TIER_NONE, horizon, short_bps, short_cost, short_net, moves.upper_bps,
                          moves.lower_bps, base.version)
    return Evaluation(WAIT, signal_pb2.TIER_NONE, horizon, moves.long_bps, long_cost, long_net, moves.upper_bps,
                      moves.lower_bps, base.version)


def evaluate_all(prediction: prediction_pb2.Prediction, horizons: Sequence[prediction_pb2.HorizonProbability],
                 config: DecisionConfig, cost: CostModel, conditions: Conditions = NORMAL_CONDITIONS,
                 rules: Rules | None = None) -> list[Evaluation]:
    """Decision and tier of each of the prediction's ``horizons`` under ``conditions``; assumes ``validate``
    passed. The cost is looked up once for all of them. ``rules``: ``rules_under(config, conditions)``, when the
    caller has it already."""
    base = price_base(prediction, cost, conditions)
    in_force = rules if rules is not None else rules_under(config, conditions)
    return [evaluate_horizon(h, base, in_force, cost) for h in horizons]


def evaluate(prediction: prediction_pb2.Prediction, horizon: prediction_pb2.HorizonProbability,
             config: DecisionConfig, cost: CostModel, conditions: Conditions = NORMAL_CONDITIONS) -> Evaluation:
    """Decision and tier of one horizon under ``conditions``; assumes ``validate`` passed."""
    return evaluate_all(prediction, (horizon,), config, cost, conditions)[0]


def build_signal(prediction: prediction_pb2.Prediction, ev: Evaluation, cost: CostModel, now_us: int,
                 cooldown_until_us: int) -> signal_pb2.Signal:
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
        cost_model_version=ev.cost_model_version,
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


def idea_key(instrument: Instrument, horizon_min: int) -> str:
    return f"surge:idea:{instrument.key}:{horizon_min}"


def _count_changes(state: DecisionState, prediction: prediction_pb2.Prediction,
                   horizons: Sequence[prediction_pb2.HorizonProbability], conditions: Conditions,
                   evaluations: Sequence[Evaluation]) -> None:
    """Count each rule that changed a horizon's result against normal conditions."""
    if conditions == NORMAL_CONDITIONS or all(ev.tier == signal_pb2.TIER_A for ev in evaluations):
        return  # every rule only tightens: a tier A under the rules is a tier A without them
    if conditions.paused:
        rule = "exchange_lag_paused"
    elif conditions.risk == RiskLevel.SHUTDOWN:
        rule = "risk_shutdown"
    elif conditions.degraded:
        rule = "degraded_input"
    elif conditions.risk != RiskLevel.NORMAL:
        rule = f"risk_{conditions.risk.name.lower()}"
    elif conditions.stressed:
        rule = "stressed_cost"
    else:
        rule = "quality_adapted"
    plain = evaluate_all(prediction, horizons, state.config, state.cost)
    for ev, normal in zip(evaluations, plain, strict=True):
        if ev.tier != signal_pb2.TIER_A and (normal.decision, normal.tier) != (ev.decision, ev.tier):
            state.count(rule)


def process(batch: Sequence[InRecord[prediction_pb2.Prediction]], state: DecisionState, clock: Clock) -> Outputs:
    out = Outputs()
    now_us = clock.now_us()
    config = state.config
    state.claims = []
    rules_by_conditions: dict[Conditions, Rules] = {}  # conditions repeat across a batch; so do their rules
    instruments = state.instruments
    if len(instruments) > MAX_INSTRUMENTS:
        instruments.clear()  # a producer inventing symbols must not grow it without bound
    candidates: list[tuple[IdeaKey, prediction_pb2.Prediction, Evaluation]] = []
    for record in batch:
        prediction = record.value
        problem = validate(prediction, config, now_us)
        if problem is not None:
            out.rejects.append(Reject(record, *problem))
            continue
        state.exchange_lag_us = now_us - prediction.ts.exchange_us
        lagging = config.max_exchange_lag_us > 0 and state.exchange_lag_us > config.max_exchange_lag_us
        state.paused = f"exchange lag {state.exchange_lag_us / 1e6:.1f}s > " \
                       f"{config.max_exchange_lag_us / 1e6:g}s" if lagging else ""
        conditions = Conditions(degraded=not DEGRADING_FLAGS.isdisjoint(prediction.quality_flags),
                                risk=state.risk, paused=lagging, tau_offset=state.tau_offset,
                                kappa_offset=state.kappa_offset, stressed=stressed(prediction, config))
        rules = rules_by_conditions.get(conditions)
        if rules is None:
            rules = rules_by_conditions[conditions] = rules_under(config, conditions)
        where = (prediction.venue, prediction.symbol)
        instrument = instruments.get(where)
        if instrument is None:
            instrument = instruments[where] = Instrument(*where)
        horizons = horizons_to_act_on(prediction, config)
        evaluations = evaluate_all(prediction, horizons, config, state.cost, conditions, rules)
        _count_changes(state, prediction, horizons, conditions, evaluations)
        for horizon, ev in zip(horizons, evaluations, strict=True):
            candidates.append(((instrument, horizon.horizon_min), prediction, ev))
    for key, prediction, ev in candidates:
        _emit(state, key, prediction, ev, now_us, out)
    return out


def _emit(state: DecisionState, key: IdeaKey, prediction: prediction_pb2.Prediction, ev: Evaluation, now_us: int,
          out: Outputs) -> None:
    known = state.ideas.get(key)
    journal = state.journal
    if journal is not None and key not in journal:
        journal[key] = None if known is None else replace(known)
    idea = known if known is not None else state.ideas.setdefault(key, IdeaState())
    # Cooldowns run on event time, so a replay or a backtest at any speed cools down exactly as live did.
    event_us = prediction.ts.exchange_us
    cooling = event_us < idea.cooldown_until_us
    if ev.decision in ACTIONABLE:
        if cooling:
            state.count("cooldown")
            return  # one position idea per cooldown window
        before = replace(idea)
        cooldown_us = state.config.cooldown_us(prediction.regime, state.risk)
        # No cooldown means none at all: not even a prediction older than the last signal waits.
        idea.cooldown_until_us = event_us + cooldown_us if cooldown_us > 0 else 0
        signal = build_signal(prediction, ev, state.cost, now_us, idea.cooldown_until_us)
        if cooldown_us > 0:
            state.claims.append(Claim(idea_key(key[0], key[1]), signal.signal_id, max(1, cooldown_us // 1000),
                                      event_us, idea.cooldown_until_us, len(out.emits), key, before))
    elif idea.last_decision in ACTIONABLE and not cooling:
        signal = build_signal(prediction, ev, state.cost, now_us, 0)  # the transition to flat
    else:
        return  # never repeat WAIT; stay silent while a position idea is cooling
    idea.last_decision = ev.decision
    out.emits.append(Emit(Topic.SIGNALS, key[0].key, signal, prediction.ts.exchange_us))


def drop_unclaimed(state: DecisionState, out: Outputs, owned_elsewhere: set[int]) -> Outputs:
    """Remove the emits whose idea another process claimed first (by ``Claim.emit_index``), restoring their ideas'
    state, so this process stays silent on an idea it does not own."""
    if not owned_elsewhere:
        return out
    for claim in state.claims:
        if claim.emit_index in owned_elsewhere:
            state.ideas[claim.idea] = claim.before  # journalled in _emit, when the claim's signal was built
            state.count("claimed_elsewhere")
    out.emits = [e for i, e in enumerate(out.emits) if i not in owned_elsewhere]
    return out
