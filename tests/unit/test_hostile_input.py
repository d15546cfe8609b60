"""Hostile input (issue 16, items 3, 5 and 6): oversize fields at decode, absurd values at every stage, and one
symbol's backlog under backpressure. Each test feeds the probe values found on main through the real entry
point (``topics.decode`` or the stage's ``process``) and checks the exact dead-letter reason, that no output is
produced for the hostile record, and that a valid record beside it still produces its output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, market_pb2, prediction_pb2, signal_pb2
from streams.decision.core import DecisionState
from streams.decision.core import process as decide
from streams.features import stage as features_stage
from streams.features.core import Backpressure, FeatureState
from streams.features.core import process as featurize
from streams.features.definitions import FEATURE_VERSION
from streams.infer.core import InferState
from streams.infer.core import process as infer
from streams.infer.model import load_model
from streams.runtime import validate as v
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs, StageContext
from streams.runtime.instrument import key_of
from streams.runtime.settings import Settings
from streams.runtime.topics import InvalidMessage, Topic, decode
from tests.unit.test_decision_core import pred, state_of
from tests.unit.test_features_core import ASKS, STEP, tick_batch
from tests.unit.test_infer_core import write_model

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000_000  # the injected clock, µs
SECOND = 1_000_000
FAR_FUTURE_US = 9_000_000_000_000_000_000  # the probe: 9e18 µs, year ~287,000
TEN_MB = 10 * 1024 * 1024
BOUNDS = v.TimeBounds.from_settings(Settings())  # the defaults the stages run with: +60 s, -10 years
NAN, INF = math.nan, math.inf


def rejects(out: Outputs) -> list[tuple[str, str]]:
    return [(r.error_type, r.reason) for r in out.rejects]


# --- decode: field sizes --------------------------------------------------------------------------------------


def feature_vector(**overrides: Any) -> features_pb2.FeatureVector:
    base: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "vector_id": "simulator:BTCUSDT:7", "venue": common_pb2.SIMULATOR,
        "symbol": "BTCUSDT", "feature_version": FEATURE_VERSION, "names": ["a", "b"], "values": [0.5, NAN],
        "regime": "vol_low_depth_thick", "mid_price": 100.25, "data_window_id": "BTCUSDT:1-7",
    }
    base.update(overrides)
    vec = features_pb2.FeatureVector(**base)
    vec.ts.exchange_us, vec.ts.ingest_us, vec.ts.features_us = NOW - 3_000, NOW - 2_000, NOW - 1_000
    return vec


def decode_error(topic: Topic, key: bytes | None, message: Any) -> tuple[str, str]:
    with pytest.raises(InvalidMessage) as info:
        decode(topic.value, key, message.SerializeToString())
    return info.value.error_type, info.value.reason


def test_a_10_mb_data_window_id_is_refused_at_decode() -> None:
    """Probe: a FeatureVector whose data_window_id is 10 MB (infer copied it into a prediction the producer
    could not send, and crashed on every restart)."""
    huge = feature_vector(data_window_id="x" * TEN_MB)
    assert decode_error(Topic.FEATURES, None, huge) == (
        "field_too_large", "FeatureVector.data_window_id is 10485760 bytes, limit 256")
    # At the limit it decodes; the same vector with a normal window id is fine.
    assert decode(Topic.FEATURES.value, None, feature_vector(data_window_id="w" * 256).SerializeToString())
    decoded = decode(Topic.FEATURES.value, None, feature_vector().SerializeToString())
    assert isinstance(decoded, features_pb2.FeatureVector) and decoded.data_window_id == "BTCUSDT:1-7"


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"vector_id": "v" * 129}, ("field_too_large", "FeatureVector.vector_id is 129 bytes, limit 128")),
    ({"feature_version": "f" * 65}, ("field_too_large", "FeatureVector.feature_version is 65 bytes, limit 64")),
    ({"regime": "r" * 65}, ("field_too_large", "FeatureVector.regime is 65 bytes, limit 64")),
    # UTF-8 bytes count, not characters: 100 euro signs are 300 bytes.
    ({"data_window_id": "€" * 100}, ("field_too_large", "FeatureVector.data_window_id is 300 bytes, limit 256")),
    ({"names": [f"f{i}" for i in range(1025)], "values": [0.0] * 1025},
     ("field_too_large", "FeatureVector.names has 1025 entries, limit 1024")),
    ({"quality_flags": [common_pb2.SIMULATED] * 33},
     ("field_too_large", "FeatureVector.quality_flags has 33 entries, limit 32")),
    ({"symbol": "B" * 33}, ("field_too_large", "FeatureVector.symbol is 33 characters, limit 32")),
    ({"symbol": "btcusdt"}, ("invalid_symbol", "FeatureVector.symbol 'btcusdt' is not 1-32 characters of [A-Z0-9_-]")),
    ({"symbol": "BTC/USDT"}, ("invalid_symbol",
                              "FeatureVector.symbol 'BTC/USDT' is not 1-32 characters of [A-Z0-9_-]")),
])
def test_oversize_and_ill_formed_fields_are_refused_at_decode(overrides: dict[str, Any],
                                                              expected: tuple[str, str]) -> None:
    """Probe: every copied string and list one past its bound, and symbols outside [A-Z0-9_-]{1,32}."""
    vec = feature_vector(**overrides)
    assert decode_error(Topic.FEATURES, vec.symbol.encode(), vec) == expected


def test_nested_and_derived_id_bounds_at_decode() -> None:
    """Probe: an oversize name inside a prediction's top_features, and derived ids at and past their bound."""
    p = pred(0.9)
    p.top_features[0].name = "t" * 129
    assert decode_error(Topic.PREDICTIONS, None, p) == (
        "field_too_large", "Prediction.top_features[0].name is 129 bytes, limit 128")
    ok = pred(0.9)
    ok.prediction_id = "p" * 256  # a 128-byte vector id + ':' + a 64-byte version + room for the horizon
    assert decode(Topic.PREDICTIONS.value, key_of(ok).encode(), ok.SerializeToString())
    ok.prediction_id += "p"
    assert decode_error(Topic.PREDICTIONS, None, ok) == (
        "field_too_large", "Prediction.prediction_id is 257 bytes, limit 256")
    sig = signal_pb2.Signal(schema_version=SCHEMA_VERSION, signal_id="s1", symbol="BTCUSDT",
                            cost_model_version="c" * 65)
    assert decode_error(Topic.SIGNALS, None, sig) == (
        "field_too_large", "Signal.cost_model_version is 65 bytes, limit 64")


def test_a_huge_key_does_not_make_a_huge_dead_letter_reason() -> None:
    """Probe: a 10 MB record key on a valid vector; the key_mismatch reason must stay small."""
    with pytest.raises(InvalidMessage) as info:
        decode(Topic.FEATURES.value, b"K" * TEN_MB, feature_vector().SerializeToString())
    assert info.value.error_type == "key_mismatch"
    assert info.value.reason == (f"record key {b'K' * 48 + b'...'!r} (10485760 bytes) differs from the instrument "
                                 "key 'SIMULATOR:BTCUSDT'")


def test_a_stage_output_of_valid_input_passes_the_next_decode() -> None:
    """The bounds chain: ids derived from inputs at their limits are still accepted downstream."""
    vector_id = "v" * 128
    prediction_id = f"{vector_id}:{'m' * 64}"
    signal_id = f"{prediction_id}:{2**32 - 1}"
    p = pred(0.9)
    p.prediction_id, p.model_version = prediction_id, "m" * 64
    assert decode(Topic.PREDICTIONS.value, key_of(p).encode(), p.SerializeToString())
    s = signal_pb2.Signal(schema_version=SCHEMA_VERSION, signal_id=signal_id, symbol="BTCUSDT",
                          data_window_id=f"{'S' * 32}:{2**64 - 1}-{2**64 - 1}")
    assert decode(Topic.SIGNALS.value, key_of(s).encode(), s.SerializeToString())


# --- features -------------------------------------------------------------------------------------------------


def features_state(**kw: Any) -> FeatureState:
    return FeatureState(bounds=BOUNDS, **kw)


def run_features(batches: list[market_pb2.TickBatch], state: FeatureState, now_us: int = NOW) -> Outputs:
    return featurize([InRecord(value=b, key=b.symbol) for b in batches], state, ManualClock(now_us))


def vector_ids(out: Outputs) -> list[str]:
    return [e.value.vector_id for e in out.emits]  # type: ignore[attr-defined]


def test_the_features_stage_wires_the_time_bounds() -> None:
    state = features_stage.new_state(Settings())
    assert state.bounds == BOUNDS == v.TimeBounds(60 * SECOND, 315_360_000 * SECOND)
    assert FeatureState().bounds == v.UNBOUNDED  # a state built directly (batch tools, tests) has no time bound


def with_trade_time(tb: market_pb2.TickBatch, t_us: int) -> market_pb2.TickBatch:
    for ev in tb.events:
        if ev.WhichOneof("event") == "trade":
            ev.trade.exchange_us = t_us
    return tb


def test_absurd_ticks_are_rejected_and_leave_the_symbol_state_alone() -> None:
    """Probe: trade prices -100, 1e308, NaN and +inf, a book level of 1e308, a mark price of 1e308, a trade size
    of 1e308, and exchange_us 9e18 (on the batch, and on one trade of an otherwise current batch)."""
    t = NOW - 50_000
    far_ask = [ASKS[0], ASKS[1], (1e308, 1.0)]
    mark = tick_batch(9, t + 8 * STEP)
    mp = mark.events.add().mark_price
    mp.mark_price, mp.index_price, mp.funding_rate, mp.exchange_us = 1e308, 100.0, 0.0001, t + 8 * STEP
    future = tick_batch(7, t + 6 * STEP)
    future.ts.exchange_us = FAR_FUTURE_US
    hostile = [
        tick_batch(2, t + STEP, trades=[(-100.0, 1.0, False)]),
        tick_batch(3, t + 2 * STEP, trades=[(1e308, 1.0, False)]),
        tick_batch(4, t + 3 * STEP, trades=[(NAN, 1.0, False)]),
        tick_batch(5, t + 4 * STEP, trades=[(INF, 1.0, False)]),
        tick_batch(6, t + 5 * STEP, asks=far_ask),
        future,
        with_trade_time(tick_batch(8, t + 7 * STEP, trades=[(100.2, 1.0, False)]), FAR_FUTURE_US),
        mark,
        tick_batch(10, t + 9 * STEP, trades=[(100.2, 1e308, True)]),
    ]
    good = [tick_batch(1, t), tick_batch(11, t + 10 * STEP, trades=[(100.2, 1.0, False)])]
    state = features_state()
    out = run_features([good[0], *hostile, good[1]], state)
    assert rejects(out) == [
        ("invalid_price", "trade 200 price -100.0"),
        ("invalid_price", "trade[0] price is 1e+308: must be finite and at most 1e+12"),
        ("invalid_price", "trade 400 price nan"),
        ("invalid_price", "trade 500 price inf"),
        ("invalid_price", "book asks[2] price is 1e+308: must be finite and at most 1e+12"),
        ("event_time_in_future", f"ts.exchange_us {FAR_FUTURE_US} is 8.9983e+12 s ahead of the clock ({NOW}), "
                                 "limit 60 s"),
        ("event_time_in_future", f"trade[0].exchange_us {FAR_FUTURE_US} is 8.9983e+12 s ahead of the clock "
                                 f"({NOW}), limit 60 s"),
        ("invalid_price", "mark[0] price is 1e+308: must be finite and at most 1e+12"),
        ("invalid_qty", "trade[0] qty is 1e+308: must be finite and at most 1e+18"),
    ]
    assert [r.record.value for r in out.rejects] == hostile
    assert vector_ids(out) == ["sim:BTCUSDT:1", "sim:BTCUSDT:11"]
    # The valid vectors are exactly those of a state that never saw the hostile batches: nothing leaked in
    # (a 9e18 event time would have become the symbol's clock for good).
    clean = run_features(good, features_state())
    assert [e.value.SerializeToString() for e in out.emits] == [e.value.SerializeToString() for e in clean.emits]
    assert state.symbol(common_pb2.SIMULATOR, "BTCUSDT").event_time_us == t + 10 * STEP


def test_event_time_bounds_are_relative_to_the_injected_clock() -> None:
    """Probe: a batch 61 s ahead of the clock and one 11 years behind it; 59 s ahead and 9 years behind pass
    (replays of old captures run on the live clock)."""
    year = 365 * 86_400 * SECOND
    batches = [tick_batch(1, NOW + 61 * SECOND, symbol="AUSDT"), tick_batch(1, NOW - 11 * year, symbol="BUSDT"),
               tick_batch(1, NOW + 59 * SECOND, symbol="CUSDT"), tick_batch(1, NOW - 9 * year, symbol="DUSDT")]
    out = run_features(batches, features_state())
    assert rejects(out) == [
        ("event_time_in_future", f"ts.exchange_us {NOW + 61 * SECOND} is 61 s ahead of the clock ({NOW}), "
                                 "limit 60 s"),
        ("event_time_too_old", f"ts.exchange_us {NOW - 11 * year} is 3.46896e+08 s behind the clock ({NOW}), "
                               "limit 3.1536e+08 s"),
    ]
    assert vector_ids(out) == ["sim:CUSDT:1", "sim:DUSDT:1"]
    # The same batches on a state without bounds (the default of a directly built state) all pass.
    assert len(run_features(batches, FeatureState()).emits) == 4


# --- features: per-symbol backpressure (item 6) ----------------------------------------------------------------


def tiers_dropped(out: Outputs) -> dict[str, bool]:
    return {e.value.vector_id: common_pb2.TIERS_DROPPED in e.value.quality_flags  # type: ignore[attr-defined]
            for e in out.emits}


def test_one_symbols_old_batch_does_not_drop_the_tiers_of_the_others() -> None:
    """Probe: symbol A's batches arrive 10 s late (above the 5 s drop threshold) while B is 3 s behind (above
    the 1 s resume threshold, below the drop one). Before, the one stage-wide flag flipped on A's batch and,
    by hysteresis, kept B's tiers dropped; now each symbol is judged on its own lag."""
    state = features_state(backpressure=Backpressure(drop_lag_s=5.0, resume_lag_s=1.0))
    stats = state.backpressure.stats
    a1 = tick_batch(1, NOW - 10 * SECOND, symbol="AUSDT")
    out = run_features([a1], state)
    assert tiers_dropped(out) == {"sim:AUSDT:1": True}
    assert (stats.dropped, stats.symbols_dropped, stats.episodes, stats.last_lag_s) == (True, 1, 1, 10.0)
    # B alone, 3 s behind: not dropped, though the stage has a symbol with dropped tiers.
    out = run_features([tick_batch(1, NOW - 3 * SECOND, symbol="BUSDT")], state)
    assert tiers_dropped(out) == {"sim:BUSDT:1": False}
    # Both in one consumed batch: A (still late) keeps its flag, B does not get it.
    out = run_features([tick_batch(2, NOW - 10 * SECOND + STEP, symbol="AUSDT"),
                        tick_batch(2, NOW - 3 * SECOND + STEP, symbol="BUSDT")], state)
    assert tiers_dropped(out) == {"sim:AUSDT:2": True, "sim:BUSDT:2": False}
    assert (stats.symbols_dropped, stats.episodes, stats.vectors_dropped) == (1, 1, 2)
    assert stats.last_lag_s == pytest.approx(10.0 - STEP / SECOND)  # the worst symbol's lag
    # A catches up: restored; no symbol is dropped any more.
    out = run_features([tick_batch(3, NOW - STEP, symbol="AUSDT")], state)
    assert tiers_dropped(out) == {"sim:AUSDT:3": False}
    assert (stats.dropped, stats.symbols_dropped, stats.episodes) == (False, 0, 1)


def test_a_lone_straggler_of_a_current_symbol_does_not_drop_its_tiers() -> None:
    """Probe: one late batch (20 s old) of a symbol whose state is already current. Its lag is that of the
    newest event the symbol has reached, so the straggler is not a backlog."""
    state = features_state(backpressure=Backpressure(drop_lag_s=5.0, resume_lag_s=1.0))
    run_features([tick_batch(1, NOW - STEP)], state)
    out = run_features([tick_batch(2, NOW - 20 * SECOND)], state)
    assert tiers_dropped(out) == {"sim:BTCUSDT:2": False}
    assert state.backpressure.stats.episodes == 0


def test_tier_metrics_count_symbols() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    state = features_state(backpressure=Backpressure(drop_lag_s=5.0, resume_lag_s=1.0))
    registry = CollectorRegistry()
    features_stage.register_metrics(registry, state)
    run_features([tick_batch(1, NOW - 8 * SECOND, symbol="AUSDT"), tick_batch(1, NOW - 9 * SECOND, symbol="BUSDT"),
                  tick_batch(1, NOW, symbol="CUSDT")], state)
    text = generate_latest(registry).decode()
    assert 'surge_features_symbols_tiers_dropped{stage="features"} 2.0' in text
    assert 'surge_features_tiers_dropped{stage="features"} 1.0' in text
    assert 'surge_features_lag_seconds{stage="features"} 9.0' in text


# --- infer ----------------------------------------------------------------------------------------------------


@pytest.fixture
def infer_state(tmp_path: Path) -> InferState:
    return InferState(load_model(write_model(tmp_path / "toy"), intra_op_threads=1), bounds=BOUNDS)


def infer_vector(i: int, values: tuple[float, float, float, float] = (0.1, 0.5, 3.0, 1.25), *,
                 mid_price: float = 100.25, exchange_us: int = NOW - 3_000) -> features_pb2.FeatureVector:
    vec = feature_vector(vector_id=f"simulator:BTCUSDT:{i}", names=["a", "b", "c", "spread_bps"],
                         values=list(values), mid_price=mid_price, data_window_id=f"BTCUSDT:1-{i}")
    vec.ts.exchange_us = exchange_us
    return vec


def run_infer(vecs: list[features_pb2.FeatureVector], state: InferState, now_us: int = NOW) -> Outputs:
    return infer([InRecord(value=x, key=x.symbol) for x in vecs], state, ManualClock(now_us))


def test_the_infer_stage_wires_the_time_bounds(tmp_path: Path) -> None:
    from streams.infer.stage import make_state

    settings = Settings(model_dir=write_model(tmp_path / "toy"), infer_registry=False)
    state = make_state(StageContext.standalone("infer", settings))
    assert state.bounds == BOUNDS


def test_absurd_vectors_are_rejected_not_scored(infer_state: InferState) -> None:
    """Probe: all-NaN and all-+inf vectors, one -inf among finite values, mid_price -1, NaN, 0, +inf and 1e308,
    exchange_us 9e18 and 0, and a features_us more than the skew before exchange_us."""
    late_stamp = infer_vector(12)
    late_stamp.ts.features_us = late_stamp.ts.exchange_us - 61 * SECOND
    hostile = [
        infer_vector(1, (NAN, NAN, NAN, NAN)),
        infer_vector(2, (INF, INF, INF, INF)),
        infer_vector(3, (0.1, -INF, 3.0, 1.25)),
        infer_vector(4, mid_price=-1.0),
        infer_vector(5, mid_price=NAN),
        infer_vector(6, mid_price=0.0),
        infer_vector(7, mid_price=INF),
        infer_vector(8, mid_price=1e308),
        infer_vector(9, exchange_us=FAR_FUTURE_US),
        infer_vector(10, exchange_us=0),
        late_stamp,
    ]
    some_nan = infer_vector(13, (0.1, NAN, NAN, 1.25))  # insufficient windows are NaN by design: scored
    out = run_infer([infer_vector(0), *hostile, some_nan], infer_state)
    assert rejects(out) == [
        ("invalid_value", "all 4 feature values are NaN: nothing to score"),
        ("invalid_value", "feature a is inf: must be finite or NaN"),
        ("invalid_value", "feature b is -inf: must be finite or NaN"),
        ("invalid_price", "mid_price is -1.0: must be finite and > 0"),
        ("invalid_price", "mid_price is nan: must be finite and > 0"),
        ("invalid_price", "mid_price is 0.0: must be finite and > 0"),
        ("invalid_price", "mid_price is inf: must be finite and > 0"),
        ("invalid_price", "mid_price is 1e+308: must be finite and at most 1e+12"),
        ("event_time_in_future", f"ts.exchange_us {FAR_FUTURE_US} is 8.9983e+12 s ahead of the clock ({NOW}), "
                                 "limit 60 s"),
        ("missing_event_time", "ts.exchange_us is 0: no event time"),
        ("invalid_timestamps", f"ts.features_us {NOW - 3_000 - 61 * SECOND} is 61 s before ts.exchange_us "
                               f"{NOW - 3_000}, limit 60 s"),
    ]
    assert [r.record.value for r in out.rejects] == hostile
    assert [e.value.prediction_id for e in out.emits] == [  # type: ignore[attr-defined]
        "simulator:BTCUSDT:0:toy-1", "simulator:BTCUSDT:13:toy-1"]
    assert infer_state.metrics.invalid_outputs.labels("toy-1", "active")._value.get() == 0  # input, not model


# --- decision -------------------------------------------------------------------------------------------------


def run_decision(preds: list[prediction_pb2.Prediction], state: DecisionState, now_us: int = NOW) -> Outputs:
    return decide([InRecord(value=p, key=p.symbol) for p in preds], state, ManualClock(now_us))


def with_(p: prediction_pb2.Prediction, **fields: float) -> prediction_pb2.Prediction:
    for name, value in fields.items():
        if name in ("upper_barrier_bps", "lower_barrier_bps"):
            setattr(p.horizons[0], name, value)
        elif name in ("exchange_us", "infer_us"):
            setattr(p.ts, name, int(value))
        else:
            setattr(p, name, value)
    return p


def test_the_decision_stage_wires_the_time_bounds() -> None:
    from streams.decision.stage import spec

    runtime = spec(Settings()).make_state(StageContext.standalone("decision", Settings()))
    assert runtime.state.config.bounds == BOUNDS


def test_absurd_predictions_are_rejected_and_publish_no_signal() -> None:
    """Probe: price -100 and 1e308 (published as TIER_A before), NaN, +inf and 0; p_up NaN, +inf, -0.1 and 1.5;
    exchange_us 9e18 (a latency of -9e15 ms), 0 and 11 years old; infer_us 61 s before exchange_us; spread
    1e308 and NaN; barriers +inf and -1."""
    t = NOW - 50_000
    hostile = [
        with_(pred(0.9, i=1, exchange_us=t), mid_price=-100.0),
        with_(pred(0.9, i=2, exchange_us=t), mid_price=1e308),
        with_(pred(0.9, i=3, exchange_us=t), mid_price=NAN),
        with_(pred(0.9, i=4, exchange_us=t), mid_price=INF),
        with_(pred(0.9, i=5, exchange_us=t), mid_price=0.0),
        pred(NAN, i=6, exchange_us=t),
        pred(INF, i=7, exchange_us=t),
        pred(-0.1, i=8, exchange_us=t),
        pred(1.5, i=9, exchange_us=t),
        pred(0.9, i=10, exchange_us=FAR_FUTURE_US),
        pred(0.9, i=11, exchange_us=0),
        pred(0.9, i=12, exchange_us=NOW - 11 * 365 * 86_400 * SECOND),
        with_(pred(0.9, i=13, exchange_us=t), infer_us=t - 61 * SECOND),
        pred(0.9, i=14, exchange_us=t, spread_bps=1e308),
        pred(0.9, i=15, exchange_us=t, spread_bps=NAN),
        with_(pred(0.9, i=16, exchange_us=t), upper_barrier_bps=INF),
        with_(pred(0.9, i=17, exchange_us=t), lower_barrier_bps=-1.0),
    ]
    state = state_of()
    valid = pred(0.9, i=18, exchange_us=t)
    out = run_decision([*hostile, valid], state)
    assert rejects(out) == [
        ("invalid_price", "mid_price is -100.0: must be finite and > 0"),
        ("invalid_price", "mid_price is 1e+308: must be finite and at most 1e+12"),
        ("invalid_price", "mid_price is nan: must be finite and > 0"),
        ("invalid_price", "mid_price is inf: must be finite and > 0"),
        ("invalid_price", "mid_price is 0.0: must be finite and > 0"),
        ("invalid_probability", "horizon 5 p_up is nan: must be finite and in [0, 1]"),
        ("invalid_probability", "horizon 5 p_up is inf: must be finite and in [0, 1]"),
        ("invalid_probability", "horizon 5 p_up is -0.1: must be finite and in [0, 1]"),
        ("invalid_probability", "horizon 5 p_up is 1.5: must be finite and in [0, 1]"),
        ("event_time_in_future", f"ts.exchange_us {FAR_FUTURE_US} is 8.9983e+12 s ahead of the clock ({NOW}), "
                                 "limit 60 s"),
        ("missing_event_time", "ts.exchange_us is 0: no event time"),
        ("event_time_too_old", f"ts.exchange_us {NOW - 11 * 365 * 86_400 * SECOND} is 3.46896e+08 s behind the "
                               f"clock ({NOW}), limit 3.1536e+08 s"),
        ("invalid_timestamps", f"ts.infer_us {t - 61 * SECOND} is 61 s before ts.exchange_us {t}, limit 60 s"),
        ("invalid_spread", "spread_bps is 1e+308: must be finite and in [0, 20000]"),
        ("invalid_spread", "spread_bps is nan: must be finite and in [0, 20000]"),
        ("invalid_barrier", "horizon 5 upper_barrier_bps is inf: must be finite and in [0, 10000]"),
        ("invalid_barrier", "horizon 5 lower_barrier_bps is -1.0: must be finite and in [0, 10000]"),
    ]
    assert [r.record.value for r in out.rejects] == hostile
    # The valid prediction of the same symbol is a signal: no hostile one started a cooldown.
    (emit,) = out.emits
    signal = emit.value
    assert isinstance(signal, signal_pb2.Signal)
    assert (signal.signal_id, signal.decision, signal.tier, signal.price) == (
        "BTCUSDT:18:m7:5", signal_pb2.LONG, signal_pb2.TIER_A, 64_000.5)
    assert signal.ts.decision_us - signal.ts.exchange_us == 50_000  # a sane latency


def test_a_stage_stamp_ahead_of_the_clock_is_rejected() -> None:
    """Probe: an infer_us 61 s ahead of the decision stage's clock (exchange_us itself is current)."""
    p = with_(pred(0.9, exchange_us=NOW - 50_000), infer_us=NOW + 61 * SECOND)
    out = run_decision([p], state_of())
    assert rejects(out) == [("invalid_timestamps", f"ts.infer_us {NOW + 61 * SECOND} is 61 s ahead of the clock "
                                                   f"({NOW}), limit 60 s")]
    assert not out.emits


# --- the shared rules -------------------------------------------------------------------------------------------


@given(st.floats(min_value=5e-324, max_value=v.MAX_PRICE))
def test_any_finite_positive_price_up_to_the_bound_passes(price: float) -> None:
    assert v.finite_positive_price("price", price) is None


@given(st.one_of(st.floats(max_value=0.0), st.floats(min_value=v.MAX_PRICE, exclude_min=True),
                 st.just(NAN), st.just(INF), st.just(-INF)))
def test_anything_else_is_an_invalid_price(price: float) -> None:
    problem = v.finite_positive_price("price", price)
    assert problem is not None and problem[0] == "invalid_price" and problem[1].startswith(f"price is {price!r}: ")


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(min_value=1, max_value=2**62))
def test_event_time_within_bounds_iff_within_skew_and_age(t_us: int, now_us: int) -> None:
    problem = v.event_time_within("t", t_us, now_us, BOUNDS)
    ok = t_us > 0 and t_us - now_us <= BOUNDS.max_future_us and now_us - t_us <= BOUNDS.max_age_us
    assert (problem is None) == ok
    assert v.event_time_within("t", t_us, now_us, v.UNBOUNDED) is None or t_us <= 0
