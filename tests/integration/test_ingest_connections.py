"""The live feed's connection manager and REST client in-process against the loopback exchange (real sockets,
real WebSocket and HTTP; the bus is an in-memory producer, as the Kafka path is covered by test_ingest_live)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Producer

from schemas import market_pb2
from services.testing.fake_exchange.server import ExchangeThread, FakeExchange, FakeOptions, load_capture
from streams.ingest.quality import IngestQuality
from streams.runtime.clock import LiveClock
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner
from streams.venues.binance.feed import LiveFeed, LiveOptions, resolve_symbols
from streams.venues.binance.rest import BinanceRest
from streams.venues.binance.spec import venue_spec
from tests.conftest import free_port
from tests.unit.test_ingest_stage import FakeProducer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SPOT = "ws_messages/hftbacktest/spot"


def test_top_n_and_symbol_checks_use_the_exchange_rest_api(shared_data: Path) -> None:
    capture = load_capture([shared_data / SPOT / "btcusdt_20240808.gz", shared_data / SPOT / "ethusdt_20240808.gz"])
    port = free_port()
    server = ExchangeThread(lambda: FakeExchange(capture, FakeOptions(venue="spot")), "127.0.0.1", port)
    server.start()
    try:
        async def main() -> tuple[list[str], list[str], list[str]]:
            rest = BinanceRest(venue_spec("spot"), f"http://127.0.0.1:{port}", LiveClock())
            try:
                top = await resolve_symbols(rest, Settings(top_n=1))
                both = await resolve_symbols(rest, Settings(top_n=5))
                checked = await resolve_symbols(rest, Settings(symbols="ETHUSDT,NOPEUSDT,BTCUSDT"))
                return top, both, checked
            finally:
                await rest.aclose()

        top, both, checked = asyncio.run(main())
    finally:
        server.stop()
    assert top == ["BTCUSDT"]  # by quote volume in the capture
    assert both == ["BTCUSDT", "ETHUSDT"]
    assert checked == ["ETHUSDT", "BTCUSDT"]  # unknown symbols are left out (and logged)


def test_feed_retries_with_backoff_until_the_exchange_comes_up(shared_data: Path) -> None:
    capture = load_capture([shared_data / SPOT / "btcusdt_20240808.gz"])
    port = free_port()
    clock = LiveClock()
    producer = FakeProducer()
    metrics = StageMetrics.create("ingest")
    settings = Settings(ws_backoff_max_s=1.0)
    publisher = SourceRunner("ingest", cast(Producer, producer), metrics,
                             make_tracer_provider("ingest", settings).get_tracer("t"), clock, source_topic="ws")
    server = ExchangeThread(lambda: FakeExchange(capture, FakeOptions(venue="spot", speed=10, start_delay_s=0.2)),
                            "127.0.0.1", port)

    async def main() -> LiveFeed:
        rest = BinanceRest(venue_spec("spot"), f"http://127.0.0.1:{port}", clock)
        feed = LiveFeed(venue_spec("spot"), f"ws://127.0.0.1:{port}", ["BTCUSDT"], LiveOptions.from_settings(settings),
                        clock, rest=rest, publisher=publisher, metrics=metrics,
                        quality=IngestQuality.create(metrics.registry), health=HealthState())
        stop = asyncio.Event()
        running = asyncio.create_task(feed.run(stop))
        await asyncio.sleep(2.0)  # nothing listens yet: connects fail and back off
        server.start()
        for _ in range(200):
            st = feed.state.symbols["BTCUSDT"]
            if st.book.synced and st.trades > 100:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
        await rest.aclose()
        return feed

    try:
        feed = asyncio.run(main())
    finally:
        server.stop()
        publisher.close()
    failures = metrics.registry.get_sample_value("surge_ingest_ws_connect_failures_total",
                                                 {"stage": "ingest", "route": "/"})
    assert failures is not None and 2 <= failures <= 8  # 0.25..0.5, 0.5..1, then <= 1 s apart over 2 s
    st = feed.state.symbols["BTCUSDT"]
    assert st.book.synced and st.trades > 100 and st.trades_lost == 0
    assert publisher.backlog == 0 and not publisher.failed  # close() waited for every acknowledgement
    ids = [ev.trade.trade_id for _, _, v in producer.records for ev in market_pb2.TickBatch.FromString(v).events
           if ev.WhichOneof("event") == "trade"]
    assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) == st.trades
