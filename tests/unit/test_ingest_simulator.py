"""Unit tests of the market simulator: Binance wire shapes, determinism, update-id continuity, realism, speed."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from streams.ingest.book import DepthUpdate, OrderBook, SyncStatus
from streams.ingest.simulator import MarketSimulator, format_scaled, spec_for

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000  # µs
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")

RawEvents = list[tuple[str, dict[str, Any]]]


def run_sim(sim: MarketSimulator, duration_ms: int, step_ms: int, start_us: int = T0) -> RawEvents:
    sim.advance(start_us)
    out: RawEvents = []
    for t in range(step_ms, duration_ms + 1, step_ms):
        out.extend(sim.advance(start_us + t * 1000))
    return out


def levels(raw: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in raw]


def test_format_scaled_is_binance_fixed_point() -> None:
    assert format_scaled(6173763, 2) == "61737.63000000"
    assert format_scaled(5, 4) == "0.00050000"
    assert format_scaled(1234, 0) == "1234.00000000"
    assert format_scaled(1, 8) == "0.00000001"


def test_event_shapes_match_binance_payloads() -> None:
    sim = MarketSimulator(SYMBOLS, 5_000, seed=1)
    snaps = sim.snapshots()
    assert set(snaps) == set(SYMBOLS)
    for snap in snaps.values():
        assert set(snap) == {"lastUpdateId", "bids", "asks"}
        assert all(DECIMAL_8.match(p) and DECIMAL_8.match(q) for p, q in snap["bids"] + snap["asks"])
    events = run_sim(sim, 1_000, 5)
    kinds: dict[str, int] = defaultdict(int)
    for symbol, ev in events:
        assert ev["s"] == symbol
        if ev.get("e") == "trade":
            assert set(ev) == {"e", "E", "s", "t", "p", "q", "T", "m"}
            assert isinstance(ev["m"], bool) and isinstance(ev["t"], int)
            assert DECIMAL_8.match(ev["p"]) and DECIMAL_8.match(ev["q"]) and float(ev["q"]) > 0
        elif ev.get("e") == "depthUpdate":
            assert set(ev) == {"e", "E", "s", "U", "u", "b", "a"}
            assert all(DECIMAL_8.match(p) and DECIMAL_8.match(q) for p, q in ev["b"] + ev["a"])
        else:
            assert set(ev) == {"u", "s", "b", "B", "a", "A"}  # spot bookTicker: no e, no E
            assert float(ev["b"]) < float(ev["a"])
        kinds[ev.get("e", "bookTicker")] += 1
    assert set(kinds) == {"trade", "depthUpdate", "bookTicker"}


def test_same_seed_same_events_different_seed_different() -> None:
    a = run_sim(MarketSimulator(SYMBOLS, 10_000, seed=42), 500, 5)
    b = run_sim(MarketSimulator(SYMBOLS, 10_000, seed=42), 500, 5)
    c = run_sim(MarketSimulator(SYMBOLS, 10_000, seed=43), 500, 5)
    assert len(a) > 1_000
    assert a == b
    assert a != c
    assert MarketSimulator(SYMBOLS, 1, seed=42).snapshots() == MarketSimulator(SYMBOLS, 1, seed=42).snapshots()


def test_output_does_not_depend_on_how_time_is_split() -> None:
    fine = run_sim(MarketSimulator(SYMBOLS, 10_000, seed=5), 600, 1)
    coarse = run_sim(MarketSimulator(SYMBOLS, 10_000, seed=5), 600, 50)
    assert fine == coarse


def test_event_times_come_from_the_clock_and_never_exceed_now() -> None:
    sim = MarketSimulator(("BTCUSDT",), 20_000, seed=3)
    start = T0 + 123_456  # not on a ms boundary
    sim.advance(start)
    prev_now = start
    for now in (start + 7_300, start + 7_900, start + 50_000, start + 50_001):
        events = sim.advance(now)
        for _, ev in events:
            t_ms = ev.get("E")
            if t_ms is not None:
                assert prev_now // 1000 <= t_ms <= now // 1000
        prev_now = now
    assert sim.advance(start + 50_001) == []  # nothing new is due


def test_update_ids_are_strictly_consecutive_from_the_snapshot() -> None:
    sim = MarketSimulator(SYMBOLS, 20_000, seed=11)
    last = {s: snap["lastUpdateId"] for s, snap in sim.snapshots().items()}
    diffs = 0
    for symbol, ev in run_sim(sim, 2_000, 5):
        if ev.get("e") == "depthUpdate":
            assert ev["U"] == last[symbol] + 1
            assert ev["u"] >= ev["U"]
            last[symbol] = ev["u"]
            diffs += 1
        elif "A" in ev:
            assert ev["u"] > last[symbol]  # a ticker's id is published by the next diff
    assert diffs > 5_000


def test_local_book_rebuilt_from_diffs_tracks_the_simulator_exactly() -> None:
    sim = MarketSimulator(SYMBOLS, 20_000, seed=13)
    books = {s: OrderBook(s) for s in SYMBOLS}
    for s, snap in sim.snapshots().items():
        status = books[s].apply_snapshot(snap["lastUpdateId"], levels(snap["bids"]), levels(snap["asks"]))
        assert status is SyncStatus.APPLIED
    sim.advance(T0)
    full_checks = 0
    for t in range(5, 2_001, 5):
        for symbol, ev in sim.advance(T0 + t * 1000):
            book = books[symbol]
            if ev.get("e") == "depthUpdate":
                assert book.apply(DepthUpdate(ev["U"], ev["u"], 0, levels(ev["b"]), levels(ev["a"]))) \
                    is SyncStatus.APPLIED
                assert not book.is_crossed()
        for s, book in books.items():
            snap = sim.snapshot(s)
            if snap["lastUpdateId"] == book.last_update_id:  # nothing pending: every level must agree
                assert book.top(10_000) == (levels(snap["bids"]), levels(snap["asks"]))
                full_checks += 1
    assert full_checks > 200


def test_rate_is_the_configured_events_per_second_and_arrivals_cluster() -> None:
    sim = MarketSimulator(SYMBOLS, 2_000, seed=17)
    sim.advance(T0)
    counts = []
    for t in range(250, 60_001, 250):  # 60 s in 250 ms bins
        counts.append(len(sim.advance(T0 + t * 1000)))
    per_bin = np.array(counts, dtype=np.float64)
    assert per_bin.sum() / 60.0 == pytest.approx(2_000, rel=0.1)
    # Self-exciting arrivals: far more variable than Poisson counts (whose variance equals the mean).
    assert per_bin.var() / per_bin.mean() > 3.0


def test_prices_move_with_realistic_volatility_and_spreads_widen_in_bursts() -> None:
    sim = MarketSimulator(("BTCUSDT",), 2_000, seed=21)
    sim.advance(T0)
    mids, spreads = [], []
    top: tuple[float, float] = (0.0, 0.0)
    for t in range(100, 60_001, 100):
        for _, ev in sim.advance(T0 + t * 1000):
            if "A" in ev:
                top = (float(ev["b"]), float(ev["a"]))
        mids.append((top[0] + top[1]) / 2)
        spreads.append(top[1] - top[0])
    returns_bps = np.diff(np.log(np.array(mids[::10]))) * 1e4  # 1 s returns
    assert 0.5 < returns_bps.std() < 5.0  # BTC-like: a few bps per second
    assert min(spreads) > 0
    assert max(spreads) > 10 * float(np.median(spreads))


def test_each_symbol_has_its_own_price_level_and_tick() -> None:
    snaps = MarketSimulator(("BTCUSDT", "XRPUSDT", "FOOUSDT"), 100, seed=1).snapshots()
    btc_bid = float(snaps["BTCUSDT"]["bids"][0][0])
    xrp_bid = float(snaps["XRPUSDT"]["bids"][0][0])
    assert 50_000 < btc_bid < 70_000
    assert 0.4 < xrp_bid < 0.7
    assert spec_for("FOOUSDT") == spec_for("FOOUSDT")  # derived specs are stable across runs
    assert len(snaps["FOOUSDT"]["bids"]) >= 20


def test_a_stalled_caller_gets_a_bounded_backlog() -> None:
    sim = MarketSimulator(("BTCUSDT",), 1_000, seed=2)
    sim.advance(T0)
    backlog = sim.advance(T0 + 3_600 * 1_000_000)  # an hour later
    assert 0 < len(backlog) < 4_000  # at most 2 s of events, not an hour's worth


def test_generates_at_least_20k_events_per_second_on_one_core() -> None:
    sim = MarketSimulator(SYMBOLS, 20_000, seed=7)
    sim.advance(T0)
    n = 0
    started = time.perf_counter()
    for i in range(1, 601):  # 3 s of simulated time in 5 ms rounds
        n += len(sim.advance(T0 + i * 5_000))
    elapsed = time.perf_counter() - started
    assert n == pytest.approx(60_000, rel=0.1)
    assert n / elapsed >= 20_000, f"only {n / elapsed:,.0f} events/s"


def test_a_session_can_start_where_the_last_one_stopped() -> None:
    """Tried: a simulator run for 2 s, then a new one (same seed) started at its mids, and start prices that are
    zero, negative, NaN or infinite. The new books start within a tick of the old mids; bad prices are refused."""
    first = MarketSimulator(["BTCUSDT", "XRPUSDT"], 2_000, seed=5)
    first.advance(T0)
    first.advance(T0 + 2_000_000)
    mids = first.mid_prices()
    assert set(mids) == {"BTCUSDT", "XRPUSDT"}
    fresh = MarketSimulator(["BTCUSDT", "XRPUSDT"], 2_000, seed=5).mid_prices()
    resumed = MarketSimulator(["BTCUSDT", "XRPUSDT"], 2_000, seed=5, start_prices=mids).mid_prices()
    for symbol, tick in (("BTCUSDT", 0.01), ("XRPUSDT", 0.0001)):
        assert abs(resumed[symbol] - mids[symbol]) <= tick
        assert fresh[symbol] == pytest.approx(spec_for(symbol).price, abs=tick)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="BTCUSDT: a start price must be finite and positive"):
            MarketSimulator(["BTCUSDT"], 2_000, seed=5, start_prices={"BTCUSDT": bad})
