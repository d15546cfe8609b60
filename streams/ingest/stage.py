"""Ingest stage runner for ``--source sim``: simulator -> ingest core -> ticks.v1 (+ dlq.v1), paced by the clock."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Producer
from opentelemetry.propagate import inject

from schemas import common_pb2
from streams.ingest import core
from streams.ingest.simulator import MarketSimulator
from streams.runtime.clock import Clock, LiveClock
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import KafkaRecord, ensure_topics, produce_all, producer_config
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider, serve_health
from streams.runtime.runner import StopFlag
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

STAGE = "ingest"
LOOP_US = 5_000          # poll the simulator every ~5 ms: well inside the 20 ms micro-batch window
SIM_SOURCE_TOPIC = "sim"  # dead letters from the simulator have no Kafka origin

log = logging.getLogger("surge.ingest")


class IngestLoop:
    """The pieces of one ingest session; ``step`` is one poll -> process -> produce -> metrics round."""

    def __init__(self, settings: Settings, clock: Clock, producer: Producer, metrics: StageMetrics) -> None:
        self.clock = clock
        self.producer = producer
        self.metrics = metrics
        self.tracer = make_tracer_provider(STAGE, settings).get_tracer("surge.ingest")
        self.sim = MarketSimulator(settings.symbol_list, settings.sim_events_per_s, settings.sim_seed)
        # Batch ids restart per session; basing sequences on the session start keeps them unique across restarts.
        self.state = core.IngestState(
            venue=common_pb2.SIMULATOR, microbatch_ms=settings.microbatch_ms, sequence_base=clock.now_us())
        self.resyncs = 0

    def seed_books(self) -> None:
        """Anchor the simulator's grid and seed every book from its REST-style snapshot."""
        self.sim.advance(self.clock.now_us())
        out = core.IngestOutputs()
        for symbol, snapshot in self.sim.snapshots().items():
            out.extend(core.apply_snapshot(self.state, symbol, snapshot, self.clock))
        self.publish(out, raw_events=0)

    def step(self) -> int:
        """One round; returns the number of raw events handled."""
        now_us = self.clock.now_us()
        raw = self.sim.advance(now_us)
        started = time.perf_counter()
        out = core.process([(symbol, event, now_us) for symbol, event in raw], self.state, self.clock)
        for symbol in out.resync_requests:
            # The simulator answers a resync at once; a live source would fetch the REST snapshot here.
            self.resyncs += 1
            log.warning("resyncing %s from a fresh snapshot", symbol)
            out.extend(core.apply_snapshot(self.state, symbol, self.sim.snapshot(symbol), self.clock))
        self.metrics.processing_seconds.labels(STAGE).observe(time.perf_counter() - started)
        if raw:
            self.metrics.events_in.labels(STAGE).inc(len(raw))
            self.metrics.batch_size.labels(STAGE).observe(len(raw))
            newest_ms = max(int(event.get("E", 0) or 0) for _, event in raw)
            if newest_ms:
                self.metrics.event_time_lag_seconds.labels(STAGE).set(max(0.0, (now_us - newest_ms * 1000) / 1e6))
        self.publish(out, raw_events=len(raw))
        return len(raw)

    def drain(self) -> None:
        """On stop: emit every pending micro-batch."""
        self.publish(core.flush(self.state, self.clock, force=True), raw_events=0)

    def publish(self, out: core.IngestOutputs, *, raw_events: int) -> None:
        if not out.emits and not out.dead_letters:
            return
        now_us = self.clock.now_us()
        records: list[KafkaRecord] = []
        with self.tracer.start_as_current_span("ingest.batch") as span:
            span.set_attribute("surge.raw_events", raw_events)
            span.set_attribute("surge.emits", len(out.emits))
            carrier: dict[str, str] = {}
            inject(carrier)  # lets the features stage link its spans to this one
            headers: list[tuple[str, str | bytes | None]] | None = [(k, v.encode()) for k, v in carrier.items()] or None
            for emit in out.emits:
                records.append((emit.topic.value, emit.key, emit.value.SerializeToString(), headers))
            for bad in out.dead_letters:
                records.append(dead_letter(
                    stage=STAGE, source_topic=SIM_SOURCE_TOPIC, source_partition=-1, source_offset=-1,
                    key=bad.symbol.encode(), payload=bad.raw_bytes, error_type=bad.error_type, reason=bad.reason,
                    now_us=now_us))
            produce_all(self.producer, records)  # blocks until every record is acknowledged
        acked_us = self.clock.now_us()
        for emit in out.emits:
            self.metrics.events_out.labels(STAGE, emit.topic.value).inc()
            if emit.exchange_us > 0:
                self.metrics.e2e_latency_seconds.labels(STAGE).observe(max(0.0, (acked_us - emit.exchange_us) / 1e6))
        for bad in out.dead_letters:
            self.metrics.dlq.labels(STAGE, bad.error_type).inc()


def run(settings: Settings, clock: Clock | None = None, *, stop_event: threading.Event | None = None) -> int:
    """Run the simulator-fed ingest stage until SIGTERM/SIGINT, ``stop_event`` or ``sim_duration_s``; 0 = clean."""
    clock = clock or LiveClock()
    source = settings.source.lower()
    if source not in ("sim", "auto"):
        log.error("ingest source %r is not supported yet; only 'sim'", settings.source)
        return 2
    metrics = StageMetrics.create(STAGE)
    health = HealthState()
    stop_health = serve_health(settings.stage_port(STAGE), metrics.registry, health)
    stop = StopFlag()
    if stop_event is not None:
        stop.event = stop_event
    if threading.current_thread() is threading.main_thread():
        stop.install()  # signal handlers can only be installed from the main thread
    try:
        created = ensure_topics(settings)
        if created:
            log.info("created topics %s", created)
        producer = Producer(producer_config(settings, "surge-ingest-producer"))
        for topic in (Topic.TICKS, Topic.DLQ):
            # Fetch leaders before the simulator starts its clock, or the first produce stalls ~1 s on metadata.
            producer.list_topics(topic.value, timeout=10)
        loop = IngestLoop(settings, clock, producer, metrics)
        loop.seed_books()
        health.set_live(True)
        health.set_ready(True, phase="producing", source="sim")
        log.info("ingest from the simulator: %s at %.0f events/s (seed %d)", ",".join(settings.symbol_list),
                 settings.sim_events_per_s, settings.sim_seed)
        _loop(loop, settings, clock, stop.event)
        health.set_ready(False, phase="draining")
        loop.drain()
        producer.flush(30)
        log.info("ingest stopped cleanly after %d resync(s)", loop.resyncs)
        return 0
    finally:
        stop_health()


def _loop(loop: IngestLoop, settings: Settings, clock: Clock, stop: threading.Event) -> None:
    started_us = clock.now_us()
    end_us = started_us + round(settings.sim_duration_s * 1e6) if settings.sim_duration_s > 0 else None
    next_us = started_us
    while not stop.is_set():
        loop.step()
        loop.producer.poll(0)
        now_us = clock.now_us()
        if end_us is not None and now_us >= end_us:
            break
        # Fixed cadence; a slow round is not made up with a burst of rounds, the simulator hands over the
        # backlog in one bigger batch instead.
        next_us = max(next_us + LOOP_US, now_us)
        wait_s = (next_us - now_us) / 1e6
        if wait_s > 0:
            stop.wait(wait_s)

