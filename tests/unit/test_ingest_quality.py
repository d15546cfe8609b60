"""Unit tests of the ingest core's data-quality machinery: dedupe, trade gaps and backfill, bookTicker cross-check,
resync episodes, quarantine, and their Prometheus export."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas import common_pb2, market_pb2
from streams.ingest import core
from streams.ingest.core import Frame, IngestOutputs, IngestState, TradeGap, apply_snapshot, flush, process
from streams.ingest.quality import IngestQuality, health_detail
from streams.runtime.clock import ManualClock

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000
MS = 1_000
SNAPSHOT: dict[str, Any] = {
    "lastUpdateId": 100,
    "bids": [["100.00000000", "1.00000000"], ["99.00000000", "2.00000000"]],
    "asks": [["101.00000000", "1.50000000"], ["102.00000000", "2.50000000"]],
}


def trade(trade_id: int, symbol: str = "BTCUSDT") -> dict[str, Any]:
    t_ms = T0 // MS
    return {"e": "trade", "E": t_ms, "s": symbol, "t": trade_id, "p": "100.50000000", "q": "0.10000000", "T": t_ms,
            "m": True}


def rest_trade(trade_id: int) -> dict[str, Any]:
    return {"id": trade_id, "price": "100.40000000", "qty": "0.20000000", "quoteQty": "20.08",
            "time": T0 // MS - 5, "isBuyerMaker": False, "isBestMatch": True}


def depth(first: int, final: int, bids: list[list[str]] | None = None, asks: list[list[str]] | None = None,
          symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"e": "depthUpdate", "E": T0 // MS, "s": symbol, "U": first, "u": final, "b": bids or [], "a": asks or []}


def ticker(update_id: int, bid: str = "100.00000000", bid_qty: str = "1.00000000", ask: str = "101.00000000",
           ask_qty: str = "1.50000000") -> dict[str, Any]:
    return {"u": update_id, "s": "BTCUSDT", "b": bid, "B": bid_qty, "a": ask, "A": ask_qty}


def seeded(clock: ManualClock, **kwargs: Any) -> IngestState:
    state = IngestState(venue=common_pb2.BINANCE_SPOT, **kwargs)
    assert apply_snapshot(state, "BTCUSDT", SNAPSHOT, clock).resync_requests == []
    return state


def frames(*events: dict[str, Any]) -> list[Frame]:
    return [("BTCUSDT", e, T0) for e in events]


def batches(out: IngestOutputs) -> list[market_pb2.TickBatch]:
    result = []
    for emit in out.emits:
        assert isinstance(emit.value, market_pb2.TickBatch)
        result.append(emit.value)
    return result


def emitted(out: IngestOutputs, kind: str) -> list[market_pb2.MarketEvent]:
    return [ev for b in batches(out) for ev in b.events if ev.WhichOneof("event") == kind]


def trade_ids(out: IngestOutputs) -> list[int]:
    return [ev.trade.trade_id for ev in emitted(out, "trade")]


def test_duplicates_of_every_kind_are_dropped_and_counted() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    mark = {"e": "markPriceUpdate", "E": T0 // MS, "s": "BTCUSDT", "p": "100.1", "P": "100.0", "i": "100.2",
            "r": "0.0001", "T": T0 // MS + 3_600_000}
    diff = depth(101, 103, bids=[["100.00000000", "3.00000000"]])
    out = process(frames(trade(7), trade(7), trade(6), ticker(101), ticker(101), diff, diff, mark, mark), state,
                  clock)
    out.extend(flush(state, clock, force=True))
    assert trade_ids(out) == [7]
    assert [ev.book_ticker.update_id for ev in emitted(out, "book_ticker")] == [101]
    assert [ev.depth.final_update_id for ev in emitted(out, "depth")] == [103]
    assert len(emitted(out, "mark_price")) == 1
    st = state.symbols["BTCUSDT"]
    assert st.duplicates == 5
    assert (st.trades, st.depth_updates, st.gaps) == (1, 1, 0)


def test_a_trade_gap_holds_later_trades_until_the_backfill_then_emits_in_order() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    out = process(frames(trade(10), trade(11), trade(15), trade(16)), state, clock)
    assert out.trade_gaps == [TradeGap("BTCUSDT", 12, 14)]
    out.extend(process(frames(trade(13)), state, clock))  # a late arrival inside the gap is kept too
    assert trade_ids(IngestOutputs(emits=flush(state, clock, force=False).emits)) == []
    st = state.symbols["BTCUSDT"]
    assert sorted(st.held_trades) == [13, 15, 16]
    back = core.apply_trade_backfill(state, "BTCUSDT", [rest_trade(12), rest_trade(13), rest_trade(14)], clock)
    back.extend(flush(state, clock, force=True))
    first = flush(state, clock, force=True)
    assert first.emits == []
    assert trade_ids(out) + trade_ids(back) == [10, 11, 12, 13, 14, 15, 16]
    [backfilled] = [ev.trade for ev in emitted(back, "trade") if ev.trade.trade_id == 12]
    assert (backfilled.price, backfilled.qty, backfilled.buyer_is_maker) == (100.4, 0.2, False)
    assert backfilled.exchange_us == T0 - 5 * MS and backfilled.ingest_us == T0
    assert (st.trades, st.trades_lost, st.trades_backfilled, st.duplicates) == (7, 0, 2, 0)
    assert st.trade_gap is None and st.last_trade_id == 16
    # Answered late, after the gap closed: ignored.
    assert core.apply_trade_backfill(state, "BTCUSDT", [rest_trade(12)], clock).emits == []


def test_an_unanswered_gap_times_out_and_counts_the_loss() -> None:
    clock = ManualClock(T0)
    state = seeded(clock, trade_backfill_timeout_us=2_000_000)
    out = process(frames(trade(1), trade(5)), state, clock)
    assert out.trade_gaps == [TradeGap("BTCUSDT", 2, 4)]
    clock.advance_us(1_999_999)
    assert trade_ids(flush(state, clock)) == [1]
    clock.advance_us(1)
    released = flush(state, clock)
    released.extend(flush(state, clock, force=True))
    assert trade_ids(released) == [5]
    st = state.symbols["BTCUSDT"]
    assert (st.trades, st.trades_lost) == (2, 3)
    # Raw REST bytes are accepted too; garbage is dead-lettered and the gap still closes.
    process(frames(trade(9)), state, clock)
    out = core.apply_trade_backfill(state, "BTCUSDT", b'[{"id": 6, "price": "x"}]', clock)
    assert [d.error_type for d in out.dead_letters] == ["invalid_price"]
    assert st.trades_lost == 6 and st.last_trade_id == 9


def test_resume_after_reconnect_backfills_from_the_last_trade_seen() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    process(frames(trade(20)), state, clock)
    assert core.resume_trades(state, ["BTCUSDT", "ETHUSDT"], clock).trade_gaps == [TradeGap("BTCUSDT", 21, None)]
    # Live trades after the reconnect wait; the REST answer overlaps them.
    held = process(frames(trade(24), trade(25)), state, clock)
    assert held.trade_gaps == [] and trade_ids(held) == []
    back = core.apply_trade_backfill(state, "BTCUSDT", [rest_trade(i) for i in range(21, 25)], clock)
    back.extend(flush(state, clock, force=True))
    assert trade_ids(back) == [20, 21, 22, 23, 24, 25]
    st = state.symbols["BTCUSDT"]
    assert (st.trades_backfilled, st.trades_lost, st.last_trade_id) == (3, 0, 25)


def test_book_ticker_is_checked_against_the_book_at_the_same_update_id() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    # A ticker ahead of the book waits for the diff that ends at its id; then it matches.
    process(frames(ticker(103, bid_qty="3.00000000")), state, clock)
    process(frames(depth(101, 103, bids=[["100.00000000", "3.00000000"]])), state, clock)
    st = state.symbols["BTCUSDT"]
    assert (st.ticker_checks, st.divergences) == (1, 0)
    flush(state, clock, force=True)
    # A ticker that disagrees with the book once it reaches the ticker's id (bid qty 3, not 1): flagged, counted,
    # resynced once.
    out = process(frames(ticker(104), depth(104, 104)), state, clock)
    assert out.resync_requests == ["BTCUSDT"]
    assert (st.ticker_checks, st.divergences) == (2, 1)
    out.extend(flush(state, clock, force=True))
    [batch] = batches(out)
    assert common_pb2.BOOK_TICKER_DIVERGENCE in batch.quality_flags
    assert st.resyncs == {"ticker_divergence": 1}
    assert not st.book.synced


def test_resync_episodes_are_counted_once_each_by_reason() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    st = state.symbols["BTCUSDT"]
    out = process(frames(depth(101, 101), depth(103, 104), depth(105, 106)), state, clock)
    assert out.resync_requests == ["BTCUSDT"]
    assert (st.gaps, st.resyncs) == (1, {"gap": 1})
    # The snapshot answers; a snapshot older than the buffer is a retry, not another gap.
    retry = apply_snapshot(state, "BTCUSDT", {**SNAPSHOT, "lastUpdateId": 101}, clock)
    assert retry.resync_requests == ["BTCUSDT"]
    assert (st.gaps, st.snapshot_retries, st.resyncs) == (1, 1, {"gap": 1})
    assert apply_snapshot(state, "BTCUSDT", {**SNAPSHOT, "lastUpdateId": 104}, clock).resync_requests == []
    assert st.book.synced and st.book.last_update_id == 106
    # A reconnect: the book waits, and the first diff after it asks for exactly one snapshot.
    core.lose_sync(state, ["BTCUSDT"], clock)
    assert st.resyncs == {"gap": 1, "reconnect": 1} and not st.book.synced
    out = process(frames(depth(110, 111), depth(112, 113)), state, clock)
    assert out.resync_requests == ["BTCUSDT"]
    core.lose_sync(state, ["BTCUSDT"], clock)  # not synced: not another episode
    assert st.resyncs == {"gap": 1, "reconnect": 1}
    assert st.snapshots == 3


def test_a_failing_symbol_is_quarantined_without_disturbing_the_others() -> None:
    clock = ManualClock(T0)
    state = seeded(clock, quarantine_failures=3, quarantine_window_us=10_000_000,
                   quarantine_release_us=60_000_000, quarantine_resync_interval_us=30_000_000)
    apply_snapshot(state, "ETHUSDT", SNAPSHOT, clock)
    btc, eth = state.symbols["BTCUSDT"], state.symbols["ETHUSDT"]
    bad = {**trade(1), "p": "abc"}
    process(frames(bad, bad), state, clock)
    assert not btc.quarantined
    clock.advance_us(11_000_000)  # the first two fall out of the window
    process(frames(bad), state, clock)
    assert not btc.quarantined
    process(frames(bad, bad), state, clock)
    assert btc.quarantined and not eth.quarantined
    # Its snapshot requests are spaced out; the first one after quarantine goes at once only if due.
    out = process(frames(depth(101, 101), depth(105, 105)), state, clock)
    assert out.resync_requests == []
    assert btc.resync_deferred
    clock.advance_us(30_000_000)
    assert flush(state, clock).resync_requests == ["BTCUSDT"]
    apply_snapshot(state, "BTCUSDT", {**SNAPSHOT, "lastUpdateId": 105}, clock)
    out = process(frames(trade(2), trade(1, symbol="ETHUSDT")), state, clock)
    out.extend(flush(state, clock, force=True))
    flags = {b.symbol: set(b.quality_flags) for b in batches(out)}
    assert common_pb2.QUARANTINED in flags["BTCUSDT"] and common_pb2.QUARANTINED not in flags["ETHUSDT"]
    assert health_detail(state)["quarantined"] == "BTCUSDT"
    # Released after a quiet period.
    clock.advance_us(60_000_000)
    flush(state, clock)
    assert not btc.quarantined and btc.quarantines == 1


def test_an_unusable_diff_resyncs_the_book_and_its_frame_is_attributed() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    truncated = b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":17231612'
    out = process([("", truncated, T0)], state, clock)
    [dead] = out.dead_letters
    assert (dead.error_type, dead.symbol, dead.raw_bytes) == ("malformed_json", "BTCUSDT", truncated)
    assert out.resync_requests == ["BTCUSDT"]
    assert state.symbols["BTCUSDT"].resyncs == {"bad_depth": 1}
    # A broken trade frame leaves the book alone.
    state2 = seeded(clock)
    out = process([("", b'{"stream":"btcusdt@trade","data":{"e":"tr', T0)], state2, clock)
    assert out.resync_requests == [] and state2.symbols["BTCUSDT"].book.synced


def test_quality_metrics_export_counter_growth_and_gauges() -> None:
    clock = ManualClock(T0)
    state = seeded(clock)
    registry = CollectorRegistry()
    quality = IngestQuality.create(registry)
    process(frames(trade(1), trade(3), depth(101, 101), depth(103, 103)), state, clock)
    clock.advance_us(10_000_000)
    flush(state, clock)  # the trade gap times out: 1 lost
    quality.export(state)
    quality.export(state)  # idempotent: counters move by growth only

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"symbol": "BTCUSDT", **labels})

    assert value("surge_ingest_trades_total") == 2
    assert value("surge_ingest_trades_lost_total") == 1
    assert value("surge_ingest_message_loss_ratio") == pytest.approx(1 / 3)
    assert value("surge_ingest_depth_updates_total") == 1
    assert value("surge_ingest_sequence_gaps_total") == 1
    assert value("surge_ingest_sequence_gap_ratio") == pytest.approx(0.5)
    assert value("surge_ingest_resyncs_total", reason="gap") == 1
    assert value("surge_ingest_snapshots_total") == 1
    assert value("surge_ingest_book_synced") == 0
    assert value("surge_ingest_clock_drift_seconds") == pytest.approx(0.0)
    assert value("surge_ingest_degraded_time_sync") == 0
    assert registry.get_sample_value("surge_ingest_quarantined_symbols") == 0
    assert health_detail(state) == {"symbols": "1", "books_synced": "0", "quarantined": "",
                                    "resyncing": "BTCUSDT", "degraded_time_sync": ""}
