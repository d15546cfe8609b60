"""Unit tests of the pure ingest core: Binance frames (through the state's codec) and normalised events, books,
micro-batching, quality flags, dead letters."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas import SCHEMA_VERSION, common_pb2, market_pb2
from streams.ingest import core
from streams.ingest.book import DepthUpdate
from streams.ingest.core import Frame, IngestOutputs, IngestState, apply_snapshot, flush, process
from streams.ingest.events import DepthEvent, Rejected, SnapshotEvent, TradeEvent
from streams.ingest.simulator import MarketSimulator
from streams.runtime.clock import ManualClock
from streams.runtime.instrument import key_of
from streams.runtime.topics import Topic, decode

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000  # µs
MS = 1_000
SNAPSHOT: dict[str, Any] = {
    "lastUpdateId": 100,
    "bids": [["100.00000000", "1.00000000"], ["99.00000000", "2.00000000"]],
    "asks": [["101.00000000", "1.50000000"], ["102.00000000", "2.50000000"]],
}


def trade(t_ms: int, trade_id: int = 1, price: str = "100.50000000", qty: str = "0.10000000",
          symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"e": "trade", "E": t_ms, "s": symbol, "t": trade_id, "p": price, "q": qty, "T": t_ms, "m": True}


def depth(t_ms: int, first: int, final: int, *, bids: list[list[str]] | None = None,
          asks: list[list[str]] | None = None, symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"e": "depthUpdate", "E": t_ms, "s": symbol, "U": first, "u": final, "b": bids or [], "a": asks or []}


def ticker(update_id: int, symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"u": update_id, "s": symbol, "b": "100.00000000", "B": "1.00000000", "a": "101.00000000",
            "A": "1.50000000"}


def seeded(clock: ManualClock, venue: common_pb2.Venue = common_pb2.SIMULATOR) -> IngestState:
    state = IngestState(venue=venue)
    out = apply_snapshot(state, "BTCUSDT", SNAPSHOT, clock)
    assert out.dead_letters == [] and out.resync_requests == []
    return state


def batches(out: IngestOutputs) -> list[market_pb2.TickBatch]:
    result = []
    for emit in out.emits:
        assert emit.topic is Topic.TICKS
        assert isinstance(emit.value, market_pb2.TickBatch)
        assert emit.key == key_of(emit.value)  # the instrument key: venue and symbol
        assert emit.exchange_us == emit.value.ts.exchange_us
        result.append(emit.value)
    return result


def kinds(batch: market_pb2.TickBatch) -> list[str]:
    return [str(ev.WhichOneof("event")) for ev in batch.events]


def test_events_within_the_window_make_one_tick_batch() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    t_ms = T0 // MS
    assert process([("BTCUSDT", trade(t_ms), T0)], state, clock).emits == []
    clock.advance_us(5 * MS)
    assert process([("BTCUSDT", depth(t_ms + 5, 101, 103, bids=[["100.00000000", "3.00000000"]]), T0 + 5 * MS)],
                   state, clock).emits == []
    clock.advance_us(14 * MS)  # 19 ms after the window opened: still open
    at_103 = {**ticker(103), "B": "3.00000000"}  # the book at update 103: the core cross-checks it
    assert process([("BTCUSDT", at_103, T0 + 19 * MS)], state, clock).emits == []
    clock.advance_us(1 * MS)  # 20 ms: the window has elapsed
    out = process([("BTCUSDT", trade(t_ms + 20, trade_id=2), T0 + 20 * MS)], state, clock)
    [batch] = batches(out)
    assert batch.schema_version == SCHEMA_VERSION
    assert batch.batch_id == "simulator:BTCUSDT:1"
    assert batch.sequence == 1
    assert batch.venue == common_pb2.SIMULATOR
    assert batch.symbol == "BTCUSDT"
    assert kinds(batch) == ["trade", "depth", "book_ticker", "book"]
    assert batch.events[0].trade.trade_id == 1
    assert batch.events[0].trade.exchange_us == T0
    assert batch.events[1].depth.first_update_id == 101 and batch.events[1].depth.final_update_id == 103
    assert batch.ts.exchange_us == T0 + 5 * MS                  # newest exchange time
    assert batch.ts.ingest_us == T0 + 19 * MS                   # local receive time of the newest event
    assert list(batch.quality_flags) == [common_pb2.SIMULATED]
    snap = batch.events[-1].book
    assert snap.last_update_id == 103
    assert [(lv.price, lv.qty) for lv in snap.bids] == [(100.0, 3.0), (99.0, 2.0)]
    assert [(lv.price, lv.qty) for lv in snap.asks] == [(101.0, 1.5), (102.0, 2.5)]
    assert snap.exchange_us == T0 + 5 * MS and snap.ingest_us == T0 + 5 * MS
    # The trade at 20 ms opened the next window; a forced flush emits it with the next sequence.
    [second] = batches(flush(state, clock, force=True))
    assert second.batch_id == "simulator:BTCUSDT:2" and second.sequence == 2
    assert kinds(second) == ["trade", "book"]
    assert flush(state, clock, force=True).emits == []


def test_time_based_flush_and_per_symbol_sequences() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    apply_snapshot(state, "ETHUSDT", SNAPSHOT, clock)
    t_ms = T0 // MS
    frames: list[Frame] = [("BTCUSDT", trade(t_ms), T0), ("ETHUSDT", trade(t_ms, symbol="ETHUSDT"), T0)]
    process(frames, state, clock)
    clock.advance_us(19 * MS)
    assert flush(state, clock).emits == []
    clock.advance_us(1 * MS)
    got = sorted(b.batch_id for b in batches(flush(state, clock)))
    assert got == ["simulator:BTCUSDT:1", "simulator:ETHUSDT:1"]
    process([("BTCUSDT", trade(t_ms + 20, trade_id=2), T0 + 20 * MS)], state, clock)
    clock.advance_us(20 * MS)
    assert [b.batch_id for b in batches(flush(state, clock))] == ["simulator:BTCUSDT:2"]


def test_sequence_base_keeps_batch_ids_unique_across_sessions() -> None:
    clock = ManualClock(T0)
    state = IngestState(venue=common_pb2.BINANCE_SPOT, sequence_base=5_000)
    apply_snapshot(state, "BTCUSDT", SNAPSHOT, clock)
    process([("BTCUSDT", trade(T0 // MS), T0)], state, clock)
    [batch] = batches(flush(state, clock, force=True))
    assert batch.batch_id == "binance_spot:BTCUSDT:5001"
    assert batch.sequence == 5_001
    assert common_pb2.SIMULATED not in batch.quality_flags


def test_simulator_run_is_deterministic_and_books_never_cross() -> None:
    def run() -> list[bytes]:
        sim = MarketSimulator(("BTCUSDT", "ETHUSDT"), 10_000, seed=9)
        clock = ManualClock(T0)
        state = IngestState(venue=common_pb2.SIMULATOR)
        sim.advance(T0)
        for symbol, rest_snapshot in sim.snapshots().items():
            apply_snapshot(state, symbol, rest_snapshot, clock)
        out = IngestOutputs()
        for _ in range(200):  # 1 s in 5 ms rounds
            clock.advance_us(5 * MS)
            now = clock.now_us()
            out.extend(process([(s, ev, now) for s, ev in sim.advance(now)], state, clock))
        out.extend(flush(state, clock, force=True))
        assert out.dead_letters == [] and out.resync_requests == []
        seqs: dict[str, int] = {}
        for batch in batches(out):
            assert batch.sequence == seqs.get(batch.symbol, 0) + 1  # +1 per batch, per symbol
            seqs[batch.symbol] = batch.sequence
            assert batch.events[-1].WhichOneof("event") == "book"
            snap = batch.events[-1].book
            assert 0 < len(snap.bids) <= 20 and 0 < len(snap.asks) <= 20
            assert snap.bids[0].price < snap.asks[0].price
            assert [lv.price for lv in snap.bids] == sorted((lv.price for lv in snap.bids), reverse=True)
            assert [lv.price for lv in snap.asks] == sorted(lv.price for lv in snap.asks)
            assert list(batch.quality_flags) == [common_pb2.SIMULATED]
            # Valid on the bus as the next stage will decode it.
            decode(Topic.TICKS.value, key_of(batch).encode(), batch.SerializeToString())
        assert seqs["BTCUSDT"] >= 45  # ~50 windows of 20 ms in 1 s
        return [e.value.SerializeToString() for e in out.emits]

    assert run() == run()


def test_bytes_frames_and_combined_stream_envelopes() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    t_ms = T0 // MS
    wrapped = orjson.dumps({"stream": "btcusdt@trade", "data": trade(t_ms, trade_id=7)})
    no_symbol = ticker(101)
    del no_symbol["s"]
    out = process([("", wrapped, T0), ("btcusdt@bookTicker", orjson.dumps(no_symbol), T0 + 1)], state, clock)
    assert out.dead_letters == []
    [batch] = batches(flush(state, clock, force=True))
    assert kinds(batch) == ["trade", "book_ticker", "book"]
    assert batch.events[0].trade.trade_id == 7
    assert batch.events[1].book_ticker.update_id == 101


def test_spot_book_ticker_time_is_estimated_from_the_clock_offset() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    # The exchange clock runs 300 ms ahead of ours: a bookTicker (no E) gets local time + that offset.
    process([("BTCUSDT", trade(T0 // MS + 300), T0)], state, clock)
    process([("BTCUSDT", ticker(101), T0 + 2 * MS)], state, clock)
    [batch] = batches(flush(state, clock, force=True))
    assert batch.events[1].book_ticker.exchange_us == T0 + 2 * MS + 300 * MS
    assert batch.ts.exchange_us == T0 + 300 * MS  # venue-stamped times win over estimates
    assert common_pb2.DEGRADED_TIME_SYNC in batch.quality_flags


def test_quality_flags_for_drift_resync_and_gap() -> None:
    clock = ManualClock(T0)
    state = IngestState(venue=common_pb2.BINANCE_SPOT)
    t_ms = T0 // MS
    # No snapshot yet: the book is waiting; one snapshot request, not one per diff.
    out = process([("BTCUSDT", depth(t_ms, 99, 101), T0), ("BTCUSDT", depth(t_ms, 102, 102), T0)], state, clock)
    assert out.resync_requests == ["BTCUSDT"]
    [batch] = batches(flush(state, clock, force=True))
    assert list(batch.quality_flags) == [common_pb2.BOOK_RESYNCING]
    assert kinds(batch) == ["depth", "depth"]  # no BookSnapshot from an unsynced book
    # The snapshot arrives; the buffered diffs connect.
    assert apply_snapshot(state, "BTCUSDT", SNAPSHOT, clock).resync_requests == []
    assert state.symbols["BTCUSDT"].book.last_update_id == 102
    # A gap: flagged, one resync request, later diffs buffered silently.
    out = process([("BTCUSDT", depth(t_ms, 104, 105), T0), ("BTCUSDT", depth(t_ms, 106, 107), T0)], state, clock)
    assert out.resync_requests == ["BTCUSDT"]
    assert state.symbols["BTCUSDT"].gaps == 1
    [batch] = batches(flush(state, clock, force=True))
    assert list(batch.quality_flags) == [common_pb2.BOOK_RESYNCING, common_pb2.SEQUENCE_GAP]
    # Exchange time now 150 ms ahead of local receive time: the drift EWMA (so far 0) crosses 100 ms after a
    # few dozen samples, not at the first outlier.
    apply_snapshot(state, "BTCUSDT", {**SNAPSHOT, "lastUpdateId": 107}, clock)
    process([("BTCUSDT", trade(t_ms + 150), T0)], state, clock)
    [batch] = batches(flush(state, clock, force=True))
    assert list(batch.quality_flags) == []
    assert batch.events[-1].book.last_update_id == 107
    process([("BTCUSDT", trade(t_ms + 150, trade_id=2 + i), T0) for i in range(40)], state, clock)
    [batch] = batches(flush(state, clock, force=True))
    assert list(batch.quality_flags) == [common_pb2.DEGRADED_TIME_SYNC]
    assert state.symbols["BTCUSDT"].drift_ewma_us == pytest.approx(150_000 * (1 - 0.95**41))


def test_mark_price_and_futures_depth() -> None:
    clock = ManualClock(T0)
    state = IngestState(venue=common_pb2.BINANCE_USDM, futures=True)
    apply_snapshot(state, "BTCUSDT", {**SNAPSHOT, "E": 1680652700590, "T": 1680652700580}, clock, local_us=T0)
    mark = b'{"e":"markPriceUpdate","E":1680652701000,"s":"BTCUSDT","p":"28147.27373413","P":"28142.15563565",' \
           b'"i":"28159.75642857","r":"0.00002754","T":1680652800000}'
    diff = {"e": "depthUpdate", "E": 1680652701001, "T": 1680652701000, "s": "BTCUSDT", "U": 95, "u": 110,
            "pu": 94, "b": [["100.00", "4.000"]], "a": []}
    out = process([("btcusdt@markPrice@1s", mark, T0), ("btcusdt@depth@0ms", diff, T0)], state, clock)
    assert out.dead_letters == [] and out.resync_requests == []
    [batch] = batches(flush(state, clock, force=True))
    m = batch.events[0].mark_price
    assert (m.mark_price, m.index_price, m.funding_rate) == (28147.27373413, 28159.75642857, 0.00002754)
    assert m.next_funding_us == 1680652800000 * MS and m.exchange_us == 1680652701000 * MS
    assert batch.events[1].depth.prev_final_update_id == 94
    assert batch.events[2].book.bids[0].qty == 4.0
    assert batch.batch_id == "binance_usdm:BTCUSDT:1"


BAD_FRAMES: list[tuple[str, bytes | dict[str, Any], str]] = [
    ("malformed json", b'{"e":"trade","E":17', "malformed_json"),
    ("not an object", b"[1, 2, 3]", "malformed_json"),
    ("unknown event", {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 1, "p": "1", "q": "1"}, "unknown_event_type"),
    ("non-numeric price", trade(T0 // MS, price="abc"), "invalid_price"),
    ("zero price", trade(T0 // MS, price="0.00000000"), "invalid_price"),
    ("negative price", trade(T0 // MS, price="-1"), "invalid_price"),
    ("nan price", trade(T0 // MS, price="NaN"), "invalid_price"),
    ("negative size", trade(T0 // MS, qty="-0.5"), "invalid_size"),
    ("negative depth qty", depth(T0 // MS, 101, 101, bids=[["100.0", "-1"]]), "invalid_size"),
    ("non-numeric depth price", depth(T0 // MS, 101, 101, asks=[["x", "1"]]), "invalid_price"),
    ("bad ticker price", {**ticker(101), "a": "0"}, "invalid_price"),
    ("missing trade id", {k: v for k, v in trade(T0 // MS).items() if k != "t"}, "missing_field"),
]


@pytest.mark.parametrize(("name", "raw", "error_type"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_are_dead_lettered_and_the_stream_continues(
    name: str, raw: bytes | dict[str, Any], error_type: str
) -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    t_ms = T0 // MS
    frames: list[Frame] = [
        ("BTCUSDT", trade(t_ms, trade_id=1), T0),
        ("BTCUSDT", raw, T0),
        ("BTCUSDT", trade(t_ms, trade_id=2), T0),
        ("BTCUSDT", depth(t_ms, 101, 101, bids=[["100.00000000", "5.00000000"]]), T0),
    ]
    out = process(frames, state, clock)
    [dead] = out.dead_letters
    assert dead.error_type == error_type, dead.reason
    assert dead.symbol == "BTCUSDT"
    assert dead.raw_bytes == (raw if isinstance(raw, bytes) else orjson.dumps(raw))
    assert dead.reason
    assert state.symbols["BTCUSDT"].bad_inputs == 1
    [batch] = batches(flush(state, clock, force=True))
    assert [ev.trade.trade_id for ev in batch.events[:2]] == [1, 2]
    if "depth" in name:
        # The unusable diff leaves the book unknown: one resync, the next diff waits for the snapshot.
        assert out.resync_requests == ["BTCUSDT"]
        assert state.symbols["BTCUSDT"].resyncs == {"bad_depth": 1}
        assert kinds(batch) == ["trade", "trade", "depth"]
        assert common_pb2.BOOK_RESYNCING in batch.quality_flags
    else:
        assert out.resync_requests == []
        assert kinds(batch) == ["trade", "trade", "depth", "book"]
        assert batch.events[-1].book.bids[0].qty == 5.0


def test_crossed_book_is_dead_lettered_with_one_resync_request() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    t_ms = T0 // MS
    crossing = depth(t_ms, 101, 101, bids=[["101.50000000", "1.00000000"]])
    frames: list[Frame] = [
        ("BTCUSDT", orjson.dumps(crossing), T0),
        ("BTCUSDT", depth(t_ms, 102, 102), T0),
        ("BTCUSDT", trade(t_ms), T0),
    ]
    out = process(frames, state, clock)
    [dead] = out.dead_letters
    assert dead.error_type == "crossed_book"
    assert dead.raw_bytes == orjson.dumps(crossing)
    assert out.resync_requests == ["BTCUSDT"]
    [batch] = batches(flush(state, clock, force=True))
    assert kinds(batch) == ["depth", "trade"]  # the crossing diff is not passed on; no book while resyncing
    assert common_pb2.BOOK_RESYNCING in batch.quality_flags
    # The requested snapshot heals it.
    healed = apply_snapshot(state, "BTCUSDT", {**SNAPSHOT, "lastUpdateId": 102}, clock)
    assert healed.dead_letters == [] and healed.resync_requests == []
    process([("BTCUSDT", trade(t_ms, trade_id=2), T0)], state, clock)
    [batch] = batches(flush(state, clock, force=True))
    assert list(batch.quality_flags) == [common_pb2.SIMULATED]
    assert kinds(batch) == ["trade", "book"]


def test_frames_without_any_symbol_are_dead_lettered_unattributed() -> None:
    clock = ManualClock(T0)
    state = IngestState()
    bad = trade(T0 // MS)
    del bad["s"]
    out = process([("", bad, T0), ("", b"{nope", T0)], state, clock)
    assert [d.error_type for d in out.dead_letters] == ["missing_field", "malformed_json"]
    assert state.unattributed_bad_inputs == 2
    assert state.symbols == {}


def test_big_windows_are_split_to_bound_the_message_size() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    state.max_batch_events = 10
    out = process([("BTCUSDT", trade(T0 // MS, trade_id=i), T0) for i in range(25)], state, clock)
    assert [len(b.events) for b in batches(out)] == [11, 11]  # 10 events + the BookSnapshot
    [rest] = batches(flush(state, clock, force=True))
    assert len(rest.events) == 6


def test_the_core_takes_normalised_events_from_any_codec() -> None:
    """No JSON and no codec: events as a codec of any venue would hand them over, through ``core.ingest``."""
    clock = ManualClock(T0)
    state = IngestState(venue=common_pb2.BINANCE_USDM, futures=True)
    seed = SnapshotEvent("BTCUSDT", 100, [(100.0, 1.0)], [(101.0, 2.0)], 0, T0, b"{}")
    assert core.ingest([seed], state, clock).resync_requests == []

    def trade(trade_id: int) -> TradeEvent:
        ev = market_pb2.MarketEvent(trade={"trade_id": trade_id, "price": 100.5, "qty": 1.0, "exchange_us": T0,
                                           "ingest_us": T0})
        return TradeEvent("BTCUSDT", ev, T0, sent_us=T0)

    update = DepthUpdate(95, 101, 99, [(100.0, 3.0)], [], T0, T0)
    diff = DepthEvent("BTCUSDT", market_pb2.MarketEvent(depth={"first_update_id": 95, "final_update_id": 101,
                                                                "prev_final_update_id": 99}), update, T0, T0, b"{}")
    bad = Rejected("BTCUSDT", b"\x00", "undecodable", "not this venue's format", depth=True)
    out = core.ingest([trade(1), trade(1), diff, trade(2), bad], state, clock)
    out.extend(flush(state, clock, force=True))
    [batch] = batches(out)
    assert kinds(batch) == ["trade", "depth", "trade"]  # the duplicate dropped; the rejected diff unsyncs the book
    assert [(d.error_type, d.raw_bytes) for d in out.dead_letters] == [("undecodable", b"\x00")]
    st = state.symbols["BTCUSDT"]
    assert (st.duplicates, st.depth_updates, st.resyncs) == (1, 1, {"bad_depth": 1})
    assert out.resync_requests == ["BTCUSDT"]
    assert state.codec is None  # nothing needed decoding
