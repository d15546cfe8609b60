"""The decision stage's degradation rules, each on a real capture segment: USD-M BTCUSDT of 2024-07-18 through the
features core, the shipped default model in the infer core, then the decision core."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from schemas import common_pb2, features_pb2, prediction_pb2, signal_pb2
from streams.decision.core import DEGRADING_FLAGS, Conditions, DecisionState, evaluate, process, stressed
from streams.features.batch import capture_batches
from streams.features.core import FeatureState
from streams.features.core import process as features
from streams.infer import core as infer_core
from streams.infer.artifacts import shipped
from streams.infer.model import load_model
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs
from streams.runtime.settings import Settings

pytestmark = pytest.mark.unit

CAPTURE = Path("ws_messages/hftbacktest/usdm/btcusdt_20240718.gz")
SECOND = 1_000_000


@pytest.fixture(scope="module")
def predictions(shared_data: Path) -> Iterator[list[prediction_pb2.Prediction]]:
    settings = Settings()
    batches = list(capture_batches([shared_data / CAPTURE], settings=settings))
    state, clock = FeatureState(), ManualClock(0)
    vectors: list[features_pb2.FeatureVector] = []
    for k in range(0, len(batches), 500):
        chunk = batches[k:k + 500]
        clock.set_us(max(clock.now_us(), *(tb.ts.exchange_us for tb in chunk)))
        emits = features([InRecord(tb, "") for tb in chunk], state, clock).emits
        vectors += [e.value for e in emits if isinstance(e.value, features_pb2.FeatureVector)]
    model = infer_core.InferState(load_model(shipped("simulator")))
    preds: list[prediction_pb2.Prediction] = []
    for k in range(0, len(vectors), 32):  # the infer stage's batches of 32, stamped on their newest event time
        rows = vectors[k:k + 32]
        clock = ManualClock(max(v.ts.exchange_us for v in rows))
        out = infer_core.process([InRecord(v, "") for v in rows], model, clock)
        preds += [e.value for e in out.emits if isinstance(e.value, prediction_pb2.Prediction)]
    yield preds


def decide(preds: list[prediction_pb2.Prediction], clock_ahead_us: int, **overrides: object) -> tuple[Outputs,
                                                                                                   DecisionState]:
    """Every prediction decided on a clock ``clock_ahead_us`` past its own exchange time; no cooldown, horizon 5."""
    settings = Settings(decision_horizons="5", cooldown_low_vol_s=0, cooldown_medium_vol_s=0, cooldown_high_vol_s=0,
                        **overrides)  # type: ignore[arg-type]  # typed by the model at run time
    state = DecisionState.from_settings(settings)
    out = Outputs()
    for p in preds:
        out.extend(process([InRecord(p, "")], state, ManualClock(p.ts.exchange_us + clock_ahead_us)))
    return out, state


def test_the_segment_is_what_the_rules_are_tried_on(predictions: list[prediction_pb2.Prediction]) -> None:
    assert len(predictions) == 4008
    # Three minutes from a cold start: every window is still filling, and the recorded clocks drift.
    assert {frozenset(p.quality_flags) for p in predictions} == {
        frozenset({common_pb2.WINDOW_INSUFFICIENT, common_pb2.DEGRADED_TIME_SYNC})}
    assert all(f in DEGRADING_FLAGS for f in predictions[0].quality_flags)


def test_flagged_input_allows_tier_a_only(predictions: list[prediction_pb2.Prediction]) -> None:
    """Thresholds that make every prediction a tier B on clean input: flagged, none may be published."""
    out, state = decide(predictions, 0, tau_a=0.99, tau_b=0.0, kappa_b=-1e6)
    assert out.emits == [] and out.rejects == []
    assert state.rule_counts == {"degraded_input": 4008}
    clean = prediction_pb2.Prediction()
    clean.CopyFrom(predictions[0])
    del clean.quality_flags[:]
    assert evaluate(clean, clean.horizons[0], state.config, state.cost).tier == signal_pb2.TIER_B


def test_exchange_lag_above_two_seconds_pauses_every_actionable_signal(
        predictions: list[prediction_pb2.Prediction]) -> None:
    """With thresholds that act on everything: 3 s behind the clock, all paused; 1 s behind, none."""
    act = {"tau_a": 0.0, "kappa_a": -1e6, "decision_max_exchange_lag_s": 2.0}
    lagging, lag_state = decide(predictions, 3 * SECOND, **act)
    assert lagging.emits == [] and lag_state.rule_counts == {"exchange_lag_paused": 4008}
    assert lag_state.paused == "exchange lag 3.0s > 2s"
    timely, timely_state = decide(predictions, SECOND, **act)
    assert len(timely.emits) == 4008 and timely_state.rule_counts == {} and timely_state.paused == ""


def test_a_high_volatility_regime_prices_the_stressed_quantile(predictions: list[prediction_pb2.Prediction]) -> None:
    """USD-M's fitted tables: p50 slippage 0 bps beyond the touch, p97.5 0.24-0.26 bps in the vol_high regimes."""
    state = DecisionState.from_settings(Settings())
    high = [p for p in predictions if p.regime.startswith("vol_high")]
    assert len(high) == 271
    for p in high:
        plain = evaluate(p, p.horizons[0], state.config, state.cost)
        stressed = evaluate(p, p.horizons[0], state.config, state.cost, Conditions(stressed=True))
        table = state.cost.tables.entry("usdm", p.regime).quantiles
        assert stressed.estimated_cost_bps - plain.estimated_cost_bps == pytest.approx(
            table["p97.5"] - table["p50"], abs=1e-9)


def test_a_liquidation_burst_prices_the_stressed_quantile(predictions: list[prediction_pb2.Prediction]) -> None:
    """The capture has no forceOrder stream (it was recorded without one), so no prediction carries a liquidation
    figure; the rule is tried by giving the calm (not vol_high) predictions one just below, and one at,
    SURGE_DECISION_LIQUIDATION_BURST_USD. At the threshold every published cost is the stressed one."""
    assert not any(p.HasField("liquidation_notional_1m") for p in predictions)
    settings = Settings()
    burst = settings.decision_liquidation_burst_usd
    config = DecisionState.from_settings(settings).config
    calm = [p for p in predictions if not p.regime.startswith("vol_high")][:300]
    assert len(calm) == 300 and not any(stressed(p, config) for p in calm)

    def with_liquidations(notional: float) -> list[prediction_pb2.Prediction]:
        out = []
        for p in calm:
            q = prediction_pb2.Prediction()
            q.CopyFrom(p)
            q.liquidation_notional_1m = notional
            out.append(q)
        return out

    below, at = with_liquidations(burst * 0.999), with_liquidations(burst)
    assert not any(stressed(p, config) for p in below) and all(stressed(p, config) for p in at)
    assert not stressed(at[0], replace(config, liquidation_burst_usd=0.0))  # 0 disables the rule
    out, state = decide(at, SECOND, tau_a=0.0, kappa_a=-1e6)
    published = [e.value.estimated_cost_bps for e in out.emits if isinstance(e.value, signal_pb2.Signal)]
    assert len(published) == 300
    priced = [evaluate(p, p.horizons[0], state.config, state.cost, Conditions(stressed=True)) for p in at]
    assert published == pytest.approx([e.estimated_cost_bps for e in priced])
    plain = [evaluate(p, p.horizons[0], state.config, state.cost) for p in below]
    assert all(s.estimated_cost_bps > c.estimated_cost_bps for s, c in zip(priced, plain, strict=True))
