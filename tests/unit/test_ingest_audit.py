"""Book audits (issue 13 item 1): a REST snapshot compared with the local book at the same update id, and the
once-a-window audit of the diffs' update-id chain."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import common_pb2
from streams.ingest import core
from streams.ingest.config import IngestConfig
from streams.ingest.core import IngestState, apply_snapshot, audit_snapshot, flush, process
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings
from tests.unit.test_ingest_core import MS, SNAPSHOT, T0, batches, depth

pytestmark = pytest.mark.unit

SYMBOL = "BTCUSDT"


def audited(clock: ManualClock, *, futures: bool = False) -> IngestState:
    state = IngestConfig.from_settings(Settings()).new_state(
        common_pb2.BINANCE_USDM if futures else common_pb2.BINANCE_SPOT, futures=futures, audits=True)
    out = apply_snapshot(state, SYMBOL, SNAPSHOT, clock)
    assert out.resync_requests == []
    return state


def snap(last_id: int, bids: list[list[str]], asks: list[list[str]]) -> dict[str, Any]:
    return {"lastUpdateId": last_id, "bids": bids, "asks": asks}


TRUE_AT_103 = snap(103, [["100.00000000", "3.00000000"], ["99.00000000", "2.00000000"]],
                   [["101.00000000", "1.50000000"], ["102.00000000", "2.50000000"]])


def feed(state: IngestState, clock: ManualClock, *diffs: dict[str, Any]) -> core.IngestOutputs:
    clock.advance_us(MS)
    return process([(SYMBOL, d, clock.now_us()) for d in diffs], state, clock)


def test_matching_snapshot_at_the_same_id_passes() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    feed(state, clock, depth(T0 // MS, 101, 103, bids=[["100.00000000", "3.00000000"]]))
    out = audit_snapshot(state, SYMBOL, TRUE_AT_103, clock)
    st = state.symbols[SYMBOL]
    assert (st.audits, st.audit_mismatches, out.resync_requests) == (1, 0, [])


def test_a_silently_corrupted_quantity_is_caught_and_resynced() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    # The stream said 99 -> 2.7 with a correct sequence; the exchange's book (the snapshot) says 2.0.
    feed(state, clock, depth(T0 // MS, 101, 103, bids=[["100.00000000", "3.00000000"],
                                                       ["99.00000000", "2.70000000"]]))
    out = audit_snapshot(state, SYMBOL, TRUE_AT_103, clock)
    st = state.symbols[SYMBOL]
    assert (st.audits, st.audit_mismatches) == (1, 1)
    assert out.resync_requests == [SYMBOL] and st.resyncs == {core.RESYNC_AUDIT: 1}
    assert not st.book.synced
    clock.advance_us(30 * MS)
    flagged = batches(flush(state, clock, force=True))
    assert all(common_pb2.BOOK_RESYNCING in b.quality_flags for b in flagged)


def test_an_older_snapshot_is_rolled_forward_over_the_recent_diffs() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    feed(state, clock, depth(T0 // MS, 101, 103, bids=[["100.00000000", "3.00000000"]]),
         depth(T0 // MS + 1, 104, 106, asks=[["101.00000000", "0"]]))
    out = audit_snapshot(state, SYMBOL, TRUE_AT_103, clock)  # taken at 103, the book is at 106
    st = state.symbols[SYMBOL]
    assert (st.audits, st.audit_mismatches, out.resync_requests) == (1, 0, [])


def test_a_newer_snapshot_waits_for_the_book_to_get_there() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    truth = snap(103, [["100.00000000", "3.00000000"], ["99.00000000", "2.00000000"]],
                 [["101.00000000", "1.50000000"], ["102.00000000", "2.50000000"]])
    audit_snapshot(state, SYMBOL, truth, clock)  # the book is still at 100
    st = state.symbols[SYMBOL]
    assert st.audits == 0 and st.audit is not None
    out = feed(state, clock, depth(T0 // MS, 101, 103, bids=[["100.00000000", "3.00000000"],
                                                             ["99.00000000", "9.00000000"]]))
    assert (st.audits, st.audit_mismatches) == (1, 1) and out.resync_requests == [SYMBOL]


def test_a_snapshot_out_of_reach_is_inconclusive() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    feed(state, clock, depth(T0 // MS, 101, 103))
    st = state.symbols[SYMBOL]
    st.recent_diffs.clear()  # type: ignore[union-attr]  # as if the diffs since the snapshot were no longer kept
    feed(state, clock, depth(T0 // MS, 104, 105))
    audit_snapshot(state, SYMBOL, snap(100, SNAPSHOT["bids"], SNAPSHOT["asks"]), clock)
    assert (st.audits, st.audits_inconclusive, st.audit_mismatches) == (0, 1, 0)
    assert st.book.synced


def test_futures_audit_follows_the_pu_chain() -> None:
    clock = ManualClock(T0)
    state = audited(clock, futures=True)
    d1 = {**depth(T0 // MS, 95, 103, bids=[["100.00000000", "3.00000000"]]), "pu": 94, "T": T0 // MS}
    d2 = {**depth(T0 // MS, 104, 106), "pu": 103, "T": T0 // MS}
    feed(state, clock, d1, d2)
    out = audit_snapshot(state, SYMBOL, {**TRUE_AT_103, "E": T0 // MS, "T": T0 // MS}, clock)
    st = state.symbols[SYMBOL]
    assert (st.audits, st.audit_mismatches, out.resync_requests) == (1, 0, [])


def test_chain_breaks_above_the_ratio_rebuild_the_book() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    st = state.symbols[SYMBOL]
    u = 100
    for i in range(400):
        # Every 100th diff skips ids: 4 breaks in 400 diffs = 1 % > 0.2 %; the book resyncs on each anyway.
        first = u + (5 if i % 100 == 99 else 1)
        feed(state, clock, depth(T0 // MS + i, first, first + 1))
        u = first + 1
        if not st.book.synced:
            apply_snapshot(state, SYMBOL, snap(u, SNAPSHOT["bids"], SNAPSHOT["asks"]), clock)
    assert st.chain_breaks == 4 and st.rebuilds == 0
    clock.advance_us(core.AUDIT_WINDOW_US)
    out = flush(state, clock)
    assert st.rebuilds == 1 and st.chain_gap_ratio == pytest.approx(4 / 399)
    assert out.resync_requests == [SYMBOL] and st.resyncs.get(core.RESYNC_GAP_RATIO) == 1


def test_a_clean_chain_is_left_alone_and_a_reconnect_is_not_a_break() -> None:
    clock = ManualClock(T0)
    state = audited(clock)
    st = state.symbols[SYMBOL]
    feed(state, clock, depth(T0 // MS, 101, 103), depth(T0 // MS, 104, 110))
    core.lose_sync(state, [SYMBOL], clock)
    feed(state, clock, depth(T0 // MS, 500, 510))  # the new connection starts elsewhere
    assert st.chain_breaks == 0
    clock.advance_us(core.AUDIT_WINDOW_US)
    flush(state, clock)
    assert st.rebuilds == 0 and st.chain_gap_ratio == 0.0


def test_without_audits_nothing_is_kept() -> None:
    clock = ManualClock(T0)
    state = IngestConfig.from_settings(Settings()).new_state(common_pb2.BINANCE_SPOT)
    apply_snapshot(state, SYMBOL, SNAPSHOT, clock)
    feed(state, clock, depth(T0 // MS, 101, 103))
    st = state.symbols[SYMBOL]
    assert st.recent_diffs is None and st.chain_diffs == 0


def test_audits_only_spend_their_share_of_the_rest_budget() -> None:
    from streams.venues.binance.rest import WeightBudget

    clock = ManualClock(T0)
    budget = WeightBudget(100, clock)
    assert budget.headroom(5, 0.5)
    budget.spend(46)
    assert not budget.headroom(5, 0.5) and budget.delay_s(5) == 0.0  # snapshots may still spend it
    clock.advance_us(61_000_000)
    assert budget.headroom(5, 0.5)  # the spending left the one-minute window
    budget.block(10)
    assert not budget.headroom(5, 0.5)
