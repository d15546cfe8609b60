"""Unit tests of the replay source: line formats, file merging, and whole real captures through the core."""

from __future__ import annotations

import gzip
import threading
from itertools import pairwise
from pathlib import Path
from typing import cast

import orjson
import pytest
from confluent_kafka import Producer

from schemas import dlq_pb2, market_pb2
from streams.ingest.core import IngestOutputs
from streams.ingest.quality import IngestQuality
from streams.ingest.replay import (
    Replayer,
    parse_speed,
    read_capture,
    read_captures,
    run_replay,
    split_line,
    to_micros,
)
from streams.runtime.clock import LiveClock
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner
from streams.runtime.topics import Topic
from streams.venues.binance.spec import venue_spec
from tests.unit.test_ingest_stage import FakeProducer

pytestmark = pytest.mark.unit

HFT = "ws_messages/hftbacktest"
SNAP = b'{"lastUpdateId":100,"bids":[["100.00","1.0"]],"asks":[["101.00","2.0"]]}'


def envelope(stream: str, data: dict[str, object]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_timestamps_in_any_unit_become_microseconds() -> None:
    assert to_micros(b"1723161253937085768") == 1723161253937085   # ns (2024 hftbacktest files)
    assert to_micros(b"1680652800004107") == 1680652800004107      # µs (2023 *.dat.gz files)
    assert to_micros(b"1680652800004") == 1680652800004000         # ms
    assert to_micros(b"1634000000.25") == 1634000000250000         # float seconds (cryptofeed)
    assert to_micros(b"1634000000") == 1634000000000000            # whole seconds


def test_capture_line_formats() -> None:
    frame = b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343}}'
    assert split_line(b"1723161253937085768 " + frame + b"\n", 0) == (1723161253937085, frame)
    assert split_line(b"1634000000.5: " + frame, 0) == (1634000000500000, frame)
    assert split_line(b"wss://stream.binance.com:9443/stream?streams=x <-> 1634000000.1\n", 0) is None
    assert split_line(b"   \n", 0) is None
    assert split_line(frame + b"\n", 7) == (1723161255343000, frame)          # plain JSON: its own event time
    assert split_line(b'{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}', 7)[0] == 7  # type: ignore[index]
    assert parse_speed("max") is None and parse_speed("2.5") == 2.5
    with pytest.raises(ValueError, match="positive"):
        parse_speed("0")


def test_snapshot_lines_get_the_symbol_of_their_file(tmp_path: Path) -> None:
    plain = tmp_path / "ethusdt_20240808.jsonl"
    plain.write_bytes(SNAP + b"\n" + envelope("ethusdt@depth@100ms", {"E": 1}) + b"\n")
    lines = list(read_capture(plain))
    assert [(ln.hint, ln.local_us) for ln in lines] == [("ETHUSDT", 0), ("ETHUSDT", 1000)]
    # A frame's stream name wins over the file name for the lines after it.
    gz = tmp_path / "capture.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b"1000000000000000 " + envelope("solusdt@trade", {"E": 1}) + b"\n")
        fh.write(b"1000000000000001 " + SNAP + b"\n")
    assert [ln.hint for ln in read_capture(gz)] == ["SOLUSDT", "SOLUSDT"]


def test_files_of_a_folder_are_merged_by_recorded_time(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"1000000000000001 {\"a\":1}\n1000000000000005 {\"a\":2}\n")
    (tmp_path / "b.txt").write_bytes(b"1000000000000002 {\"b\":1}\n1000000000000005 {\"b\":2}\n")
    (tmp_path / ".hidden.txt").write_bytes(b"1 {}\n")
    (tmp_path / "notes.md").write_bytes(b"not a capture\n")
    merged = [ln.payload for ln in read_captures(tmp_path)]
    assert merged == [b'{"a":1}', b'{"b":1}', b'{"a":2}', b'{"b":2}']
    with pytest.raises(FileNotFoundError):
        list(read_captures(tmp_path / "missing"))


def replay_all(path: Path, venue: str) -> tuple[Replayer, IngestOutputs]:
    lines = list(read_captures(path))
    replayer = Replayer.for_capture(Settings(), venue_spec(venue), lines[0].local_us)
    out = IngestOutputs()
    chunk = [lines[0]]
    for line in lines[1:]:
        if line.local_us - chunk[0].local_us >= 1_000:
            out.extend(replayer.feed([(ln.hint, ln.payload, ln.local_us) for ln in chunk], chunk[0].local_us))
            chunk = []
        chunk.append(line)
    out.extend(replayer.feed([(ln.hint, ln.payload, ln.local_us) for ln in chunk], chunk[0].local_us))
    out.extend(replayer.finish())
    return replayer, out


def linked(tmp_path: Path, shared_data: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / Path(name).name).symlink_to(shared_data / HFT / name)
    return tmp_path


def tick_batches(out: IngestOutputs) -> list[market_pb2.TickBatch]:
    batches = []
    for emit in out.emits:
        assert isinstance(emit.value, market_pb2.TickBatch)
        batches.append(emit.value)
    return batches


def test_spot_capture_pair_replays_exactly(shared_data: Path, tmp_path: Path) -> None:
    folder = linked(tmp_path, shared_data, "spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz")
    replayer, out = replay_all(folder, "spot")
    st = replayer.state.symbols["BTCUSDT"]
    batches = tick_batches(out)
    trades = [ev.trade.trade_id for b in batches for ev in b.events if ev.WhichOneof("event") == "trade"]
    # PROVENANCE: 19,904 contiguous trades; 6,495 diffs, 6,493 applied: 3 come before the snapshot line (2 stale,
    # 1 applied with the snapshot), 6,492 apply live; no gap.
    assert len(trades) == 19_904 and trades == list(range(trades[0], trades[0] + 19_904))
    assert (st.trades, st.trades_lost, st.duplicates) == (19_904, 0, 0)
    assert (st.depth_updates, st.gaps, st.snapshots, st.divergences) == (6_492, 0, 1, 0)
    assert st.ticker_checks > 400 and st.resyncs == {}
    assert out.dead_letters == []
    # The diffs before the snapshot line asked for a snapshot once; the line served it.
    assert (replayer.stats.snapshot_requests, replayer.stats.unserved_resyncs) == (1, 0)
    first_us = next(iter(read_captures(folder))).local_us
    assert batches[0].batch_id == f"binance_spot:BTCUSDT:{first_us + 1}"  # deterministic: based on recorded time
    for batch in batches:
        snaps = [ev.book for ev in batch.events if ev.WhichOneof("event") == "book"]
        for snap in snaps:
            assert snap.bids[0].price < snap.asks[0].price
    # Micro-batches follow recorded time: a window opens at its first event and closes 20 ms (recorded) later,
    # so consecutive windows start >= 19 ms apart (frames are processed in 1 ms chunks).
    opened = [getattr(b.events[0], str(b.events[0].WhichOneof("event"))).ingest_us for b in batches]
    assert min(later - earlier for earlier, later in pairwise(opened)) >= 19_000


def test_usdm_capture_with_microsecond_times_and_mark_prices(shared_data: Path, tmp_path: Path) -> None:
    folder = linked(tmp_path, shared_data, "usdm/btcusdt_20230404.dat.gz", "usdm/btcusdt_20230405.dat.gz")
    replayer, out = replay_all(folder, "usdm")
    st = replayer.state.symbols["BTCUSDT"]
    batches = tick_batches(out)
    kinds = [ev.WhichOneof("event") for b in batches for ev in b.events]
    assert kinds.count("trade") == 12_935 and kinds.count("mark_price") == 514
    assert (st.trades_lost, st.gaps, st.divergences, st.snapshots) == (0, 0, 0, 1)
    assert st.ticker_checks > 100
    assert out.dead_letters == []
    marks = [ev.mark_price for b in batches for ev in b.events if ev.WhichOneof("event") == "mark_price"]
    assert marks[0].funding_rate == 0.00002754 and marks[0].next_funding_us == 1680652800000000


def test_run_replay_publishes_ticks_and_dead_letters(tmp_path: Path) -> None:
    capture = tmp_path / "btcusdt_replay.jsonl"
    capture.write_bytes(b"\n".join([
        b"1700000000000000 " + SNAP,
        b"1700000000001000 " + envelope("btcusdt@trade", {
            "e": "trade", "E": 1700000000001, "s": "BTCUSDT", "t": 1, "p": "100.5", "q": "0.1", "T": 1700000000001,
            "m": True}),
        b"1700000000002000 " + b'{"stream":"btcusdt@trade","data":{"e":"tra',
        b"1700000000030000 " + envelope("btcusdt@depth@100ms", {
            "e": "depthUpdate", "E": 1700000000030, "s": "BTCUSDT", "U": 101, "u": 101, "b": [["100.00", "3.0"]],
            "a": []}),
    ]) + b"\n")
    producer = FakeProducer()
    metrics = StageMetrics.create("ingest")
    settings = Settings(source=f"replay:{capture}", replay_speed="max", replay_exit=True)
    publisher = SourceRunner("ingest", cast(Producer, producer), metrics,
                             make_tracer_provider("ingest", settings).get_tracer("t"), LiveClock(),
                             source_topic=f"replay:{capture}")
    code = run_replay(settings, capture, publisher=publisher, metrics=metrics,
                      quality=IngestQuality.create(metrics.registry), health=HealthState(), stop=threading.Event(),
                      wall=LiveClock())
    assert code == 0
    ticks = [market_pb2.TickBatch.FromString(v) for t, _, v in producer.records if t == Topic.TICKS.value]
    letters = [dlq_pb2.DeadLetter.FromString(v) for t, _, v in producer.records if t == Topic.DLQ.value]
    assert [(b.batch_id, [ev.WhichOneof("event") for ev in b.events]) for b in ticks] == [
        ("binance_spot:BTCUSDT:1700000000000001", ["trade", "book"]),
        ("binance_spot:BTCUSDT:1700000000000002", ["depth", "book"]),
    ]
    assert ticks[1].events[-1].book.bids[0].qty == 3.0
    assert ticks[0].ts.ingest_us == 1700000000001000  # recorded receive time, not the wall clock
    [letter] = letters
    assert (letter.error_type, letter.source_topic, letter.payload) == (
        "malformed_json", f"replay:{capture}", b'{"stream":"btcusdt@trade","data":{"e":"tra')
    assert letter.failed_us == 1700000000030000  # dead letters are stamped in replay time too
    assert metrics.registry.get_sample_value("surge_events_in_total", {"stage": "ingest"}) == 4


def test_paced_replay_follows_recorded_time(tmp_path: Path) -> None:
    capture = tmp_path / "btcusdt_paced.jsonl"
    trades = [envelope("btcusdt@trade", {"e": "trade", "E": 1, "s": "BTCUSDT", "t": i, "p": "1", "q": "1", "T": 1,
                                         "m": False}) for i in range(3)]
    capture.write_bytes(b"".join(f"{1700000000000000 + i * 100_000} ".encode() + t + b"\n"
                                 for i, t in enumerate(trades)))
    producer = FakeProducer()
    metrics = StageMetrics.create("ingest")
    settings = Settings(replay_speed="2", replay_exit=True)
    clock = LiveClock()
    publisher = SourceRunner("ingest", cast(Producer, producer), metrics,
                             make_tracer_provider("ingest", settings).get_tracer("t"), clock,
                             source_topic="replay")
    started = clock.now_us()
    assert run_replay(settings, capture, publisher=publisher, metrics=metrics,
                      quality=IngestQuality.create(metrics.registry), health=HealthState(), stop=threading.Event(),
                      wall=clock) == 0
    elapsed_s = (clock.now_us() - started) / 1e6
    assert 0.095 <= elapsed_s < 1.0  # 200 ms recorded at 2x
    got = [ev.trade.trade_id for _, _, v in producer.records for ev in market_pb2.TickBatch.FromString(v).events]
    assert got == [0, 1, 2]
