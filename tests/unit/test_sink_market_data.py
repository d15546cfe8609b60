"""The sink's market-data tables (trades, book tops, features, predictions), the rollup views, TTL settings and
the Redis hot cache (latest prediction / book top per instrument, integer instrument ids, L1)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from schemas import common_pb2, features_pb2, market_pb2, prediction_pb2
from services.warehouse.server import Policy, Refused
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.sink import stage
from streams.sink.core import TABLE_COLUMNS, SinkState, process, row_problem, trade_rows, trades_certainly_fine
from streams.sink.stage import SinkRuntime
from streams.storage.cache import BOOK, PREDICTION, HotCache, L1Cache, open_redis
from streams.storage.schema import insertable_columns
from streams.storage.warehouse import (
    DEFAULT_TTL_DAYS,
    ClickHouseWarehouse,
    Warehouse,
    apply_ddl,
    ddl_commands,
    ddl_statements,
    open_warehouse,
)

pytestmark = pytest.mark.unit

# A recent whole minute: the rollup bars expire by their own time (TTL), and every trade here falls in one minute.
NOW = (int(time.time()) // 60 - 1) * 60 * 1_000_000
SPOT = common_pb2.BINANCE_SPOT


def ticks(seq: int, trades: list[tuple[int, float, float]], *, ticker: bool = True,
          venue: common_pb2.Venue = SPOT) -> market_pb2.TickBatch:
    events = [market_pb2.MarketEvent(trade=market_pb2.Trade(trade_id=t, price=p, qty=q, exchange_us=NOW + t * 100_000,
                                                            ingest_us=NOW + t * 100_000 + 50))
              for t, p, q in trades]
    if ticker:
        events.append(market_pb2.MarketEvent(book_ticker=market_pb2.BookTicker(
            update_id=seq, bid_price=100.0, bid_qty=1, ask_price=100.1, ask_qty=2, exchange_us=NOW + seq,
            ingest_us=NOW + seq + 10)))
    else:
        events.append(market_pb2.MarketEvent(book=market_pb2.BookSnapshot(
            last_update_id=seq, bids=[market_pb2.PriceLevel(price=99.0, qty=3)],
            asks=[market_pb2.PriceLevel(price=99.2, qty=4)], exchange_us=NOW + seq)))
    return market_pb2.TickBatch(schema_version=1, batch_id=f"{venue}:BTCUSDT:{seq}", venue=venue, symbol="BTCUSDT",
                                sequence=seq, events=events, ts=common_pb2.Timestamps(exchange_us=NOW + seq))


def vector(vid: str = "v1") -> features_pb2.FeatureVector:
    return features_pb2.FeatureVector(
        schema_version=1, vector_id=vid, venue=SPOT, symbol="BTCUSDT", feature_version="f3",
        names=["spread_bps", "ofi_1s"], values=[1.5, math.nan], regime="vol_low_depth_thick", mid_price=100.05,
        data_window_id="1-3", ts=common_pb2.Timestamps(exchange_us=NOW, features_us=NOW + 900))


def prediction(pid: str = "p1", exchange_us: int = NOW, p_up: float = 0.61) -> prediction_pb2.Prediction:
    return prediction_pb2.Prediction(
        schema_version=1, prediction_id=pid, venue=SPOT, symbol="BTCUSDT", model_version="m7", feature_version="f3",
        horizons=[prediction_pb2.HorizonProbability(horizon_min=5, p_up=p_up, ci_low=0.5, ci_high=0.7)],
        regime="vol_low_depth_thick", mid_price=100.05, spread_bps=1.0, data_window_id="1-3",
        ts=common_pb2.Timestamps(exchange_us=exchange_us, infer_us=exchange_us + 2_000))


def rec(value: Any, offset: int) -> InRecord[Any]:
    return InRecord(value=value, key="BINANCE_SPOT:BTCUSDT", topic="t", partition=0, offset=offset)


def test_a_tick_batch_gives_its_trades_and_one_book_top() -> None:
    state = SinkState()
    out = process([rec(ticks(1, [(10, 100.0, 1.0), (11, 100.5, 2.0)]), 0),
                   rec(ticks(2, [], ticker=False), 1)], state, ManualClock(NOW))
    assert out.rejects == []
    assert [r[2] for r in state.pending["trades"]] == [10, 11]
    assert [(r[3], r[5], r[7]) for r in state.pending["book_tops"]] == [("book_ticker", 100.0, 100.1),
                                                                        ("book", 99.0, 99.2)]
    assert [d["instrument"] for d in state.pending_docs["book_tops"]] == ["BINANCE_SPOT:BTCUSDT"] * 2
    # a redelivered batch (same trade ids, same batch id) adds nothing
    process([rec(ticks(1, [(10, 100.0, 1.0), (11, 100.5, 2.0)]), 0)], state, ManualClock(NOW))
    assert len(state.pending["trades"]) == 2 and state.duplicates_skipped == 3


def test_trade_fast_check_pins_the_ddl_and_agrees_with_the_exact_check() -> None:
    """Tried: trade batches with a NaN, +inf or -inf price or quantity, prices near the float maximum (whose sum
    overflows although each is finite), and ordinary ones; the one-pass check of trade rows must never pass a row
    the exact per-column check refuses, and a refused batch names the bad value."""
    assert TABLE_COLUMNS["trades"][3:5] == ("price", "qty")  # the positions the fast check sums
    bad_values = [math.nan, math.inf, -math.inf]
    cases = [[(10, 100.0, 1.0), (11, 100.5, 2.0)], [(12, 1.7e308, 1.0), (13, 1.7e308, 1.0)]]
    cases += [[(20, 100.0, 1.0), (21, bad, 1.0)] for bad in bad_values]
    cases += [[(30, 100.0, bad)] for bad in bad_values]
    for trades in cases:
        rows = trade_rows(ticks(1, trades), NOW)
        exact = [row_problem("trades", row) for row in rows]
        if trades_certainly_fine(rows):
            assert exact == [None] * len(rows), trades
        state = SinkState()
        out = process([rec(ticks(1, trades), 0)], state, ManualClock(NOW))
        if all(p is None for p in exact):
            assert out.rejects == [] and len(state.pending["trades"]) == len(trades), trades
        else:
            [reject] = out.rejects
            assert reject.error_type == "invalid_row" and reject.reason.startswith("trades: ") and \
                "must be finite" in reject.reason, reject.reason
            assert state.pending["trades"] == [] and state.pending["book_tops"] == []  # nothing of the batch


def test_feature_nan_is_stored_as_null_and_a_nan_probability_is_dead_lettered() -> None:
    state = SinkState()
    out = process([rec(vector(), 0), rec(prediction("bad", p_up=math.nan), 1), rec(prediction(), 2)], state,
                  ManualClock(NOW))
    assert state.pending["features"][0][5] == [1.5, None]
    assert [r.error_type for r in out.rejects] == ["invalid_row"]
    assert "p_up" in out.rejects[0].reason
    assert [r[0] for r in state.pending["predictions"]] == ["p1"]
    assert insertable_columns("features")["values"] == "Array(Nullable(Float64))"


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge", {"ttl_days_ticks": 45})
    try:
        yield wh
    finally:
        wh.close()


def test_flush_fills_the_tables_the_rollups_and_the_hot_cache(chdb: Warehouse, redis_url: str) -> None:
    client = open_redis(redis_url)
    client.flushdb()
    rt = SinkRuntime(warehouse=chdb, redis=client, cache_ttl_s=5)
    batch = [rec(ticks(1, [(1, 100.0, 1.0), (2, 102.0, 1.0), (3, 101.0, 2.0)]), 0),
             rec(ticks(2, [(12, 99.0, 1.0)]), 1), rec(vector(), 2), rec(prediction("p1"), 3),
             rec(prediction("p2", NOW + 5), 4)]
    stage.process(batch, rt, ManualClock(NOW))
    assert stage.flush(rt) == []
    stage.process(batch, rt, ManualClock(NOW))  # redelivered: nothing new, rollups not double counted
    assert stage.flush(rt) == []

    def one(sql: str) -> dict[str, Any]:
        return chdb.query(sql)[0]

    assert one("SELECT count() AS n FROM surge.trades FINAL")["n"] == 4
    assert one("SELECT count() AS n FROM surge.book_tops FINAL")["n"] == 2
    assert one("SELECT values FROM surge.features FINAL")["values"] == [1.5, None]
    assert one("SELECT count() AS n, max(latency_ms) AS l FROM surge.predictions FINAL") == {"n": 2, "l": 2.0}
    bars = chdb.query("SELECT ts, argMinMerge(open) AS o, max(high) AS h, min(low) AS l, argMaxMerge(close) AS c, "
                      "sum(volume) AS v, sum(trades) AS n FROM surge.trades_1s GROUP BY ts ORDER BY ts")
    assert [(b["o"], b["h"], b["l"], b["c"], b["v"], b["n"]) for b in bars] == [
        (100.0, 102.0, 100.0, 101.0, 4.0, 3), (99.0, 99.0, 99.0, 99.0, 1.0, 1)]
    minute = one("SELECT argMinMerge(open) AS o, argMaxMerge(close) AS c, sum(trades) AS n FROM surge.trades_1m")
    assert minute == {"o": 100.0, "c": 99.0, "n": 4}
    ttl = one("SELECT create_table_query AS q FROM system.tables WHERE database = 'surge' AND name = 'trades'")["q"]
    assert "toIntervalDay(45)" in ttl

    hot = HotCache(client, ttl_s=5, l1=L1Cache(ttl_ms=1000))
    latest = hot.get_latest(PREDICTION, ["BINANCE_SPOT:BTCUSDT", "BINANCE_USDM:BTCUSDT"])
    assert list(latest) == ["BINANCE_SPOT:BTCUSDT"]
    assert latest["BINANCE_SPOT:BTCUSDT"]["prediction_id"] == "p2"  # the newest by exchange time
    assert latest["BINANCE_SPOT:BTCUSDT"]["instrument_id"] == 1
    assert 0 < int(client.ttl("surge:latest:prediction:BINANCE_SPOT:BTCUSDT")) <= 5
    assert hot.get_latest(BOOK, ["BINANCE_SPOT:BTCUSDT"])["BINANCE_SPOT:BTCUSDT"]["bid_price"] == 100.0
    hot.get_latest(PREDICTION, ["BINANCE_SPOT:BTCUSDT"])
    assert hot.l1 is not None and hot.l1.hits == 1
    assert hot.instrument_ids() == {"BINANCE_SPOT:BTCUSDT": 1}
    assert HotCache(client).ensure_ids(["BINANCE_USDM:BTCUSDT", "BINANCE_SPOT:BTCUSDT"]) == {
        "BINANCE_USDM:BTCUSDT": 2, "BINANCE_SPOT:BTCUSDT": 1}
    client.close()


def test_a_redis_outage_does_not_fail_the_flush(chdb: Warehouse, tmp_path: Path) -> None:
    rt = SinkRuntime(warehouse=chdb, redis=redis.Redis(unix_socket_path=str(tmp_path / "none.sock")))
    stage.process([rec(prediction(), 0), rec(ticks(1, [(1, 1.0, 1.0)]), 1)], rt, ManualClock(NOW))
    assert stage.flush(rt) == []
    assert rt.redis_failures == 2


def test_ttls_are_settings_and_the_service_accepts_the_ddl_under_any_of_them(tmp_path: Path) -> None:
    default = dict(ddl_statements("surge"))
    custom = dict(ddl_statements("surge", {"ttl_days_ticks": 3, "ttl_days_rollup_1m": 999}))
    assert f"INTERVAL {DEFAULT_TTL_DAYS['ttl_days_ticks']} DAY" in default["008_trades.sql"]
    assert "INTERVAL 3 DAY" in custom["008_trades.sql"] and "INTERVAL 999 DAY" in custom["016_trades_1m.sql"]
    for bad in ({"ttl_days_nope": 3}, {"ttl_days_ticks": 0}, {"ttl_days_ticks": "7; DROP"}):
        with pytest.raises(ValueError):
            ddl_statements("surge", bad)  # type: ignore[arg-type]
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    try:
        assert isinstance(wh, ClickHouseWarehouse)
        apply_ddl(wh, "surge")
        policy = Policy.for_warehouse(wh)
        for sql in ddl_commands("surge", {"ttl_days_ticks": 3, "ttl_days_features": 12345}):
            policy.check_command(sql, None)
        for sql in (custom["008_trades.sql"].replace("INTERVAL 3 DAY", "INTERVAL 3 DAY DELETE WHERE 1"),
                    custom["008_trades.sql"].replace("INTERVAL 3 DAY", "INTERVAL 0 DAY"),
                    custom["008_trades.sql"] + " "):
            with pytest.raises(Refused):
                policy.check_command(sql, None)
    finally:
        wh.close()
