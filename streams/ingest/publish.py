"""Ingest output to the bus: TickBatches to ticks.v1, bad frames to dlq.v1, acknowledged before returning.

``Publisher.publish`` is synchronous (the simulator and replay loops call it inline); ``PublisherThread`` runs it
on a thread for the live source, so the asyncio loop keeps reading WebSockets (and answering pings) while the
broker acknowledges.
"""

from __future__ import annotations

import logging
import queue
import threading

from confluent_kafka import Producer
from opentelemetry.propagate import inject
from opentelemetry.trace import Tracer

from streams.ingest.core import IngestOutputs
from streams.runtime.clock import Clock
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import KafkaRecord, produce_all
from streams.runtime.observability import StageMetrics

STAGE = "ingest"
MAX_COALESCED = 5_000  # TickBatches per produce call at most (keeps one call's memory and latency bounded)

log = logging.getLogger("surge.ingest")


class Publisher:
    """Produces one ``IngestOutputs`` and updates the stage metrics once every record is acknowledged."""

    def __init__(self, producer: Producer, metrics: StageMetrics, tracer: Tracer, clock: Clock,
                 source_topic: str) -> None:
        self.producer = producer
        self.metrics = metrics
        self.tracer = tracer
        self.clock = clock
        self.source_topic = source_topic  # "sim", "ws:<url>" or "replay:<path>" in dead letters

    def publish(self, out: IngestOutputs, *, raw_events: int) -> None:
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
                    stage=STAGE, source_topic=self.source_topic, source_partition=-1, source_offset=-1,
                    key=bad.symbol.encode(), payload=bad.raw_bytes, error_type=bad.error_type, reason=bad.reason,
                    now_us=now_us))
            produce_all(self.producer, records)  # blocks until every record is acknowledged
        acked_us = self.clock.now_us()
        newest_us = 0
        for emit in out.emits:
            self.metrics.events_out.labels(STAGE, emit.topic.value).inc()
            if emit.exchange_us > 0:
                newest_us = max(newest_us, emit.exchange_us)
                self.metrics.e2e_latency_seconds.labels(STAGE).observe(max(0.0, (acked_us - emit.exchange_us) / 1e6))
        if newest_us:
            self.metrics.event_time_lag_seconds.labels(STAGE).set(max(0.0, (acked_us - newest_us) / 1e6))
        for bad in out.dead_letters:
            self.metrics.dlq.labels(STAGE, bad.error_type).inc()


class PublisherThread:
    """Publishes queued outputs in order on a background thread; a delivery failure stops it for good.

    ``backlog`` lets the producer side slow down instead of queueing without bound while the broker is away.
    """

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self._queue: queue.Queue[tuple[IngestOutputs, int] | None] = queue.Queue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingest-publisher", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def submit(self, out: IngestOutputs, raw_events: int) -> None:
        if out.emits or out.dead_letters:
            self._queue.put((out, raw_events))

    def close(self, timeout_s: float = 60.0) -> None:
        """Publish everything queued so far, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("publisher still busy after %.0fs; %d output(s) not acknowledged", timeout_s, self.backlog)

    def _run(self) -> None:
        closing = False
        while not closing:
            item = self._queue.get()
            if item is None:
                return
            out, raw_events = item
            # Everything queued meanwhile goes in the same produce call: one acknowledgement wait for all of it,
            # so a slow broker round trip does not cap the rate (order is kept).
            merged = IngestOutputs()
            merged.extend(out)
            while len(merged.emits) < MAX_COALESCED:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                merged.emits.extend(more[0].emits)
                merged.dead_letters.extend(more[0].dead_letters)
                raw_events += more[1]
            if self.error is not None:
                continue  # a failed publisher drops the rest; the stage exits and the supervisor restarts it
            try:
                self.publisher.publish(merged, raw_events=raw_events)
            except Exception as exc:
                log.exception("publishing to the bus failed; stopping")
                self.error = exc
