"""Sink: row building per table, de-duplication, and the stage's write / failure policy."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from schemas import SCHEMA_VERSION, common_pb2, dlq_pb2, outcome_pb2, prediction_pb2, signal_pb2
from streams.runtime.clock import ManualClock
from streams.runtime.core import DownstreamUnavailable, InRecord, Outputs, Reject
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.sink import stage
from streams.sink.core import (
    BOOK_TOP_COLUMNS,
    DEAD_LETTER_COLUMNS,
    FEATURE_COLUMNS,
    OUTCOME_COLUMNS,
    PREDICTION_COLUMNS,
    SIGNAL_COLUMNS,
    TABLE_COLUMNS,
    TRADE_COLUMNS,
    RecentIds,
    SinkState,
    process,
    value_problem,
)
from streams.sink.stage import SinkRuntime
from streams.storage.cache import open_redis
from streams.storage.warehouse import Warehouse, WarehouseError, open_warehouse
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000_000


def sig(i: int = 1, symbol: str = "BTCUSDT") -> signal_pb2.Signal:
    return signal_pb2.Signal(
        schema_version=SCHEMA_VERSION,
        signal_id=f"{symbol}:{i}:m7:5",
        venue=common_pb2.BINANCE_SPOT,
        symbol=symbol,
        decision=signal_pb2.SHORT,
        tier=signal_pb2.TIER_B,
        p_up=0.3,
        horizon_min=5,
        expected_return_bps=8.0,
        estimated_cost_bps=5.5,
        net_utility_bps=2.5,
        regime="vol_low_depth_thick",
        top_features=[prediction_pb2.FeatureContribution(name="ofi_1s", value=-0.5, contribution=-0.25)],
        model_version="m7",
        feature_version="f3",
        cost_model_version="cost-v2",
        data_window_id=f"{symbol}:1-3",
        quality_flags=[common_pb2.SIMULATED, common_pb2.STALE_INPUT],
        ts=common_pb2.Timestamps(exchange_us=NOW - 42_000, ingest_us=NOW - 41_000, features_us=NOW - 40_000,
                                 infer_us=NOW - 39_000, decision_us=NOW - 38_500),
        cooldown_until_us=NOW + 30_000_000,
        price=64_000.5,
    )


def outcome(signal_id: str = "BTCUSDT:1:m7:5") -> outcome_pb2.Outcome:
    return outcome_pb2.Outcome(
        schema_version=SCHEMA_VERSION, outcome_id=signal_id, signal_id=signal_id, venue=common_pb2.BINANCE_USDM,
        symbol="BTCUSDT", decision=signal_pb2.LONG, tier=signal_pb2.TIER_A, horizon_min=5,
        label=outcome_pb2.HIT_TARGET, entry_price=100.0, exit_price=100.2, realized_return_bps=20.0,
        net_return_bps=14.5, max_favourable_bps=21.0, max_adverse_bps=-3.0, entry_us=NOW - 300_000_000,
        exit_us=NOW - 1_000_000, time_to_barrier_us=299_000_000, estimated_cost_bps=5.5, realized_cost_bps=5.0,
        upper_barrier_bps=60.0, lower_barrier_bps=40.0, paper_equity=1.0014, risk_state="NORMAL",
    )


def letter(partition: int = 2, offset: int = 99, payload: bytes = b"\x00\xffraw") -> dlq_pb2.DeadLetter:
    return dlq_pb2.DeadLetter(
        schema_version=SCHEMA_VERSION, stage="decision", source_topic="predictions.v1",
        source_partition=partition, source_offset=offset, key=b"BTCUSDT", payload=payload,
        reason="undecodable Prediction protobuf", error_type="decode_error", failed_us=NOW - 5,
    )


def rec(value: Any, topic: str = "", offset: int = -1) -> InRecord[Any]:
    return InRecord(value=value, key=getattr(value, "symbol", ""), topic=topic, partition=0, offset=offset)


def ddl_columns(sql_file: str) -> tuple[str, ...]:
    """Column names of a DDL file in order, without MATERIALIZED ones (those are never inserted)."""
    body = (REPO_ROOT / "schemas" / "clickhouse" / sql_file).read_text()
    inner = body[body.index("(") + 1: body.index("ENGINE")]
    names = []
    for line in inner.splitlines():
        m = re.match(r"\s+([a-z_0-9]+)\s+\S", line)
        if m and "MATERIALIZED" not in line:
            names.append(m.group(1))
    return tuple(names)


def test_column_lists_match_the_ddl_exactly() -> None:
    assert ddl_columns("001_signals.sql") == SIGNAL_COLUMNS
    assert ddl_columns("002_outcomes.sql") == OUTCOME_COLUMNS
    assert ddl_columns("003_dead_letters.sql") == DEAD_LETTER_COLUMNS
    assert ddl_columns("008_trades.sql") == TRADE_COLUMNS
    assert ddl_columns("009_book_tops.sql") == BOOK_TOP_COLUMNS
    assert ddl_columns("010_features.sql") == FEATURE_COLUMNS
    assert ddl_columns("011_predictions.sql") == PREDICTION_COLUMNS
    assert dict(TABLE_COLUMNS) == {"signals": SIGNAL_COLUMNS, "outcomes": OUTCOME_COLUMNS,
                                   "dead_letters": DEAD_LETTER_COLUMNS, "predictions": PREDICTION_COLUMNS,
                                   "features": FEATURE_COLUMNS, "book_tops": BOOK_TOP_COLUMNS,
                                   "trades": TRADE_COLUMNS}


def test_signal_row() -> None:
    state = SinkState()
    out = process([rec(sig(), Topic.SIGNALS.value, 5)], state, ManualClock(NOW))
    assert (out.emits, out.rejects) == ([], [])
    assert state.pending["outcomes"] == [] and state.pending["dead_letters"] == []
    assert state.pending["signals"] == [[
        "BTCUSDT:1:m7:5", "BINANCE_SPOT", "BTCUSDT", "SHORT", "TIER_B", 0.3, 5, 8.0, 5.5, 2.5,
        "vol_low_depth_thick", '[{"name":"ofi_1s","value":-0.5,"contribution":-0.25}]', "m7", "f3", "cost-v2",
        "BTCUSDT:1-3", ["SIMULATED", "STALE_INPUT"], 64_000.5, NOW - 42_000, NOW - 41_000, NOW - 39_000,
        NOW - 38_500, NOW + 30_000_000, NOW,
    ]]
    assert state.pending_keys["signals"] == ["signals:BTCUSDT:1:m7:5"]
    (doc,) = state.pending_signals
    assert doc["top_features"] == [{"name": "ofi_1s", "value": -0.5, "contribution": -0.25}]
    assert doc["latency_ms"] == 3.5  # (decision_us - exchange_us) / 1000, like the table's MATERIALIZED column
    assert doc["stored_us"] == NOW
    assert set(doc) == {*SIGNAL_COLUMNS, "latency_ms"}


def test_outcome_row() -> None:
    state = SinkState()
    process([rec(outcome())], state, ManualClock(NOW))
    assert state.pending["outcomes"] == [[
        "BTCUSDT:1:m7:5", "BTCUSDT:1:m7:5", "BINANCE_USDM", "BTCUSDT", "LONG", "TIER_A", 5, "HIT_TARGET", 100.0,
        100.2, 20.0, 14.5, 21.0, -3.0, NOW - 300_000_000, NOW - 1_000_000, 299_000_000, 5.5, 5.0, 60.0, 40.0,
        1.0014, "NORMAL", NOW,
    ]]
    assert state.pending_signals == []


def test_dead_letter_rows_keyed_by_source_position_or_payload_hash() -> None:
    state = SinkState()
    from_ws = letter(partition=-1, offset=-1, payload=b"{not json")
    process([rec(letter()), rec(from_ws)], state, ManualClock(NOW))
    digest = hashlib.sha256(b"{not json").hexdigest()
    assert state.pending["dead_letters"] == [
        ["predictions.v1:2:99", "decision", "predictions.v1", 2, 99, "decode_error",
         "undecodable Prediction protobuf", base64.b64encode(b"\x00\xffraw").decode(), NOW - 5, NOW],
        [f"predictions.v1:sha256:{digest}", "decision", "predictions.v1", -1, -1,
         "decode_error", "undecodable Prediction protobuf", "e25vdCBqc29u", NOW - 5, NOW],
    ]
    assert base64.b64decode(state.pending["dead_letters"][0][7]) == b"\x00\xffraw"


def test_unknown_enum_numbers_are_kept_not_dropped() -> None:
    s = sig()
    s.decision = 42  # type: ignore[assignment]  # an open proto3 enum can carry a newer value
    state = SinkState()
    process([rec(s)], state, ManualClock(NOW))
    assert state.pending["signals"][0][3] == "42"


def test_duplicates_within_a_batch_and_after_a_write_are_skipped() -> None:
    state = SinkState()
    clock = ManualClock(NOW)
    # outcome_id == signal_id by design: that is not a duplicate, ids are namespaced per table.
    process([rec(sig(1)), rec(sig(1)), rec(sig(2)), rec(outcome()), rec(letter()), rec(letter())], state, clock)
    assert [r[0] for r in state.pending["signals"]] == ["BTCUSDT:1:m7:5", "BTCUSDT:2:m7:5"]
    assert [r[0] for r in state.pending["outcomes"]] == ["BTCUSDT:1:m7:5"]
    assert len(state.pending["dead_letters"]) == 1
    assert state.duplicates_skipped == 2

    # Nothing written yet: a redelivery in the next batch is still pending, so it is skipped too.
    process([rec(sig(2))], state, clock)
    assert state.duplicates_skipped == 3
    for table in TABLE_COLUMNS:
        state.mark_written(table)
    assert not state.has_pending()
    assert len(state.written) == 4

    # After the write: redelivered ids are skipped, new ones pass.
    process([rec(sig(1)), rec(outcome()), rec(letter()), rec(sig(3))], state, clock)
    assert [r[0] for r in state.pending["signals"]] == ["BTCUSDT:3:m7:5"]
    assert state.pending["outcomes"] == [] and state.pending["dead_letters"] == []
    assert state.duplicates_skipped == 6


def test_same_dead_letter_position_from_two_stages_is_two_rows() -> None:
    other = letter()
    other.stage = "outcomes"
    state = SinkState()
    process([rec(letter()), rec(other)], state, ManualClock(NOW))
    assert [(r[0], r[1]) for r in state.pending["dead_letters"]] == [
        ("predictions.v1:2:99", "decision"), ("predictions.v1:2:99", "outcomes")]


def test_unexpected_payload_is_rejected() -> None:
    state = SinkState()
    p = common_pb2.Timestamps(exchange_us=1)
    out = process([rec(p), rec(sig())], state, ManualClock(NOW))
    assert [(r.error_type, r.record.value) for r in out.rejects] == [("unexpected_type", p)]
    assert len(state.pending["signals"]) == 1


def test_recent_ids_evict_the_least_recently_used() -> None:
    ids = RecentIds(capacity=3)
    for k in ("a", "b", "c"):
        ids.add(k)
    assert "a" in ids  # touching "a" makes "b" the oldest
    ids.add("d")
    assert ("a" in ids, "b" in ids, "c" in ids, "d" in ids) == (True, False, True, True)
    assert len(ids) == 3
    with pytest.raises(ValueError):
        RecentIds(0)


def test_lru_bounds_memory_and_forgets_the_oldest() -> None:
    state = SinkState(written=RecentIds(capacity=2))
    clock = ManualClock(NOW)
    for i in (1, 2, 3):
        process([rec(sig(i))], state, clock)
        state.mark_written("signals")
    process([rec(sig(1)), rec(sig(3))], state, clock)  # 1 was evicted: written again (FINAL collapses it)
    assert [r[0] for r in state.pending["signals"]] == ["BTCUSDT:1:m7:5"]


# --- the stage: flush, outages, refused rows -------------------------------------------------------------------

def dead_redis(tmp_path: Path) -> redis.Redis:
    return open_redis(f"unix://{tmp_path / 'nobody-listens.sock'}")


def run_batch(rt: SinkRuntime, batch: Sequence[InRecord[Any]], clock: ManualClock) -> tuple[Outputs, list[Reject]]:
    """What the runner does with a batch: the pure core, then the flush at commit time."""
    return stage.process(batch, rt, clock), stage.flush(rt)


def count(wh: Warehouse, table: str, final: bool = False) -> int:
    return int(wh.query(f"SELECT count() AS n FROM surge.{table}{' FINAL' if final else ''}")[0]["n"])


def test_process_is_pure_and_flush_writes_each_table(chdb: Warehouse, tmp_path: Path) -> None:
    rt = SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path))
    out = stage.process([rec(sig(1)), rec(outcome()), rec(letter())], rt, ManualClock(NOW))
    assert (out.emits, out.rejects) == ([], [])
    assert [count(chdb, t) for t in TABLE_COLUMNS] == [0, 0, 0, 0, 0, 0, 0]  # process did no I/O
    assert stage.flush(rt) == []
    assert [count(chdb, t) for t in TABLE_COLUMNS] == [1, 1, 1, 0, 0, 0, 0]
    assert not rt.state.has_pending() and rt.state.pending_signals == []
    assert rt.redis_failures == 1  # Redis is down: counted, not raised; the warehouse has the data
    run_batch(rt, [rec(sig(1)), rec(outcome()), rec(letter())], ManualClock(NOW))  # redelivery: skipped
    assert [count(chdb, t) for t in TABLE_COLUMNS] == [1, 1, 1, 0, 0, 0, 0]


def test_non_finite_and_out_of_range_values_are_rejected_before_insert(chdb: Warehouse, tmp_path: Path) -> None:
    """Tried: signals with price NaN, +inf and p_up -inf (JSON would carry them as null and fail the whole
    insert) beside a good signal and a good outcome."""
    nan_price, inf_price, bad_p = sig(2), sig(3), sig(4)
    nan_price.price, inf_price.price, bad_p.p_up = float("nan"), float("inf"), float("-inf")
    rt = SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path))
    out, refused = run_batch(rt, [rec(sig(1)), rec(nan_price), rec(inf_price), rec(bad_p), rec(outcome())],
                             ManualClock(NOW))
    assert refused == []
    assert [(r.error_type, r.record.value.signal_id, r.reason) for r in out.rejects] == [
        ("invalid_row", "BTCUSDT:2:m7:5", "signals: price = nan: Float64 must be finite"),
        ("invalid_row", "BTCUSDT:3:m7:5", "signals: price = inf: Float64 must be finite"),
        ("invalid_row", "BTCUSDT:4:m7:5", "signals: p_up = -inf: Float64 must be finite"),
    ]
    assert chdb.query("SELECT signal_id FROM surge.signals") == [{"signal_id": "BTCUSDT:1:m7:5"}]
    assert count(chdb, "outcomes") == 1


def test_column_checks_follow_the_ddl_types() -> None:
    assert value_problem("UInt32", -1) == "outside UInt32 [0, 4294967295]"
    assert value_problem("Int64", 2**63) == "outside Int64 [-9223372036854775808, 9223372036854775807]"
    assert value_problem("Int64", True) == "Int64 needs an integer"
    assert value_problem("Array(LowCardinality(String))", ["A", 3]) == "item 3: LowCardinality(String) needs a string"
    assert value_problem("Float64", 1e308) is None
    assert value_problem("LowCardinality(String)", "x") is None


class RefusingWarehouse:
    """A real chdb warehouse whose inserts are refused for rows carrying a marker, as a server refuses a row it
    cannot parse: the sink must find exactly those rows by bisection and store the rest."""

    def __init__(self, inner: Warehouse, marker: str) -> None:
        self.inner, self.marker, self.database = inner, marker, inner.database
        self.inserts = 0

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        self.inner.command(sql, parameters)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.inner.query(sql, parameters)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        self.inserts += 1
        if any(self.marker in str(r[0]) for r in rows):
            raise WarehouseError(f"Code: 27. Cannot parse input: row {self.marker}")
        self.inner.insert(table, rows, column_names)

    def close(self) -> None:
        self.inner.close()


def test_rows_the_warehouse_refuses_are_dead_lettered_and_the_rest_stored(chdb: Warehouse, tmp_path: Path) -> None:
    """Tried: a batch of 8 signals of which #3 and #6 are refused by the warehouse itself (valid to our checks)."""
    batch = [rec(sig(i, "POISON" if i in (3, 6) else "BTCUSDT"), "signals.v1", i) for i in range(8)]
    rt = SinkRuntime(warehouse=RefusingWarehouse(chdb, "POISON"), redis=dead_redis(tmp_path))
    out, refused = run_batch(rt, batch, ManualClock(NOW))
    assert out.rejects == []
    assert [(r.error_type, r.record.offset) for r in refused] == [("warehouse_rejected", 3), ("warehouse_rejected", 6)]
    assert all("Cannot parse input" in r.reason for r in refused)
    stored = [r["signal_id"] for r in chdb.query("SELECT signal_id FROM surge.signals ORDER BY signal_id")]
    assert stored == sorted(f"BTCUSDT:{i}:m7:5" for i in (0, 1, 2, 4, 5, 7))
    assert not rt.state.has_pending()


def test_an_outage_raises_downstream_unavailable_and_keeps_what_is_not_written(chdb: Warehouse, tmp_path: Path) -> None:
    """Tried: a flush while the warehouse service is unreachable (nothing listens on its port), then the same
    flush again once the warehouse is back: every row is written exactly once, nothing is dead-lettered."""
    port = free_port()
    rt = SinkRuntime(warehouse=open_warehouse(f"surge+http://127.0.0.1:{port}", "surge"), redis=dead_redis(tmp_path),
                     database="surge")
    out = stage.process([rec(sig(1)), rec(sig(2)), rec(outcome())], rt, ManualClock(NOW))
    assert out.rejects == []
    for _ in range(3):
        with pytest.raises(DownstreamUnavailable, match="unreachable"):
            stage.flush(rt)
        assert [len(rt.state.pending[t]) for t in TABLE_COLUMNS] == [2, 1, 0, 0, 0, 0, 0]
    rt.warehouse = chdb  # the warehouse is back
    assert stage.flush(rt) == []
    assert (count(chdb, "signals"), count(chdb, "outcomes")) == (2, 1)
    assert not rt.state.has_pending()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_failed_batch_is_undone_before_the_record_by_record_retry(chdb: Warehouse, tmp_path: Path) -> None:
    """The checkpoint drops the rows a half-processed batch queued, so the retry does not see them as duplicates."""
    rt = SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path))
    restore = stage.checkpoint(rt)
    stage.process([rec(sig(1)), rec(sig(2))], rt, ManualClock(NOW))
    restore()
    assert not rt.state.has_pending() and rt.state.pending_signals == []
    run_batch(rt, [rec(sig(1)), rec(sig(2))], ManualClock(NOW))
    assert count(chdb, "signals") == 2


def test_sink_to_chdb_deduplicates_in_memory_and_with_final(chdb: Warehouse, tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    batch = [rec(sig(1)), rec(sig(2, "ETHUSDT")), rec(outcome()), rec(letter())]
    first = SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path))
    run_batch(first, batch, clock)
    run_batch(first, batch, clock)  # redelivered: the LRU skips every id
    assert chdb.query("SELECT count() AS n FROM surge.signals") == [{"n": 2}]

    # A restarted sink has an empty LRU: rows are inserted again, and FINAL still counts each id once.
    clock.advance_us(1_000)
    run_batch(SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path)), batch, clock)
    assert chdb.query("SELECT count() AS n FROM surge.signals") == [{"n": 4}]
    for table, n in (("signals", 2), ("outcomes", 1), ("dead_letters", 1)):
        assert chdb.query(f"SELECT count() AS n FROM surge.{table} FINAL") == [{"n": n}]
    row = chdb.query("SELECT signal_id, decision, quality_flags, top_features, latency_ms, stored_us "
                     "FROM surge.signals FINAL WHERE symbol = 'BTCUSDT'")[0]
    assert row == {"signal_id": "BTCUSDT:1:m7:5", "decision": "SHORT", "quality_flags": ["SIMULATED", "STALE_INPUT"],
                   "top_features": '[{"name":"ofi_1s","value":-0.5,"contribution":-0.25}]', "latency_ms": 3.5,
                   "stored_us": NOW + 1_000}
    assert orjson.loads(row["top_features"])[0]["name"] == "ofi_1s"
    payload = chdb.query("SELECT payload_b64 FROM surge.dead_letters FINAL")[0]["payload_b64"]
    assert base64.b64decode(payload) == b"\x00\xffraw"


def test_stage_spec_is_lazy() -> None:
    # Building the spec opens nothing: the warehouse and Redis are created by make_state in the stage process.
    spec = stage.spec(Settings(clickhouse_url="surge+http://127.0.0.1:9", redis_url="redis://127.0.0.1:9/0"))
    assert (spec.name, spec.input_topics) == ("sink", (Topic.SIGNALS, Topic.OUTCOMES, Topic.DLQ, Topic.PREDICTIONS,
                                                       Topic.FEATURES, Topic.TICKS))
    lean = Settings(sink_store_ticks=False, sink_store_features=False, sink_store_predictions=False)
    assert stage.spec(lean).input_topics == (Topic.SIGNALS, Topic.OUTCOMES, Topic.DLQ)
    assert spec.on_close is stage.close_runtime
