"""The source runner: one delivery path for source-driven stages (ingest), failures that stop the driver."""

from __future__ import annotations

import socket
import time

import pytest
from confluent_kafka import Producer

from schemas import market_pb2
from streams.runtime.clock import ManualClock
from streams.runtime.core import Emit
from streams.runtime.observability import StageMetrics, make_tracer_provider
from streams.runtime.settings import Settings
from streams.runtime.source import SourceReject, SourceRunner
from streams.runtime.topics import Topic

pytestmark = pytest.mark.unit


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_undeliverable_batch_marks_the_runner_failed_and_is_never_settled() -> None:
    """Tried: a real producer whose broker never answers (nothing listens), with a 300 ms delivery timeout.
    The submit returns at once (pipelined), the failure surfaces through ``service``, and the batch is not
    counted as delivered."""
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{unused_port()}", "message.timeout.ms": 300,
                         "enable.idempotence": True, "acks": "all"})
    metrics = StageMetrics.create("ingest")
    runner = SourceRunner("ingest", producer, metrics, make_tracer_provider("ingest", Settings()).get_tracer("t"),
                          ManualClock(1_000), source_topic="sim")
    batch = market_pb2.TickBatch(batch_id="b1", symbol="BTCUSDT")
    runner.submit([Emit(Topic.TICKS, "BTCUSDT", batch, 900)],
                  [SourceReject("BTCUSDT", b"{bad", "malformed_json", "Expecting value")], raw_events=2)
    assert (runner.backlog, runner.failed) == (1, False)
    deadline = time.monotonic() + 10
    while not runner.failed and time.monotonic() < deadline:
        runner.service(0.05)
    assert runner.failed and "timed out" in str(runner.error)
    assert metrics.registry.get_sample_value("surge_events_out_total",
                                             {"stage": "ingest", "topic": "ticks.v1"}) is None
    assert metrics.registry.get_sample_value("surge_dlq_total",
                                             {"stage": "ingest", "error_type": "malformed_json"}) == 1
    assert runner.close(timeout_s=0.1) == 0  # nothing left in flight: the failed batch was taken out, not retried
