"""Sink: row building per table, de-duplication, and the stage's write / failure policy."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from schemas import SCHEMA_VERSION, common_pb2, dlq_pb2, outcome_pb2, prediction_pb2, signal_pb2
from streams.runtime.clock import ManualClock
from streams.runtime.core import FatalStageError, InRecord
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.sink import stage
from streams.sink.core import (
    DEAD_LETTER_COLUMNS,
    OUTCOME_COLUMNS,
    SIGNAL_COLUMNS,
    TABLE_COLUMNS,
    RecentIds,
    SinkState,
    process,
)
from streams.sink.stage import SinkRuntime, SinkWriteError
from streams.storage.cache import open_redis
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse
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
        exit_us=NOW - 1_000_000,
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
    assert dict(TABLE_COLUMNS) == {"signals": SIGNAL_COLUMNS, "outcomes": OUTCOME_COLUMNS,
                                   "dead_letters": DEAD_LETTER_COLUMNS}


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
        100.2, 20.0, 14.5, 21.0, -3.0, NOW - 300_000_000, NOW - 1_000_000, NOW,
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
    p = prediction_pb2.Prediction(prediction_id="x", symbol="BTCUSDT")
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


# --- the stage: writes, retries, failure policy ---------------------------------------------------------------

class FakeWarehouse:
    """Records inserts; fails the first ``fail_times`` calls."""

    database = "surge"

    def __init__(self, fail_times: int = 0) -> None:
        self.fail_times = fail_times
        self.calls = 0
        self.inserts: list[tuple[str, list[list[Any]], list[str]]] = []

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        return None

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return []

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Sequence[str]) -> None:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError("warehouse down")
        self.inserts.append((table, [list(r) for r in rows], list(column_names)))

    def close(self) -> None:
        return None


def dead_redis(tmp_path: Path) -> redis.Redis:
    return open_redis(f"unix://{tmp_path / 'nobody-listens.sock'}")


def runtime(wh: Warehouse, r: redis.Redis) -> SinkRuntime:
    slept: list[float] = []
    rt = SinkRuntime(warehouse=wh, redis=r, sleep=slept.append)
    return rt


def test_flush_writes_each_table_and_marks_ids(tmp_path: Path) -> None:
    wh = FakeWarehouse()
    rt = runtime(wh, dead_redis(tmp_path))
    stage.process([rec(sig(1)), rec(outcome()), rec(letter())], rt, ManualClock(NOW))
    assert [(t, len(rows), cols) for t, rows, cols in wh.inserts] == [
        ("signals", 1, list(SIGNAL_COLUMNS)), ("outcomes", 1, list(OUTCOME_COLUMNS)),
        ("dead_letters", 1, list(DEAD_LETTER_COLUMNS))]
    assert not rt.state.has_pending() and rt.state.pending_signals == []
    assert rt.redis_failures == 1  # Redis is down: counted, not raised; the warehouse has the data
    stage.process([rec(sig(1)), rec(outcome()), rec(letter())], rt, ManualClock(NOW))  # redelivery
    assert len(wh.inserts) == 3


def test_transient_warehouse_failures_are_retried(tmp_path: Path) -> None:
    wh = FakeWarehouse(fail_times=2)
    slept: list[float] = []
    rt = SinkRuntime(warehouse=wh, redis=dead_redis(tmp_path), sleep=slept.append)
    stage.process([rec(sig(1))], rt, ManualClock(NOW))
    assert slept == [0.1, 0.25]
    assert [t for t, _, _ in wh.inserts] == ["signals"]


def test_lasting_warehouse_failure_is_fatal_and_keeps_nothing(tmp_path: Path) -> None:
    wh = FakeWarehouse(fail_times=100)
    slept: list[float] = []
    rt = SinkRuntime(warehouse=wh, redis=dead_redis(tmp_path), sleep=slept.append)
    with pytest.raises(SinkWriteError, match="insert into signals failed after 7 attempt"):
        stage.process([rec(sig(1)), rec(outcome())], rt, ManualClock(NOW))
    # Fatal: the runner re-raises it instead of isolating records (which would dead-letter and commit).
    assert issubclass(SinkWriteError, FatalStageError)
    assert slept == list(stage.RETRY_DELAYS_S)
    assert not rt.state.has_pending() and len(rt.state.written) == 0
    # Once the warehouse is back, the redelivered batch is written in full.
    wh.fail_times = 0
    stage.process([rec(sig(1)), rec(outcome())], rt, ManualClock(NOW))
    assert [t for t, _, _ in wh.inserts] == ["signals", "outcomes"]


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    apply_ddl(wh, "surge")
    try:
        yield wh
    finally:
        wh.close()


def test_sink_to_chdb_deduplicates_in_memory_and_with_final(chdb: Warehouse, tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    batch = [rec(sig(1)), rec(sig(2, "ETHUSDT")), rec(outcome()), rec(letter())]
    first = SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path))
    stage.process(batch, first, clock)
    stage.process(batch, first, clock)  # redelivered: the LRU skips every id
    assert chdb.query("SELECT count() AS n FROM surge.signals") == [{"n": 2}]

    # A restarted sink has an empty LRU: rows are inserted again, and FINAL still counts each id once.
    clock.advance_us(1_000)
    stage.process(batch, SinkRuntime(warehouse=chdb, redis=dead_redis(tmp_path)), clock)
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
    assert (spec.name, spec.input_topics) == ("sink", (Topic.SIGNALS, Topic.OUTCOMES, Topic.DLQ))
    assert spec.on_close is stage.close_runtime
