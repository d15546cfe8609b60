"""The book top and the funding rate travel features -> infer -> decision, where the cost model uses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import common_pb2, market_pb2, signal_pb2
from streams.decision.core import evaluate
from streams.features.core import FeatureState
from streams.infer.core import InferState
from streams.infer.core import process as infer
from streams.infer.model import load_model
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from tests.unit.test_decision_core import pred, state_of
from tests.unit.test_features_core import ASKS, BIDS, T0, run, tick_batch
from tests.unit.test_infer_core import vector, write_model

pytestmark = pytest.mark.unit


def test_the_features_stage_forwards_the_last_book_top() -> None:
    state = FeatureState()
    out = run([tick_batch(1, T0)], state, ManualClock(T0 + 10_000))
    (vec,) = [e.value for e in out.emits]
    assert [(lv.price, lv.qty) for lv in vec.book_bids] == [tuple(b) for b in BIDS[:10]]  # type: ignore[attr-defined]
    assert [(lv.price, lv.qty) for lv in vec.book_asks] == [tuple(a) for a in ASKS[:10]]  # type: ignore[attr-defined]
    assert not vec.HasField("funding_rate")  # spot, no markPrice: no funding  # type: ignore[attr-defined]


def test_infer_copies_book_and_funding_onto_the_prediction(tmp_path: Path) -> None:
    vec = vector(1)
    vec.book_bids.add(price=99.99, qty=2.0)
    vec.book_asks.add(price=100.01, qty=3.0)
    vec.funding_rate = 0.0001
    state = InferState(load_model(write_model(tmp_path / "toy")))
    (emit,) = infer([InRecord(value=vec, key="")], state, ManualClock(vec.ts.exchange_us + 1_000)).emits
    p = emit.value
    assert [(lv.price, lv.qty) for lv in p.book_bids] == [(99.99, 2.0)]  # type: ignore[attr-defined]
    assert [(lv.price, lv.qty) for lv in p.book_asks] == [(100.01, 3.0)]  # type: ignore[attr-defined]
    assert p.funding_rate == 0.0001  # type: ignore[attr-defined]


def test_the_decision_walks_the_book_and_charges_funding_by_side() -> None:
    """Fixed tables: 2 x 2 bps fees + 1 bp spread + 0.5 bp table slippage = 5.5 bps. A deep book walks to 0 bps
    of slippage at the order size (5.0 bps); USD-M funding of 1 bp per 8 h over 5 minutes costs a LONG
    1e-4 x 1e4 x 5 / 480 bps and pays a SHORT the same."""
    state = state_of()
    deep = pred(0.9, horizons=(5,))
    deep.book_bids.add(price=64_000.0, qty=1e6)
    deep.book_asks.add(price=64_001.0, qty=1e6)
    ev = evaluate(deep, deep.horizons[0], state.config, state.cost)
    assert ev.estimated_cost_bps == pytest.approx(5.0)
    funding = 1e-4 * 1e4 * 5 / 480
    long_p = pred(0.9, horizons=(5,), venue=common_pb2.BINANCE_USDM)
    long_p.funding_rate = 1e-4
    short_p = pred(0.1, horizons=(5,), venue=common_pb2.BINANCE_USDM)
    short_p.funding_rate = 1e-4
    long_ev = evaluate(long_p, long_p.horizons[0], state.config, state.cost)
    short_ev = evaluate(short_p, short_p.horizons[0], state.config, state.cost)
    assert (long_ev.decision, short_ev.decision) == (signal_pb2.LONG, signal_pb2.SHORT)
    assert long_ev.estimated_cost_bps == pytest.approx(5.5 + funding)
    assert short_ev.estimated_cost_bps == pytest.approx(5.5 - funding)


def test_a_tick_batch_without_a_book_forwards_none() -> None:
    tb = tick_batch(1, T0, bids=None, asks=None, trades=[(100.0, 1.0, False)])
    assert isinstance(tb, market_pb2.TickBatch)
    out = run([tb], FeatureState(), ManualClock(T0 + 10_000))
    assert all(not e.value.book_bids for e in out.emits)  # type: ignore[attr-defined]
