"""Golden tests on real Binance WebSocket captures (hftbacktest format: ``<local_ts_ns> <json>`` per line, gzip).

The first 3000 lines of each capture go through the local book, seeded by the REST snapshot line inside the
capture: the book must never cross and must equal every bookTicker whose update id equals the book's.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import common_pb2, market_pb2
from streams.ingest.book import DepthUpdate, OrderBook, SyncStatus
from streams.ingest.core import IngestOutputs, IngestState, flush, process
from streams.runtime.clock import ManualClock
from streams.venues.binance.codec import parse_snapshot

pytestmark = pytest.mark.unit

SHARED = Path(__file__).resolve().parents[2].parent / "shared/data/binance"
CAPTURES = SHARED / "ws_messages/hftbacktest"
LINES = 3_000


def read_capture(relative: str, n: int = LINES) -> list[tuple[int, bytes]]:
    path = CAPTURES / relative
    if not path.is_file():
        pytest.skip(f"real Binance capture {path} not found (../shared is absent on this machine)")
    out: list[tuple[int, bytes]] = []
    with gzip.open(path, "rb") as fh:
        for line in fh:
            if len(out) >= n:
                break
            ts_ns, payload = line.rstrip(b"\n").split(b" ", 1)
            out.append((int(ts_ns) // 1000, payload))
    return out


def levels(raw: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in raw]


def replay_book(relative: str, *, futures: bool) -> tuple[Counter[str], int, int, OrderBook]:
    """(diff statuses, bookTickers matched, bookTickers checked, final book)."""
    book = OrderBook("BTCUSDT", futures=futures)
    statuses: Counter[str] = Counter()
    pending_tickers: dict[int, dict[str, Any]] = {}
    matched = checked = 0

    def check(t: dict[str, Any]) -> None:
        nonlocal matched, checked
        checked += 1
        if book.best_bid() == (float(t["b"]), float(t["B"])) and book.best_ask() == (float(t["a"]), float(t["A"])):
            matched += 1

    for _, payload in read_capture(relative):
        msg = orjson.loads(payload)
        if "lastUpdateId" in msg:
            statuses["snapshot:" + book.apply_snapshot(msg["lastUpdateId"], levels(msg["bids"]),
                                                       levels(msg["asks"])).value] += 1
            continue
        data = msg["data"]
        if data.get("e") == "depthUpdate":
            status = book.apply(DepthUpdate(data["U"], data["u"], data.get("pu", 0), levels(data["b"]),
                                            levels(data["a"])))
            statuses[status.value] += 1
            assert status is not SyncStatus.CROSSED and not book.is_crossed()
            # A ticker often arrives before the (100 ms aggregated) diff that ends at its update id.
            if book.synced and book.last_update_id in pending_tickers:
                check(pending_tickers.pop(book.last_update_id))
        elif "A" in data:
            if book.synced and data["u"] == book.last_update_id:
                check(data)
            elif data["u"] > book.last_update_id:
                pending_tickers[data["u"]] = data
    return statuses, matched, checked, book


def test_spot_capture_book_never_crosses_and_matches_book_ticker() -> None:
    statuses, matched, checked, book = replay_book("spot/btcusdt_20240808.gz", futures=False)
    # 3 diffs arrive before the snapshot line (buffered, then replayed), the other 278 apply in sequence.
    assert statuses == Counter({"buffered": 3, "snapshot:applied": 1, "applied": 278})
    assert (matched, checked) == (43, 43)
    assert book.synced
    bids, asks = book.top(20)
    assert len(bids) == 20 and len(asks) == 20 and bids[0][0] < asks[0][0]


def test_usdm_capture_book_never_crosses_and_matches_book_ticker() -> None:
    statuses, matched, checked, book = replay_book("usdm/btcusdt_20240808.gz", futures=True)
    assert statuses["gap"] == 0 and statuses["crossed"] == 0
    assert statuses["snapshot:applied"] == 1
    assert matched == checked and matched >= 20
    assert book.synced


def test_spot_capture_through_the_ingest_core() -> None:
    lines = read_capture("spot/btcusdt_20240808.gz")
    clock = ManualClock(lines[0][0])
    state = IngestState(venue=common_pb2.BINANCE_SPOT)
    out = IngestOutputs()
    for local_us, payload in lines:
        clock.set_us(max(local_us, clock.now_us()))
        # The REST snapshot line has no stream name; the symbol hint covers it.
        out.extend(process([("BTCUSDT", payload, local_us)], state, clock))
    out.extend(flush(state, clock, force=True))
    assert out.dead_letters == []
    assert out.resync_requests == ["BTCUSDT"]  # the one snapshot request for the diffs before the snapshot
    tick_batches = [e.value for e in out.emits if isinstance(e.value, market_pb2.TickBatch)]
    assert len(tick_batches) == len(out.emits)
    n_events = 0
    unsynced_batches = 0
    for batch in tick_batches:
        flags = set(batch.quality_flags)
        assert common_pb2.SEQUENCE_GAP not in flags and common_pb2.SIMULATED not in flags
        # This capture's exchange clock is ~1.27 s ahead of the capturing machine's clock.
        assert common_pb2.DEGRADED_TIME_SYNC in flags
        kinds = [ev.WhichOneof("event") for ev in batch.events]
        n_events += len(kinds) - kinds.count("book")
        if "book" in kinds:
            assert kinds[-1] == "book" and kinds.count("book") == 1
            snap = batch.events[-1].book
            assert len(snap.bids) == 20 and len(snap.asks) == 20
            assert snap.bids[0].price < snap.asks[0].price
            assert common_pb2.BOOK_RESYNCING not in flags
        else:
            # Only the batches of the first 7 lines, before the snapshot line, lack a book.
            assert common_pb2.BOOK_RESYNCING in flags
            assert batch.sequence == unsynced_batches + 1
            unsynced_batches += 1
    assert n_events == LINES - 1  # every line but the snapshot
    assert unsynced_batches == 6
    assert [b.sequence for b in tick_batches] == list(range(1, len(tick_batches) + 1))
    drift = state.symbols["BTCUSDT"].drift_ewma_us
    assert drift is not None and 1_000_000 < drift < 1_500_000


def test_snapshot_parser_reads_the_capture_snapshot() -> None:
    for _, payload in read_capture("spot/btcusdt_20240808.gz", n=20):
        msg = orjson.loads(payload)
        if "lastUpdateId" in msg:
            last_id, bids, asks, exchange_us = parse_snapshot(msg)
            assert last_id == 50093239218
            assert bids[0] == (61837.63, 3.78826) and asks[0][0] == 61837.64
            assert exchange_us == 0  # spot REST depth carries no time
            return
    pytest.fail("no snapshot line in the first 20 lines")
