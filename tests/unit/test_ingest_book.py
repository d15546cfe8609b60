"""Unit tests of the local order book and Binance's snapshot + diff sync procedure (spot and USD-M)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from streams.ingest.book import BookState, DepthUpdate, Level, OrderBook, SyncStatus

pytestmark = pytest.mark.unit

BIDS: list[Level] = [(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)]
ASKS: list[Level] = [(101.0, 1.5), (102.0, 2.5), (103.0, 3.5)]


def diff(first: int, final: int, bids: Sequence[Level] = (), asks: Sequence[Level] = (), pu: int = 0) -> DepthUpdate:
    return DepthUpdate(first, final, pu, list(bids), list(asks))


def state_of(book: OrderBook) -> BookState:
    """Read through a call, so mypy does not narrow the state across mutating calls."""
    return book.state


def synced_spot(last_id: int = 100) -> OrderBook:
    book = OrderBook("BTCUSDT")
    assert book.apply_snapshot(last_id, BIDS, ASKS) is SyncStatus.APPLIED
    return book


def test_diffs_before_the_snapshot_are_buffered_then_replayed() -> None:
    book = OrderBook("BTCUSDT")
    assert state_of(book) is BookState.AWAITING_SNAPSHOT and not book.synced
    assert book.apply(diff(90, 95, bids=[(100.0, 9.0)])) is SyncStatus.BUFFERED    # stale vs snapshot 100
    assert book.apply(diff(96, 102, bids=[(100.0, 5.0)])) is SyncStatus.BUFFERED   # straddles 101
    assert book.apply(diff(103, 104, asks=[(101.0, 0.0)])) is SyncStatus.BUFFERED
    assert book.buffered == 3
    assert book.apply_snapshot(100, BIDS, ASKS) is SyncStatus.APPLIED
    assert state_of(book) is BookState.LIVE
    assert book.last_update_id == 104
    assert book.buffered == 0
    assert book.top(2) == ([(100.0, 5.0), (99.0, 2.0)], [(102.0, 2.5), (103.0, 3.5)])


def test_stale_diffs_after_the_snapshot_are_dropped() -> None:
    book = synced_spot(100)
    assert book.apply(diff(95, 100, bids=[(100.0, 7.0)])) is SyncStatus.STALE
    assert state_of(book) is BookState.AWAITING_FIRST
    assert book.best_bid() == (100.0, 1.0)
    # The first applied diff must straddle lastUpdateId + 1: 101 in [101, 105].
    assert book.apply(diff(101, 105, bids=[(100.0, 7.0)])) is SyncStatus.APPLIED
    assert state_of(book) is BookState.LIVE
    assert book.best_bid() == (100.0, 7.0)
    # A duplicate (e.g. an overlapping replay) is stale too, not a gap.
    assert book.apply(diff(101, 105, bids=[(100.0, 8.0)])) is SyncStatus.STALE
    assert book.best_bid() == (100.0, 7.0)


def test_first_diff_not_straddling_the_snapshot_is_a_gap() -> None:
    book = synced_spot(100)
    assert book.apply(diff(102, 110)) is SyncStatus.GAP  # 101 was missed
    assert state_of(book) is BookState.RESYNCING and not book.synced


def test_spot_gap_is_reported_once_then_buffered_until_a_new_snapshot() -> None:
    book = synced_spot(100)
    assert book.apply(diff(101, 103)) is SyncStatus.APPLIED
    assert book.apply(diff(105, 107, bids=[(99.5, 1.0)])) is SyncStatus.GAP  # 104 missing
    assert state_of(book) is BookState.RESYNCING
    # No storm: later diffs are only buffered.
    assert book.apply(diff(108, 110, asks=[(101.0, 0.0)])) is SyncStatus.BUFFERED
    assert book.apply(diff(111, 111, bids=[(99.0, 0.0)])) is SyncStatus.BUFFERED
    # A fresh snapshot at 107 makes the gap diff stale and the rest connect.
    assert book.apply_snapshot(107, [(100.0, 1.0), (99.5, 1.0), (99.0, 2.0)], ASKS) is SyncStatus.APPLIED
    assert state_of(book) is BookState.LIVE
    assert book.last_update_id == 111
    assert book.top(5) == ([(100.0, 1.0), (99.5, 1.0)], [(102.0, 2.5), (103.0, 3.5)])


def test_a_snapshot_older_than_the_buffer_is_a_gap_and_the_next_one_fixes_it() -> None:
    book = OrderBook("BTCUSDT")
    book.apply(diff(200, 205, bids=[(100.0, 4.0)]))
    book.apply(diff(206, 210))
    assert book.apply_snapshot(150, BIDS, ASKS) is SyncStatus.GAP  # 151..199 are nowhere
    assert state_of(book) is BookState.RESYNCING
    assert book.buffered == 2  # kept for the next snapshot
    assert book.apply_snapshot(203, BIDS, ASKS) is SyncStatus.APPLIED
    assert book.last_update_id == 210
    assert book.best_bid() == (100.0, 4.0)


def test_futures_sync_uses_the_snapshot_id_and_pu_continuity() -> None:
    book = OrderBook("BTCUSDT", futures=True)
    assert book.apply_snapshot(100, BIDS, ASKS) is SyncStatus.APPLIED
    assert book.apply(diff(90, 99, pu=89)) is SyncStatus.STALE           # u < lastUpdateId
    # Futures: the first event has U <= lastUpdateId <= u (not lastUpdateId + 1).
    assert book.apply(diff(98, 100, bids=[(100.0, 2.0)], pu=97)) is SyncStatus.APPLIED
    # Afterwards update ids may jump; continuity is pu == previous u.
    assert book.apply(diff(130, 140, asks=[(101.0, 0.5)], pu=100)) is SyncStatus.APPLIED
    assert book.top(1) == ([(100.0, 2.0)], [(101.0, 0.5)])
    assert book.apply(diff(150, 160, pu=141)) is SyncStatus.GAP
    assert state_of(book) is BookState.RESYNCING
    assert book.apply(diff(161, 170, pu=160)) is SyncStatus.BUFFERED


def test_futures_first_diff_must_straddle_the_snapshot_id() -> None:
    book = OrderBook("BTCUSDT", futures=True)
    book.apply_snapshot(100, BIDS, ASKS)
    assert book.apply(diff(101, 110, pu=100)) is SyncStatus.GAP


def test_a_crossed_book_after_an_update_is_an_error() -> None:
    book = synced_spot(100)
    assert book.apply(diff(101, 101, bids=[(101.5, 1.0)])) is SyncStatus.CROSSED
    assert state_of(book) is BookState.RESYNCING
    assert book.is_crossed()
    assert book.apply(diff(102, 102)) is SyncStatus.BUFFERED
    # Touching (bid == ask) is crossed too.
    touching = synced_spot(100)
    assert touching.apply(diff(101, 101, asks=[(100.0, 1.0)])) is SyncStatus.CROSSED


def test_a_crossed_snapshot_is_refused() -> None:
    book = OrderBook("BTCUSDT")
    assert book.apply_snapshot(100, [(102.0, 1.0)], ASKS) is SyncStatus.CROSSED
    assert state_of(book) is BookState.RESYNCING


def test_levels_update_remove_and_top_is_best_first() -> None:
    book = synced_spot(100)
    update = diff(101, 102,
                  bids=[(99.0, 0.0), (100.5, 0.25), (50.0, 0.0)],   # remove, insert best, remove unknown (normal)
                  asks=[(101.0, 0.0), (100.75, 4.0), (110.0, 1.0)])
    assert book.apply(update) is SyncStatus.APPLIED
    assert book.top(10) == (
        [(100.5, 0.25), (100.0, 1.0), (98.0, 3.0)],
        [(100.75, 4.0), (102.0, 2.5), (103.0, 3.5), (110.0, 1.0)],
    )
    assert book.top(1) == ([(100.5, 0.25)], [(100.75, 4.0)])
    assert book.top(0) == ([], [])
    assert book.best_bid() == (100.5, 0.25)
    assert book.best_ask() == (100.75, 4.0)
    assert book.depth() == (3, 4)


def test_mark_resyncing_buffers_until_the_next_snapshot() -> None:
    book = synced_spot(100)
    book.mark_resyncing()
    assert book.apply(diff(101, 101)) is SyncStatus.BUFFERED
    assert book.apply_snapshot(100, BIDS, ASKS) is SyncStatus.APPLIED
    assert state_of(book) is BookState.LIVE


def test_buffer_is_bounded() -> None:
    book = OrderBook("BTCUSDT", max_buffer=3)
    for i in range(10):
        book.apply(diff(i * 10 + 1, i * 10 + 10))
    assert book.buffered == 3
    # The oldest fell out, so a snapshot from before them cannot connect.
    assert book.apply_snapshot(5, BIDS, ASKS) is SyncStatus.GAP
