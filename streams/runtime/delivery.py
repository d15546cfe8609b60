"""Pipelined delivery, shared by the stage runner (consumer-driven) and the source runner (ingest drivers).

A batch's outputs are handed to the idempotent producer without waiting; ``settle`` pops the oldest batches whose
outputs are all acknowledged, updates the output metrics, and returns their input offsets (empty for sources),
so a consumer commits only what is delivered. A batch whose delivery failed is never settled: ``DeliveryFailed``
ends the stage for a restart, and its input is read again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Producer

from streams.runtime.clock import Clock
from streams.runtime.core import Emit
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import DeliveryFailed, DeliveryTracker, KafkaRecord, produce_nowait
from streams.runtime.observability import StageMetrics

# Batches produced but not yet fully acknowledged; beyond this the caller waits, bounding memory and redelivery.
MAX_IN_FLIGHT = 16
# Bytes of an unproducible output kept in its dead letter, well below any broker's message limit.
REFUSED_PAYLOAD_HEAD = 64 * 1024

Headers = list[tuple[str, str | bytes | None]]


@dataclass(slots=True)
class InFlightBatch:
    """One batch's produced outputs and the input offsets to commit once all of them are acknowledged."""

    tracker: DeliveryTracker
    offsets: dict[tuple[str, int], int]
    emit_exchange_us: list[int] = field(default_factory=list)
    emit_topics: list[str] = field(default_factory=list)


class Delivery:
    def __init__(self, stage: str, metrics: StageMetrics, clock: Clock, *, max_in_flight: int = MAX_IN_FLIGHT,
                 lag_on_ack: bool = False) -> None:
        self.stage = stage
        self.metrics = metrics
        self.clock = clock
        self.max_in_flight = max_in_flight
        # A source has no consume time to measure event-time lag at, so it measures it when outputs are acked.
        self.lag_on_ack = lag_on_ack
        self.in_flight: deque[InFlightBatch] = deque()

    @property
    def full(self) -> bool:
        return len(self.in_flight) >= self.max_in_flight

    def send(self, producer: Producer, emits: Sequence[Emit], letters: Sequence[KafkaRecord],
             offsets: dict[tuple[str, int], int], headers: Headers | None = None) -> None:
        """Produce a batch's emits (with ``headers``) and dead letters; it stays in flight until settled."""
        records: list[KafkaRecord] = [(e.topic.value, e.key, e.value.SerializeToString(), headers) for e in emits]
        records.extend(letters)
        batch = InFlightBatch(DeliveryTracker(), offsets, [e.exchange_us for e in emits if e.exchange_us > 0],
                              [e.topic.value for e in emits])
        refused = produce_nowait(producer, records, batch.tracker)
        if refused:
            now_us = self.clock.now_us()
            produce_nowait(producer, [self.refused_letter(rec, why, now_us) for rec, why in refused], batch.tracker)
        self.in_flight.append(batch)

    def settle(self) -> dict[tuple[str, int], int]:
        """Pop the acknowledged prefix of batches; returns the highest input offset per partition among them."""
        offsets: dict[tuple[str, int], int] = {}
        acked_us = self.clock.now_us()
        newest_us = 0
        failed: InFlightBatch | None = None
        while self.in_flight and self.in_flight[0].tracker.pending <= 0:
            batch = self.in_flight.popleft()
            if batch.tracker.failures:
                failed = batch
                break
            for key, offset in batch.offsets.items():
                offsets[key] = max(offsets.get(key, -1), offset)
            for topic in batch.emit_topics:
                self.metrics.events_out.labels(self.stage, topic).inc()
            for exchange_us in batch.emit_exchange_us:
                newest_us = max(newest_us, exchange_us)
                self.metrics.e2e_latency_seconds.labels(self.stage).observe(max(0.0, (acked_us - exchange_us) / 1e6))
        if self.lag_on_ack and newest_us:
            self.metrics.event_time_lag_seconds.labels(self.stage).set(max(0.0, (acked_us - newest_us) / 1e6))
        if failed is not None:
            failures = failed.tracker.failures
            raise DeliveryFailed(f"{len(failures)} record(s) not delivered: {failures[:3]}")
        return offsets

    def refused_letter(self, record: KafkaRecord, reason: str, now_us: int) -> KafkaRecord:
        """A dead letter for an output the producer cannot send (too large): its head is kept, so the DLQ
        record itself fits, and the reason says how large it was."""
        topic, key, value, _ = record
        self.metrics.dlq.labels(self.stage, "output_too_large").inc()
        return dead_letter(stage=self.stage, source_topic=topic, source_partition=-1, source_offset=-1,
                           key=key if isinstance(key, bytes) else key.encode(), payload=value[:REFUSED_PAYLOAD_HEAD],
                           error_type="output_too_large", reason=f"{reason}; payload truncated to its first "
                           f"{min(len(value), REFUSED_PAYLOAD_HEAD)} bytes", now_us=now_us)
