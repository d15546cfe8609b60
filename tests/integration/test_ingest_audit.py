"""Book audits on the loopback exchange (issue 13 item 1): a diff with a silently corrupted quantity and a correct
sequence passes every sequence and bookTicker check; only the audit against a REST snapshot catches it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Producer

from services.testing.fake_exchange.server import ExchangeThread, FakeExchange, FakeOptions, load_capture
from streams.ingest import core
from streams.ingest.quality import IngestQuality
from streams.runtime.clock import LiveClock
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner
from streams.venues.binance.feed import LiveFeed, LiveOptions
from streams.venues.binance.rest import BinanceRest
from streams.venues.binance.spec import venue_spec
from tests.conftest import free_port
from tests.unit.test_ingest_stage import FakeProducer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CAPTURE = "ws_messages/hftbacktest/spot/btcusdt_20240808.gz"
SYMBOL = "BTCUSDT"


def run_feed(shared_data: Path, *, corrupt_every: int, audit_s: float, until: Any, max_s: float = 30.0,
             ) -> tuple[LiveFeed, FakeExchange, StageMetrics]:
    capture = load_capture([shared_data / CAPTURE])
    port = free_port()
    clock = LiveClock()
    producer = FakeProducer()
    metrics = StageMetrics.create("ingest")
    settings = Settings(book_audit_interval_s=audit_s)
    publisher = SourceRunner("ingest", cast(Producer, producer), metrics,
                             make_tracer_provider("ingest", settings).get_tracer("t"), clock, source_topic="ws")
    options = FakeOptions(venue="spot", start_delay_s=0.2, corrupt_qty_every=corrupt_every)
    server = ExchangeThread(lambda: FakeExchange(capture, options), "127.0.0.1", port)
    exchange = server.start()

    async def main() -> LiveFeed:
        rest = BinanceRest(venue_spec("spot"), f"http://127.0.0.1:{port}", clock)
        feed = LiveFeed(venue_spec("spot"), f"ws://127.0.0.1:{port}", [SYMBOL], LiveOptions.from_settings(settings),
                        clock, rest=rest, publisher=publisher, metrics=metrics,
                        quality=IngestQuality.create(metrics.registry), health=HealthState())
        stop = asyncio.Event()
        running = asyncio.create_task(feed.run(stop))
        for _ in range(int(max_s / 0.05)):
            if until(feed.state.symbols[SYMBOL]):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
        await rest.aclose()
        return feed

    try:
        feed = asyncio.run(main())
        feed.quality.export(feed.state)
    finally:
        server.stop()
        publisher.close()
    return feed, exchange, metrics


def test_audits_of_a_correct_stream_find_nothing(shared_data: Path) -> None:
    feed, _, metrics = run_feed(shared_data, corrupt_every=0, audit_s=0.5, until=lambda st: st.audits >= 5)
    st = feed.state.symbols[SYMBOL]
    assert st.audits >= 5 and st.audit_mismatches == 0, (st.audits, st.audits_inconclusive)
    assert core.RESYNC_AUDIT not in st.resyncs
    assert metrics.registry.get_sample_value("surge_ingest_book_audits_total", {"symbol": SYMBOL}) == st.audits


def test_only_the_audit_catches_a_silently_corrupted_quantity(shared_data: Path) -> None:
    feed, exchange, metrics = run_feed(shared_data, corrupt_every=10, audit_s=0.5,
                                       until=lambda st: st.audit_mismatches >= 2)
    st = feed.state.symbols[SYMBOL]
    assert exchange.stats["corrupted"], "the fake exchange corrupted nothing"
    assert st.audit_mismatches >= 2 and st.resyncs.get(core.RESYNC_AUDIT, 0) >= 2
    # The sequence and the best bid/ask were right all along: nothing else noticed.
    assert st.gaps == 0 and st.divergences == 0
    assert set(st.resyncs) == {core.RESYNC_AUDIT}
    assert metrics.registry.get_sample_value("surge_ingest_book_audit_mismatches_total",
                                             {"symbol": SYMBOL}) == st.audit_mismatches
    resynced = metrics.registry.get_sample_value("surge_ingest_resyncs_total",
                                                 {"symbol": SYMBOL, "reason": core.RESYNC_AUDIT})
    assert resynced is not None and resynced >= 2


def test_without_audits_the_corruption_goes_unnoticed(shared_data: Path) -> None:
    feed, exchange, _ = run_feed(shared_data, corrupt_every=10, audit_s=0.0, until=lambda st: False, max_s=6.0)
    st = feed.state.symbols[SYMBOL]
    assert exchange.stats["corrupted"] and st.book.synced and st.depth_updates > 20
    assert st.resyncs == {} and st.audits == 0
