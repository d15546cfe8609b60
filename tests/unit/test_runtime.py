"""Unit tests of the shared runtime: settings, decoding/validation, dead letters, failure isolation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import SCHEMA_VERSION, dlq_pb2, prediction_pb2, signal_pb2
from streams.runtime.clock import ManualClock
from streams.runtime.core import Emit, InRecord, Outputs, StageSpec
from streams.runtime.dlq import dead_letter
from streams.runtime.runner import StageRunner
from streams.runtime.settings import Settings
from streams.runtime.topics import InvalidMessage, Topic, decode

pytestmark = pytest.mark.unit


def test_settings_reject_unknown_surge_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_BROKER", "typo-of-brokers:9092")
    with pytest.raises(ValidationError, match="SURGE_BROKER"):
        Settings()


def test_settings_are_frozen_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SURGE_PARTITIONS", "12")
    s = Settings()
    assert s.partitions == 12
    with pytest.raises(ValidationError):
        s.partitions = 3  # type: ignore[misc]  # the point of the test: assignment must fail
    monkeypatch.setenv("SURGE_PARTITIONS", "many")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()


def test_embedded_defaults_and_external_override(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.embedded and s.bootstrap_servers == "127.0.0.1:19092"
    assert s.warehouse_url() == "surge+http://127.0.0.1:8124"
    monkeypatch.setenv("SURGE_BROKERS", "redpanda:9092")
    monkeypatch.setenv("SURGE_CLICKHOUSE_URL", "http://ch:8123/surge")
    s = Settings()
    assert not s.embedded and s.bootstrap_servers == "redpanda:9092"
    assert s.warehouse_url() == "http://ch:8123/surge"
    assert [s.stage_port(n) for n in ("ingest", "sink")] == [9101, 9105]


def _signal(**kw: Any) -> signal_pb2.Signal:
    base: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "signal_id": "s1", "symbol": "BTCUSDT"}
    base.update(kw)
    return signal_pb2.Signal(**base)


def test_decode_accepts_valid_message() -> None:
    msg = decode("signals.v1", b"VENUE_UNSPECIFIED:BTCUSDT", _signal().SerializeToString())
    assert isinstance(msg, signal_pb2.Signal) and msg.signal_id == "s1"


@pytest.mark.parametrize(
    ("payload", "key", "error_type"),
    [
        (b"\xff\xff\xff\xff", b"BTCUSDT", "decode_error"),            # corrupt wire format
        (b"not a protobuf at all", b"BTCUSDT", "decode_error"),
        (None, b"BTCUSDT", "empty_payload"),
        (_signal(schema_version=2).SerializeToString(), b"BTCUSDT", "schema_version"),
        (_signal(signal_id="").SerializeToString(), b"BTCUSDT", "missing_id"),
        (_signal(symbol="").SerializeToString(), b"", "missing_symbol"),
        (_signal().SerializeToString(), b"ETHUSDT", "key_mismatch"),
        (_signal().SerializeToString(), b"BTCUSDT", "key_mismatch"),               # the symbol alone is not the key
        (_signal(venue=1).SerializeToString(), b"BINANCE_USDM:BTCUSDT", "key_mismatch"),  # spot keyed as USD-M
        (_signal().SerializeToString() + b"\xa8\x1f\x05", b"BTCUSDT", "unknown_fields"),  # field 501
        (b"", b"BTCUSDT", "schema_version"),                          # empty bytes parse as all defaults
    ],
)
def test_decode_rejects_bad_input_with_reason(payload: bytes | None, key: bytes, error_type: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode("signals.v1", key, payload)
    assert info.value.error_type == error_type
    assert info.value.reason


def test_dead_letter_keeps_original_bytes_and_reason_in_headers() -> None:
    topic, key, value, headers = dead_letter(
        stage="decision", source_topic="predictions.v1", source_partition=2, source_offset=41,
        key=b"BTCUSDT", payload=b"\x00garbage", error_type="decode_error", reason="undecodable", now_us=5)
    assert topic == "dlq.v1" and key == b"BTCUSDT"
    env = dlq_pb2.DeadLetter.FromString(value)
    assert (env.payload, env.source_topic, env.source_partition, env.source_offset) == (
        b"\x00garbage", "predictions.v1", 2, 41)
    assert dict(headers or [])["dlq.reason"] == b"undecodable"
    assert dict(headers or [])["dlq.source.offset"] == b"41"


def test_runner_isolates_a_record_that_crashes_the_core() -> None:
    def process(batch: Sequence[InRecord[Any]], state: list[str], clock: Any) -> Outputs:
        out = Outputs()
        for rec in batch:
            if rec.value.prediction_id == "poison":
                raise ZeroDivisionError("boom")
            state.append(rec.value.prediction_id)
            out.emits.append(Emit(Topic.SIGNALS, rec.key, rec.value, 0))
        return out

    spec: StageSpec[list[str]] = StageSpec("t", (Topic.PREDICTIONS,), lambda context: [], process)
    runner = StageRunner(spec, Settings(), clock=ManualClock(1))
    recs = [InRecord(prediction_pb2.Prediction(prediction_id=i, symbol="X"), "X", "predictions.v1", 0, n)
            for n, i in enumerate(["a", "poison", "b"])]
    state: list[str] = []
    out = runner._process_isolating_failures(recs, state)
    assert [e.value.prediction_id for e in out.emits] == ["a", "b"]  # type: ignore[attr-defined]  # Predictions
    assert len(out.rejects) == 1
    assert out.rejects[0].record.offset == 1
    assert out.rejects[0].error_type == "processing_error"
    assert out.rejects[0].reason == "ZeroDivisionError: boom"


def test_manual_clock_never_goes_backwards() -> None:
    clock = ManualClock(100)
    clock.advance_us(5)
    assert clock.now_us() == 105
    with pytest.raises(ValueError):
        clock.set_us(50)


def test_runner_does_not_isolate_fatal_errors() -> None:
    """A fatal error (the stage's own dependency is down) must not dead-letter good input."""
    from streams.runtime.core import FatalStageError

    def process(batch: Sequence[InRecord[Any]], state: None, clock: Any) -> Outputs:
        raise FatalStageError("warehouse down")

    spec: StageSpec[None] = StageSpec("t", (Topic.PREDICTIONS,), lambda context: None, process)
    runner = StageRunner(spec, Settings(), ManualClock(1))
    rec = InRecord(prediction_pb2.Prediction(prediction_id="a", symbol="X"), "X", "predictions.v1", 0, 0)
    with pytest.raises(FatalStageError):
        runner._process_isolating_failures([rec], None)


class RecordingConsumer:
    """Stands in for confluent_kafka.Consumer in _settle: records what would be committed."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


def test_offsets_are_committed_only_for_the_acknowledged_prefix_of_batches() -> None:
    from typing import cast

    from confluent_kafka import Consumer

    from streams.runtime.delivery import InFlightBatch
    from streams.runtime.kafka import DeliveryFailed, DeliveryTracker

    spec: StageSpec[list[str]] = StageSpec("t", (Topic.PREDICTIONS,), lambda context: [], lambda b, s, c: Outputs())
    runner = StageRunner(spec, Settings(), ManualClock(1))
    consumer = RecordingConsumer()

    def settle() -> None:
        runner._settle(cast(Consumer, consumer))

    batches = [InFlightBatch(DeliveryTracker(), {("ticks.v1", 0): 10 * (n + 1), ("ticks.v1", 1): 5 + n})
               for n in range(3)]
    for batch in batches:
        batch.tracker.expect(2)  # two outputs each, not yet acknowledged
        runner.in_flight.append(batch)
    settle()
    assert consumer.commits == []  # nothing acknowledged: nothing committed
    batches[1].tracker.pending = 0  # the second batch's acks arrive first
    settle()
    assert consumer.commits == []  # the first still waits, so neither may be committed
    batches[0].tracker.pending = 0
    settle()
    # Both, as one commit of the highest offsets + 1; the third stays in flight.
    assert consumer.commits == [[("ticks.v1", 0, 21), ("ticks.v1", 1, 7)]]
    assert list(runner.in_flight) == [batches[2]]
    batches[2].tracker.pending = 0
    batches[2].tracker.failures.append("signals.v1: Local: Message timed out")
    with pytest.raises(DeliveryFailed, match="timed out"):
        settle()
    assert len(consumer.commits) == 1  # the failed batch's input is never committed: it will be re-read
