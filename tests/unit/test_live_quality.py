"""Live quality from outcomes, the bounded adaptation of tau/kappa, and the outcomes stage's flush of both."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
import redis

from schemas import signal_pb2
from streams.decision.core import evaluate
from streams.outcomes import stage as outcomes_stage
from streams.outcomes.core import OutcomesState
from streams.outcomes.quality import LiveQuality, QualityPolicy, Sample, adapt, average_precision, ece_pp, report
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.storage.cache import ADAPT_KEY
from streams.storage.warehouse import Warehouse, open_warehouse
from tests.unit.test_decision_core import pred, state_of
from tests.unit.test_outcomes_core import MIN, T0, signal, ticks

pytestmark = pytest.mark.unit


def sample(p: float, won: bool, net: float = 1.0, est: float = 6.0, real: float = 5.0) -> Sample:
    return Sample(p_side=p, won=won, net_bps=net, estimated_cost_bps=est, realized_cost_bps=real, model_version="m1")


def test_calibration_metrics_by_hand() -> None:
    assert ece_pp([0.8] * 10, [True] * 8 + [False] * 2, 10) == pytest.approx(0.0)
    assert ece_pp([0.8] * 10, [True] * 5 + [False] * 5, 10) == pytest.approx(30.0)
    # Two buckets: 0.2 x 5 with 1 win (|1 - 1| = 0) and 0.9 x 5 with 3 wins (|3 - 4.5| = 1.5): 1.5 / 10 = 15 pp.
    assert ece_pp([0.2] * 5 + [0.9] * 5, [True] + [False] * 4 + [True] * 3 + [False] * 2, 10) == pytest.approx(15.0)
    assert average_precision([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert math.isnan(average_precision([0.5], [False]))


def test_report_fields_by_hand() -> None:
    samples = [sample(0.9, True, net=20.0, est=6.0, real=5.0), sample(0.8, False, net=-10.0, est=6.0, real=4.0),
               sample(0.7, False, net=2.0, est=6.0, real=6.0)]
    rep = report(samples, QualityPolicy(top_k=2))
    assert rep.n == 3 and rep.model_version == "m1"
    assert rep.brier == pytest.approx((0.1**2 + 0.8**2 + 0.7**2) / 3)
    assert rep.hit_at_k == pytest.approx(0.5)             # the two most confident: one win
    assert rep.avg_utility_bps == pytest.approx(4.0)
    assert rep.false_positive_rate == pytest.approx(1 / 3)  # the timeout at +2 bps is not a false positive
    assert rep.cost_mape_pct == pytest.approx(100 * (0.2 + 0.5 + 0.0) / 3)


def test_drift_raises_tau_within_bounds_flags_the_model_once_and_decays() -> None:
    quality = LiveQuality(policy=QualityPolicy(min_samples=10, adapt_every=10, tau_step=0.04, tau_max=0.10))
    for _ in range(9):
        quality.add(sample(0.9, False, net=5.0))
    assert adapt(quality, 1.0) == []                     # fewer than min_samples: nothing moves
    events = []
    for _ in range(4):
        for _ in range(10):
            quality.add(sample(0.9, False, net=5.0))     # p 0.9, never a win: ECE 90 pp vs a promised 1 pp
        events += [action for action, _ in adapt(quality, 1.0)]
    assert events == ["tau_raised", "recalibrate", "tau_raised", "tau_raised"]
    assert quality.tau_offset == pytest.approx(0.10) and quality.flagged == {"m1"}
    for _ in range(500):
        quality.add(sample(0.9, True, net=5.0)) if _ % 10 else quality.add(sample(0.9, False, net=5.0))
    assert [action for action, _ in adapt(quality, 1.0)] == ["tau_lowered"]
    assert quality.tau_offset == pytest.approx(0.06)


def test_negative_realized_utility_raises_kappa() -> None:
    quality = LiveQuality(policy=QualityPolicy(min_samples=5, adapt_every=5))
    for _ in range(5):
        quality.add(sample(0.6, True, net=-3.0))
    assert ("kappa_raised" in [a for a, _ in adapt(quality, math.nan)]) and quality.kappa_offset == pytest.approx(0.1)


def test_the_decision_adds_the_offsets_to_its_thresholds() -> None:
    state = state_of()
    p = pred(0.8025)  # exactly tier A (U/cost 1.2) without offsets
    assert evaluate(p, p.horizons[0], state.config, state.cost).tier == signal_pb2.TIER_A
    from streams.decision.core import Conditions

    shifted = evaluate(p, p.horizons[0], state.config, state.cost, Conditions(tau_offset=0.1))
    assert (shifted.decision, shifted.tier) == (signal_pb2.LONG, signal_pb2.TIER_B)


def test_losing_confident_signals_are_audited_published_and_stored(chdb: Warehouse, redis_url: str) -> None:
    """Tried: 50 LONG signals at p_up 0.9 that all hit their stop. The stage's flush writes the quality row, audits
    the tau step and the recalibration flag, and publishes the offsets the decision stage reads."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    state = OutcomesState()
    rt = outcomes_stage.OutcomesRuntime(state=state, redis=client, warehouse=chdb)
    clock = ManualClock(T0)
    for i in range(50):
        s = signal(i, at_us=T0 + i * MIN)
        s.p_up, s.model_version = 0.9, "m-live"
        batch = [InRecord(value=s, key=""), InRecord(value=ticks((T0 + i * MIN + 1, 99.5)), key="")]
        outcomes_stage.process(batch, rt, clock)  # type: ignore[arg-type]  # signals and tick batches
    assert outcomes_stage.flush(rt) == []
    audits = chdb.query("SELECT action, model_version FROM surge.audit_logs WHERE action LIKE 'quality_%' "
                        "ORDER BY action")
    assert audits == [{"action": "quality_kappa_raised", "model_version": "m-live"},
                      {"action": "quality_recalibrate", "model_version": "m-live"},
                      {"action": "quality_tau_raised", "model_version": "m-live"}]
    [row] = chdb.query("SELECT n, ece_pp, hit_at_k, pr_auc, tau_offset FROM surge.live_quality")
    assert (row["n"], row["hit_at_k"], row["pr_auc"], row["tau_offset"]) == (50, 0.0, None, 0.02)
    assert row["ece_pp"] == pytest.approx(90.0)
    assert orjson.loads(client.get(ADAPT_KEY)) == {"tau_offset": 0.02, "kappa_offset": 0.1}  # type: ignore[arg-type]


def test_the_outcomes_stage_creates_missing_tables_with_the_ttl_settings(tmp_path: Path, redis_url: str) -> None:
    """Whichever process applies the schema first creates the tables: the outcomes stage must use the TTLs too."""
    from streams.runtime.settings import Settings
    from streams.storage.warehouse import settings_ttl_days

    wh = open_warehouse(f"chdb://{tmp_path / 'fresh'}", "surge")
    try:
        rt = outcomes_stage.OutcomesRuntime(state=OutcomesState(), redis=redis.Redis.from_url(redis_url), warehouse=wh,
                                            database="surge", ttl_days=settings_ttl_days(Settings(ttl_days_ticks=3)))
        assert outcomes_stage.flush(rt) == []
        ddl = wh.query("SELECT create_table_query AS q FROM system.tables WHERE database = 'surge' "
                       "AND name = 'trades'")[0]["q"]
    finally:
        wh.close()
    assert "toIntervalDay(3)" in ddl, ddl
