"""Parity: a real capture through the live decision path, run as the stages run it (the features stage's core on
consumed batches, the infer core on micro-batches flushed by size or time, the decision core on each flush), and
through ``surge backtest``'s engine gives the same signal ids and decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import features_pb2, prediction_pb2, signal_pb2
from services.backtest.engine import BacktestConfig, run_captures
from streams.decision import core as decision_core
from streams.decision.core import DecisionState
from streams.features.batch import capture_batches
from streams.features.core import FeatureState
from streams.features.core import process as features_process
from streams.infer import core as infer_core
from streams.infer.model import load_model
from streams.runtime import validate as v
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.runtime.settings import Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

MODEL = REPO_ROOT / "streams" / "infer" / "artifacts" / "simulator"
CAPTURE = Path("ws_messages/hftbacktest/usdm/btcusdt_20240718.gz")
Key = tuple[str, int, int, int]


def _settings() -> Settings:
    # Thresholds low enough that the simulator-trained default model makes actionable signals on real data.
    return Settings.model_construct(tau_a=0.0, kappa_a=-1e6, tau_b=0.0, kappa_b=-1e6)


def _keys(signals: list[signal_pb2.Signal]) -> list[Key]:
    return [(s.signal_id, int(s.decision), int(s.tier), s.horizon_min) for s in signals]


def live_path(capture: Path, settings: Settings) -> list[signal_pb2.Signal]:
    """The three stages' cores with the stages' batching, on event-time clocks."""
    batches = list(capture_batches([capture], settings=settings))
    fstate, fclock = FeatureState(), ManualClock(0)
    vectors: list[features_pb2.FeatureVector] = []
    for k in range(0, len(batches), settings.batch_max):           # a consumed batch of the features stage
        chunk = batches[k:k + settings.batch_max]
        fclock.set_us(max(fclock.now_us(), *(tb.ts.exchange_us for tb in chunk)))
        out = features_process([InRecord(tb, tb.symbol) for tb in chunk], fstate, fclock)
        vectors += [e.value for e in out.emits if isinstance(e.value, features_pb2.FeatureVector)]
    istate = infer_core.InferState(load_model(MODEL), bounds=v.TimeBounds.from_settings(settings))
    dstate = DecisionState.from_settings(settings)
    iclock, dclock = ManualClock(0), ManualClock(0)
    signals: list[signal_pb2.Signal] = []
    window_us = settings.infer_batch_ms * 1000
    pending: list[features_pb2.FeatureVector] = []

    def flush() -> None:
        newest = max(vec.ts.exchange_us for vec in pending)
        iclock.set_us(max(iclock.now_us(), newest))
        out = infer_core.process([InRecord(vec, vec.symbol) for vec in pending], istate, iclock)
        preds = [e.value for e in out.emits if isinstance(e.value, prediction_pb2.Prediction)]
        pending.clear()
        if preds:
            dclock.set_us(max(dclock.now_us(), iclock.now_us()))
            dout = decision_core.process([InRecord(p, p.symbol) for p in preds], dstate, dclock)
            signals.extend(e.value for e in dout.emits if isinstance(e.value, signal_pb2.Signal))

    for vec in vectors:   # the infer stage's micro-batch: SURGE_INFER_BATCH_ROWS rows or SURGE_INFER_BATCH_MS
        if pending and (len(pending) >= settings.infer_batch_rows
                        or vec.ts.exchange_us - pending[0].ts.exchange_us >= window_us):
            flush()
        pending.append(vec)
    if pending:
        flush()
    return signals


def test_live_path_and_backtest_give_the_same_signals(shared_data: Path) -> None:
    capture = shared_data / CAPTURE
    settings = _settings()
    live = live_path(capture, settings)
    result = run_captures(BacktestConfig(data=(capture,), model_dir=MODEL, use_risk=False), settings)
    assert len(live) > 0
    assert _keys(result.signals) == _keys(live)
    # ... and the same economics on each
    for a, b in zip(result.signals, live, strict=True):
        assert (a.p_up, a.net_utility_bps, a.price, a.cooldown_until_us) == (b.p_up, b.net_utility_bps, b.price,
                                                                             b.cooldown_until_us)
