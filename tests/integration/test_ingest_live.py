"""The real ingest stage process (`surge stage ingest --source live`) against the loopback Binance replaying real
captures, publishing to the real Tansu broker.

Each test starts `surge fake-exchange` on the captures in ../shared/data/binance/ws_messages/hftbacktest, points
SURGE_BINANCE_* at it, lets the whole capture play (at 20x), stops ingest with SIGTERM and reads back ticks.v1 and
dlq.v1 of that session. Expectations come from the capture itself: every trade id recorded after the capture's
REST snapshot line, and every recorded bookTicker (update id -> top of book).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from schemas import common_pb2, dlq_pb2, market_pb2
from services.testing.fake_exchange.server import load_capture
from streams.runtime.clock import LiveClock
from streams.runtime.kafka import consumer_config
from streams.runtime.topics import Topic
from tests.conftest import REPO_ROOT, free_port
from tests.integration.stack import StackProcesses, http_ok, start_infrastructure, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SPEED = "20"
HFT = "ws_messages/hftbacktest"
# Malformed variants the fake exchange sends -> the dead-letter class the core must give them.
EXPECTED_ERROR = {
    ("truncated", None): "malformed_json",
    ("not_object", None): "malformed_json",
    ("unknown_event", None): "unknown_event_type",
    ("bad_value", "trade"): "invalid_price",
    ("bad_value", "bookTicker"): "invalid_price",
    ("bad_value", "depth"): "invalid_size",
}


@pytest.fixture(scope="module")
def stack(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcesses]:
    yield from start_infrastructure(tmp_path_factory.mktemp("ingest-live"))


@dataclass
class Expected:
    """What the capture says: trade ids after the snapshot line and bookTickers by update id, per symbol."""

    trades: dict[str, list[int]] = field(default_factory=dict)
    tickers: dict[str, dict[int, tuple[float, float, float, float]]] = field(default_factory=dict)


def expected_from(captures: list[Path]) -> Expected:
    capture = load_capture(captures)
    out = Expected()
    for event in capture.events:
        data = event.data
        if event.kind == "trade":
            out.trades.setdefault(event.symbol, []).append(data["t"])
        elif event.kind == "bookTicker":
            out.tickers.setdefault(event.symbol, {})[data["u"]] = (
                float(data["b"]), float(data["B"]), float(data["a"]), float(data["A"]))
    return out


@dataclass
class Session:
    venue: str
    port: int
    started_us: int
    fake: subprocess.Popen[bytes]
    ingest: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.port}/fake/status", timeout=5).json()
        return result


@dataclass
class Outcome:
    session: Session
    metrics: dict[str, float]        # ingest's final metrics, {"name{labels}": value}
    health: dict[str, str]           # ingest's /healthz
    fake: dict[str, Any]             # the fake exchange's final /fake/status


def run_session(stack: StackProcesses, name: str, venue: str, symbols: str, captures: list[Path],
                *fake_args: str, env: dict[str, str] | None = None, speed: str = SPEED) -> Outcome:
    """Start the fake exchange and the ingest stage, play the whole capture, stop ingest cleanly."""
    port = free_port()
    argv = [sys.executable, "-m", "services.cli", "fake-exchange", "--venue", venue, "--port", str(port),
            "--speed", speed, *fake_args]
    for capture in captures:
        argv += ["--capture", str(capture)]
    fake = stack.start(f"fake-{name}", argv)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/fake/status") or fake.poll() is not None, 60,
             "fake exchange")
    assert fake.poll() is None, stack.log_path(f"fake-{name}").read_text()[-3000:]
    base_ws, base_rest = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    env = {**stack.env, "SURGE_BINANCE_WS_URL": base_ws, "SURGE_BINANCE_REST_URL": base_rest,
           "SURGE_BINANCE_FUTURES_WS_URL": base_ws, "SURGE_BINANCE_FUTURES_REST_URL": base_rest, **(env or {})}
    started_us = LiveClock().now_us()
    log = stack.log_path(f"ingest-{name}")
    with log.open("ab") as out:
        ingest = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "stage", "ingest", "--source", "live", "--venue", venue,
             "--symbols", symbols], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL)
    stack.procs[f"ingest-{name}"] = ingest
    metrics_url = f"http://127.0.0.1:{stack.settings.stage_port('ingest')}"
    session = Session(venue, port, started_us, fake, ingest, metrics_url, log)
    wait_for(lambda: http_ok(f"{metrics_url}/healthz") or ingest.poll() is not None, 30, "ingest health")
    assert ingest.poll() is None, log.read_text()[-3000:]
    wait_for(lambda: bool(session.status()["done"]), 60, "the capture to finish playing", interval_s=0.5)
    # Let ingest settle: same frame count for a second (snapshots and backfills answered meanwhile).
    previous = -1.0
    for _ in range(20):
        count = scrape(metrics_url).get('surge_events_in_total{stage="ingest"}', 0.0)
        if count == previous:
            break
        previous = count
        time.sleep(1.0)
    metrics = scrape(metrics_url)
    health: dict[str, str] = httpx.get(f"{metrics_url}/healthz", timeout=5).json()
    fake_status = session.status()
    ingest.send_signal(signal.SIGTERM)
    assert ingest.wait(30) == 0, log.read_text()[-3000:]
    stack.procs.pop(f"ingest-{name}")
    stack.stop(f"fake-{name}")
    return Outcome(session, metrics, health, fake_status)


def scrape(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def metric(metrics: dict[str, float], name: str, **labels: str) -> float:
    key = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return metrics.get(key, 0.0)


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum over every series of ``name`` that carries ``labels`` (other labels free)."""
    total = 0.0
    for key, value in metrics.items():
        series, _, rest = key.partition("{")
        if series == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def read_topic(stack: StackProcesses, topic: Topic, idle_s: float = 3.0) -> list[bytes]:
    conf = consumer_config(stack.settings, f"test-ingest-{topic.value}-{time.monotonic_ns()}")
    consumer = Consumer(conf)
    values: list[bytes] = []
    try:
        partitions = consumer.list_topics(topic.value, timeout=10).topics[topic.value].partitions
        consumer.assign([TopicPartition(topic.value, p, OFFSET_BEGINNING) for p in partitions])
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    continue
                last = time.monotonic()
                values.append(msg.value() or b"")
    finally:
        consumer.close()
    return values


def session_batches(stack: StackProcesses, venue: str, started_us: int) -> list[market_pb2.TickBatch]:
    """The TickBatches of an ingest session started at ``started_us``: their sequences are based on it."""
    batches = [market_pb2.TickBatch.FromString(v) for v in read_topic(stack, Topic.TICKS)]
    prefix = f"binance_{venue}:"
    mine = [b for b in batches if b.sequence > started_us and b.batch_id.startswith(prefix)]
    return sorted(mine, key=lambda b: (b.symbol, b.sequence))


def session_dead_letters(stack: StackProcesses, session: Session) -> list[dlq_pb2.DeadLetter]:
    letters = [dlq_pb2.DeadLetter.FromString(v) for v in read_topic(stack, Topic.DLQ)]
    return [d for d in letters if d.stage == "ingest" and d.failed_us >= session.started_us]


# A BookSnapshot is published per micro-batch, so which update ids it lands on depends on timing; a run
# usually yields 18-40 that coincide with a recorded bookTicker. Every one of them must match exactly; the
# stage's own per-bookTicker check (surge_ingest_book_ticker_*) covers the rest.
MIN_BOOK_MATCHES = 5


def check_books(batches: list[market_pb2.TickBatch], expected: Expected, symbol: str) -> int:
    """Every BookSnapshot is uncrossed and equals the recorded bookTicker at the same update id; returns matches."""
    tickers = expected.tickers[symbol]
    matched = 0
    for batch in batches:
        if batch.symbol != symbol:
            continue
        for event in batch.events:
            if event.WhichOneof("event") != "book":
                continue
            snap = event.book
            assert snap.bids[0].price < snap.asks[0].price, f"crossed book at update {snap.last_update_id}"
            recorded = tickers.get(snap.last_update_id)
            if recorded is not None:
                top = (snap.bids[0].price, snap.bids[0].qty, snap.asks[0].price, snap.asks[0].qty)
                assert top == recorded, f"book top {top} != bookTicker {recorded} at {snap.last_update_id}"
                matched += 1
    return matched


def trade_ids(batches: list[market_pb2.TickBatch], symbol: str) -> list[int]:
    return [ev.trade.trade_id for b in batches if b.symbol == symbol for ev in b.events
            if ev.WhichOneof("event") == "trade"]


def test_usdm_books_track_the_capture_and_one_injected_gap_costs_one_resync(
        shared_data: Path, stack: StackProcesses) -> None:
    captures = [shared_data / HFT / "usdm/btcusdt_20240718.gz"]
    expected = expected_from(captures)
    # 3,320 diffs follow the snapshot line: dropping every 2,000th from the stream makes exactly one gap.
    run = run_session(stack, "gap", "usdm", "BTCUSDT", captures, "--inject-gap-every", "2000")
    metrics = run.metrics
    assert len(run.fake["gaps"]) == 1
    assert metric(metrics, "surge_ingest_sequence_gaps_total", symbol="BTCUSDT") == 1
    assert metric_sum(metrics, "surge_ingest_resyncs_total", symbol="BTCUSDT") == 1
    assert metric(metrics, "surge_ingest_resyncs_total", symbol="BTCUSDT", reason="gap") == 1
    assert metric(metrics, "surge_ingest_snapshots_total", symbol="BTCUSDT") == 2  # the first sync + the resync
    assert run.fake["snapshots_served"] == {"BTCUSDT": 2}
    assert metric(metrics, "surge_ingest_book_ticker_divergence_total", symbol="BTCUSDT") == 0
    assert metric(metrics, "surge_ingest_book_ticker_checks_total", symbol="BTCUSDT") > 100
    applied = metric(metrics, "surge_ingest_depth_updates_total", symbol="BTCUSDT")
    assert metric(metrics, "surge_ingest_sequence_gap_ratio", symbol="BTCUSDT") == pytest.approx(1 / (applied + 1))
    assert run.health["books_synced"] == "1" and run.health["quarantined"] == ""
    assert run.health["connections"] == "2/2"  # USD-M: /public (depth, bookTicker) and /market (trade, markPrice)
    batches = session_batches(stack, run.session.venue, run.session.started_us)
    assert check_books(batches, expected, "BTCUSDT") >= MIN_BOOK_MATCHES
    # No reconnect happened, so every trade arrived in order: exactly the capture's ids.
    assert trade_ids(batches, "BTCUSDT") == expected.trades["BTCUSDT"]
    assert len([b for b in batches if common_pb2.SEQUENCE_GAP in b.quality_flags]) == 1
    assert session_dead_letters(stack, run.session) == []


def test_dropped_connections_lose_and_duplicate_no_trade(shared_data: Path, stack: StackProcesses) -> None:
    captures = [shared_data / HFT / "spot/btcusdt_20240808.gz"]
    expected = expected_from(captures)
    run = run_session(stack, "drop", "spot", "BTCUSDT", captures, "--disconnect-after", "6")
    metrics = run.metrics
    reconnects = metric(metrics, "surge_ingest_ws_connects_total", stage="ingest", route="/", kind="reconnect")
    assert reconnects >= 2
    assert reconnects == run.fake["disconnects"]
    assert metric(metrics, "surge_ingest_ws_disconnects_total", stage="ingest", route="/") == reconnects
    batches = session_batches(stack, run.session.venue, run.session.started_us)
    assert trade_ids(batches, "BTCUSDT") == expected.trades["BTCUSDT"]  # all of them, once each, in order
    assert metric(metrics, "surge_ingest_trades_lost_total", symbol="BTCUSDT") == 0
    assert metric(metrics, "surge_ingest_message_loss_ratio", symbol="BTCUSDT") == 0
    assert metric(metrics, "surge_ingest_trades_backfilled_total", symbol="BTCUSDT") > 0
    # Each reconnect re-snapshots the book once (the last one may come after the capture's last diff).
    resyncs = metric(metrics, "surge_ingest_resyncs_total", symbol="BTCUSDT", reason="reconnect")
    assert reconnects - 1 <= resyncs <= reconnects
    assert metric_sum(metrics, "surge_ingest_resyncs_total", symbol="BTCUSDT") == resyncs
    assert check_books(batches, expected, "BTCUSDT") >= MIN_BOOK_MATCHES
    assert session_dead_letters(stack, run.session) == []


def test_malformed_frames_are_dead_lettered_and_only_their_symbol_is_quarantined(
        shared_data: Path, stack: StackProcesses) -> None:
    captures = [shared_data / HFT / "spot/btcusdt_20240808.gz", shared_data / HFT / "spot/ethusdt_20240808.gz"]
    expected = expected_from(captures)
    run = run_session(stack, "malformed", "spot", "BTCUSDT,ETHUSDT", captures,
                      "--malformed-every", "400", "--malformed-symbols", "BTCUSDT")
    metrics = run.metrics
    sent = run.fake["malformed"]
    assert len(sent) > 50
    letters = session_dead_letters(stack, run.session)
    # Every malformed frame sent is in dlq.v1, byte for byte, with the right class; nothing else is.
    assert Counter(d.payload for d in letters) == Counter(m["payload"].encode() for m in sent)
    error_of = {d.payload: d.error_type for d in letters}
    for m in sent:
        key = (m["variant"], m["kind"] if m["variant"] == "bad_value" else None)
        assert error_of[m["payload"].encode()] == EXPECTED_ERROR[key], m
    assert {d.source_topic for d in letters} == {f"ws:ws://127.0.0.1:{run.session.port}"}
    assert {d.key for d in letters} == {b"BTCUSDT"}  # even truncated frames are attributed by stream name
    # The connection stayed up through every bad frame.
    assert metric(metrics, "surge_ingest_ws_connects_total", stage="ingest", route="/", kind="first") == 1
    assert metric(metrics, "surge_ingest_ws_connects_total", stage="ingest", route="/", kind="reconnect") == 0
    # BTCUSDT kept failing: quarantined and shown by health; ETHUSDT undisturbed.
    assert run.health["quarantined"] == "BTCUSDT"
    assert metric(metrics, "surge_ingest_quarantined_symbols") == 1
    assert metric(metrics, "surge_ingest_bad_inputs_total", symbol="BTCUSDT") == len(sent)
    assert metric(metrics, "surge_ingest_resyncs_total", symbol="BTCUSDT", reason="bad_depth") >= 1
    assert metric_sum(metrics, "surge_ingest_resyncs_total", symbol="ETHUSDT") == 0
    assert metric(metrics, "surge_ingest_snapshots_total", symbol="ETHUSDT") == 1
    batches = session_batches(stack, run.session.venue, run.session.started_us)
    assert check_books(batches, expected, "ETHUSDT") >= MIN_BOOK_MATCHES
    for symbol in ("BTCUSDT", "ETHUSDT"):  # extra bad frames never cost a good trade
        assert trade_ids(batches, symbol) == expected.trades[symbol]
    assert [b for b in batches if b.symbol == "BTCUSDT" and common_pb2.QUARANTINED in b.quality_flags]
    assert not [b for b in batches if b.symbol == "ETHUSDT" and common_pb2.QUARANTINED in b.quality_flags]


def test_rollover_and_duplicates_are_seamless(shared_data: Path, stack: StackProcesses) -> None:
    """Connections replaced before their (here 10 s) lifetime and every 50th frame sent twice: no resync, no
    reconnect, and still exactly the capture's trades."""
    captures = [shared_data / HFT / "usdm/btcusdt_20240718.gz"]  # 3 min recorded: 18 s at 10x
    expected = expected_from(captures)
    run = run_session(stack, "rollover", "usdm", "BTCUSDT", captures, "--inject-duplicates", "50",
                      env={"SURGE_WS_ROLLOVER_S": "10"}, speed="10")
    metrics = run.metrics
    assert run.fake["duplicates"] > 100
    for route in ("/public", "/market"):
        assert metric(metrics, "surge_ingest_ws_rollovers_total", stage="ingest", route=route) >= 1
        assert metric(metrics, "surge_ingest_ws_connects_total", stage="ingest", route=route, kind="reconnect") == 0
    assert metric_sum(metrics, "surge_ingest_resyncs_total", symbol="BTCUSDT") == 0
    assert metric(metrics, "surge_ingest_snapshots_total", symbol="BTCUSDT") == 1
    assert metric(metrics, "surge_ingest_duplicates_total", symbol="BTCUSDT") >= run.fake["duplicates"]
    batches = session_batches(stack, run.session.venue, run.session.started_us)
    assert trade_ids(batches, "BTCUSDT") == expected.trades["BTCUSDT"]
    assert check_books(batches, expected, "BTCUSDT") >= MIN_BOOK_MATCHES
