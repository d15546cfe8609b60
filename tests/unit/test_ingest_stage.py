"""Unit tests of the ingest stage loop with an in-memory producer: what reaches the bus, metrics, catch-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Producer

from schemas import dlq_pb2, market_pb2
from streams.ingest.core import DeadLetterOut, IngestOutputs
from streams.ingest.stage import IngestLoop, spec
from streams.runtime.clock import ManualClock
from streams.runtime.observability import StageMetrics
from streams.runtime.settings import Settings
from streams.runtime.source import run_source
from streams.runtime.topics import Topic, decode

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000  # µs

DeliveryCallback = Callable[[Any, Any], None]


class FakeProducer:
    """Accepts every record and acknowledges it on the next flush/poll, like a healthy broker."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str | bytes, bytes]] = []
        self._unacked: list[DeliveryCallback] = []

    def produce(self, topic: str, key: str | bytes | None = None, value: bytes | None = None,
                headers: Any = None, on_delivery: DeliveryCallback | None = None) -> None:
        assert value is not None and key is not None
        self.records.append((topic, key, value))
        if on_delivery is not None:
            self._unacked.append(on_delivery)

    def flush(self, timeout: float | None = None) -> int:
        for callback in self._unacked:
            callback(None, None)
        self._unacked.clear()
        return 0

    def poll(self, timeout: float | None = None) -> int:
        return self.flush()


def make_loop(clock: ManualClock) -> tuple[IngestLoop, FakeProducer, StageMetrics]:
    settings = Settings(symbols="BTCUSDT,ETHUSDT", sim_events_per_s=10_000, sim_seed=3)
    producer = FakeProducer()
    metrics = StageMetrics.create("ingest")
    loop = IngestLoop(settings, clock, cast(Producer, producer), metrics)
    loop.seed_books()
    return loop, producer, metrics


def sample(metrics: StageMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"stage": "ingest", **labels})
    return 0.0 if value is None else value


def test_loop_produces_valid_tick_batches_and_counts_them() -> None:
    clock = ManualClock(T0)
    loop, producer, metrics = make_loop(clock)
    raw = 0
    for _ in range(200):  # 1 s in 5 ms rounds
        clock.advance_us(5_000)
        raw += loop.step()
    loop.drain()
    assert raw == pytest.approx(10_000, rel=0.15)
    events = 0
    sequences: dict[str, list[int]] = {}
    for topic, key, value in producer.records:
        assert topic == Topic.TICKS.value
        assert isinstance(key, str)
        batch = decode(topic, key.encode(), value)
        assert isinstance(batch, market_pb2.TickBatch)
        assert key == f"SIMULATOR:{batch.symbol}"  # the instrument key
        assert batch.batch_id == f"simulator:{batch.symbol}:{batch.sequence}"
        sequences.setdefault(key, []).append(batch.sequence)
        events += sum(1 for ev in batch.events if ev.WhichOneof("event") != "book")
    assert events == raw  # nothing lost, nothing duplicated
    for seqs in sequences.values():
        # Session-based: unique across restarts, +1 per batch within the session.
        assert seqs == list(range(T0 + 1, T0 + 1 + len(seqs)))
        assert 45 <= len(seqs) <= 52  # one per 20 ms window over 1 s
    assert sample(metrics, "surge_events_in_total") == raw
    assert sample(metrics, "surge_events_out_total", topic=Topic.TICKS.value) == len(producer.records)
    assert sample(metrics, "surge_e2e_latency_seconds_count") == len(producer.records)
    assert sample(metrics, "surge_batch_size_count") == 200


def test_a_slow_round_catches_up_in_one_bigger_batch() -> None:
    clock = ManualClock(T0)
    loop, producer, _ = make_loop(clock)
    clock.advance_us(5_000)
    normal = loop.step()
    clock.advance_us(300_000)  # the loop stalled for 300 ms
    backlog = loop.step()
    assert backlog > 20 * max(normal, 10)
    assert backlog == pytest.approx(3_000, rel=0.3)
    loop.drain()
    got = sum(
        sum(1 for ev in market_pb2.TickBatch.FromString(v).events if ev.WhichOneof("event") != "book")
        for _, _, v in producer.records
    )
    assert got == normal + backlog


def test_dead_letters_go_to_dlq_with_the_sim_source() -> None:
    clock = ManualClock(T0)
    loop, producer, metrics = make_loop(clock)
    loop.publish(IngestOutputs(dead_letters=[DeadLetterOut(b'{"e":', "malformed_json", "undecodable", "BTCUSDT")]),
                 raw_events=1)
    [(topic, key, value)] = producer.records
    assert topic == Topic.DLQ.value and key == b"BTCUSDT"
    letter = dlq_pb2.DeadLetter.FromString(value)
    source = (letter.stage, letter.source_topic, letter.source_partition, letter.source_offset)
    assert source == ("ingest", "sim", -1, -1)
    assert (letter.payload, letter.error_type, letter.reason) == (b'{"e":', "malformed_json", "undecodable")
    assert letter.failed_us == T0
    assert sample(metrics, "surge_dlq_total", error_type="malformed_json") == 1


def test_unsupported_sources_are_refused_before_touching_the_broker(tmp_path: Path) -> None:
    """Tried, with no broker anywhere: an unknown source, a missing capture, a zero replay speed; each is exit 2."""
    capture = tmp_path / "btcusdt.jsonl"
    capture.write_bytes(b"{}\n")
    for settings in (Settings(source="carrier-pigeon"), Settings(source=f"replay:{tmp_path / 'missing.gz'}"),
                     Settings(source=f"replay:{capture}", replay_speed="0")):  # speed must be positive or max
        assert run_source(spec(settings), settings) == 2


def test_simulated_prices_carry_over_a_clean_restart_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Tried: a session's mids saved and a new loop started 30 s later (it starts there, and the file is gone, so
    a crash-restart after it starts from the base prices), a file older than the limit, a corrupt file, and a
    saved symbol that is no longer simulated. Only the fresh, readable file for known symbols is used."""
    from streams.ingest.simulator import spec_for
    from streams.ingest.stage import load_sim_prices, save_sim_prices, sim_prices_path

    settings = Settings(symbols="BTCUSDT,ETHUSDT", sim_events_per_s=10_000, sim_seed=3, data_dir=tmp_path)
    path = sim_prices_path(settings)
    save_sim_prices(path, {"BTCUSDT": 61_234.5, "ETHUSDT": 2_950.25, "DOGEUSDT": 0.1}, T0)
    clock = ManualClock(T0 + 30_000_000)
    loop = IngestLoop(settings, clock, cast(Producer, FakeProducer()), StageMetrics.create("ingest"))
    mids = loop.sim.mid_prices()
    assert abs(mids["BTCUSDT"] - 61_234.5) <= 0.01 and abs(mids["ETHUSDT"] - 2_950.25) <= 0.01
    assert not path.exists()
    again = IngestLoop(settings, clock, cast(Producer, FakeProducer()), StageMetrics.create("ingest"))
    assert again.sim.mid_prices()["BTCUSDT"] == pytest.approx(spec_for("BTCUSDT").price, abs=0.01)

    save_sim_prices(path, {"BTCUSDT": 61_234.5}, T0)
    assert load_sim_prices(path, ["BTCUSDT"], T0 + 121_000_000, 120_000_000) == {}  # too old
    assert not path.exists()
    path.write_bytes(b'{"saved_at_us": "soon", "prices": [1, 2]}')
    with caplog.at_level("WARNING", logger="surge.ingest"):
        assert load_sim_prices(path, ["BTCUSDT"], T0, 120_000_000) == {}
    assert "ignored the saved simulator prices" in caplog.text and not path.exists()
    save_sim_prices(path, {"BTCUSDT": 61_234.5, "DOGEUSDT": 0.1}, T0)
    assert load_sim_prices(path, ["BTCUSDT"], T0 + 1, 120_000_000) == {"BTCUSDT": 61_234.5}
