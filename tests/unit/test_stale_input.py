"""STALE_INPUT (issue 13 item 4): every stage that can tell flags input whose exchange time is older than
SURGE_STALE_INPUT_S by its own clock; the supervisor turns the bound off for replays."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import common_pb2
from services.stack.supervisor import child_settings
from streams.features.core import FeatureState
from streams.features.stage import new_state
from streams.infer.core import InferState
from streams.infer.model import load_model
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings
from tests.unit import test_decision_core as dc
from tests.unit import test_features_core as fc
from tests.unit import test_infer_core as ic

pytestmark = pytest.mark.unit

SECOND = 1_000_000
BOUND_US = 5 * SECOND


def test_features_flag_a_batch_older_than_the_bound_by_the_clock() -> None:
    state = FeatureState(stale_after_us=BOUND_US)
    fresh = fc.run([fc.tick_batch(1, fc.T0)], state, ManualClock(fc.T0 + BOUND_US))  # exactly at the bound
    late = fc.run([fc.tick_batch(2, fc.T0 + fc.STEP)], state, ManualClock(fc.T0 + fc.STEP + BOUND_US + 1))
    assert common_pb2.STALE_INPUT not in fc.vectors(fresh)[0].quality_flags
    flags = list(fc.vectors(late)[0].quality_flags)
    assert flags[0] == common_pb2.SIMULATED and common_pb2.STALE_INPUT in flags  # the input's flags kept, first


def test_features_never_flag_with_the_bound_off() -> None:
    state = FeatureState()  # stale_after_us 0
    out = fc.run([fc.tick_batch(1, fc.T0)], state, ManualClock(fc.T0 + 3600 * SECOND))
    assert common_pb2.STALE_INPUT not in fc.vectors(out)[0].quality_flags


def test_features_stage_wires_the_setting() -> None:
    assert new_state(Settings(stale_input_s=2.5)).stale_after_us == 2_500_000
    assert Settings.defaults().stale_input_s == 5.0


def test_infer_copies_the_flags_and_adds_stale_input(tmp_path: Path) -> None:
    state = InferState(load_model(ic.write_model(tmp_path / "toy"), intra_op_threads=1), stale_after_us=BOUND_US)
    old, fresh = ic.vector(1), ic.vector(2)  # exchange_us 1_001 and 1_002
    old.quality_flags.append(common_pb2.WINDOW_INSUFFICIENT)
    fresh.ts.exchange_us = 1_002 + BOUND_US
    preds = ic.predictions(ic.run([old, fresh], state, now_us=1_002 + BOUND_US))
    assert list(preds[0].quality_flags) == [common_pb2.SIMULATED, common_pb2.WINDOW_INSUFFICIENT,
                                            common_pb2.STALE_INPUT]
    assert list(preds[1].quality_flags) == [common_pb2.SIMULATED]


def test_infer_does_not_add_stale_input_twice(tmp_path: Path) -> None:
    state = InferState(load_model(ic.write_model(tmp_path / "toy"), intra_op_threads=1), stale_after_us=BOUND_US)
    vec = ic.vector(1)
    vec.quality_flags.append(common_pb2.STALE_INPUT)  # the features stage already said so
    pred = ic.predictions(ic.run([vec], state, now_us=100 * SECOND))[0]
    assert list(pred.quality_flags).count(common_pb2.STALE_INPUT) == 1


def test_decision_signal_carries_stale_input_and_degrades() -> None:
    state = dc.state_of()
    clock = ManualClock(dc.T0)
    stale = (common_pb2.SIMULATED, common_pb2.STALE_INPUT)
    # 0.78 is tier B on clean input; STALE_INPUT is a degrading flag, so tier B is not allowed.
    out = dc.run(state, clock, dc.pred(0.78, flags=stale), dc.pred(0.90, symbol="ETHUSDT", flags=stale))
    assert dc.decisions(out) == [("BINANCE_SPOT:ETHUSDT", "LONG", "TIER_A")]
    assert state.rule_counts.get("degraded_input", 0) >= 1  # the rule changed the 0.78 (B when clean)
    signals = [e.value for e in out.emits]
    assert all(common_pb2.STALE_INPUT in s.quality_flags for s in signals)  # type: ignore[attr-defined]


def test_supervisor_turns_the_bound_off_for_replays_unless_set() -> None:
    assert child_settings(Settings(), "replay:/x.gz").stale_input_s == 0.0
    assert child_settings(Settings(), "sim").stale_input_s == 5.0
    assert child_settings(Settings(stale_input_s=9.0), "replay:/x.gz").stale_input_s == 9.0


def test_ingest_flags_a_batch_whose_newest_event_arrived_too_old() -> None:
    from streams.ingest.config import IngestConfig
    from streams.ingest.core import flush, process
    from tests.unit.test_ingest_core import MS, T0, batches, trade

    state = IngestConfig.from_settings(Settings(stale_input_s=5.0)).new_state(common_pb2.BINANCE_SPOT)
    clock = ManualClock(T0)
    process([("BTCUSDT", trade(T0 // MS, 1), T0 + 100 * MS)], state, clock)  # 0.1 s in flight: fine
    late = T0 + 20 * MS
    process([("ETHUSDT", trade(late // MS - 6000, 1, symbol="ETHUSDT"), late)], state, clock)  # 6 s in flight
    clock.advance_us(50 * MS)
    out = {b.symbol: list(b.quality_flags) for b in batches(flush(state, clock))}
    assert common_pb2.STALE_INPUT not in out["BTCUSDT"] and common_pb2.STALE_INPUT in out["ETHUSDT"]
