"""The thin runner around a pure core: consume -> decode -> process -> produce -> await acks -> commit."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from opentelemetry import context as otel_context
from opentelemetry.propagate import inject
from opentelemetry.trace import Link, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.runtime.clock import Clock, LiveClock
from streams.runtime.core import FatalStageError, InRecord, Outputs, Reject, StageSpec
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import KafkaRecord, consumer_config, ensure_topics, produce_all, producer_config
from streams.runtime.observability import (
    HealthState,
    StageMetrics,
    make_tracer_provider,
    serve_health,
)
from streams.runtime.settings import Settings
from streams.runtime.topics import InvalidMessage, decode

PROPAGATOR = TraceContextTextMapPropagator()


def exchange_us_of(message: Any) -> int:
    ts = getattr(message, "ts", None)
    return int(ts.exchange_us) if ts is not None else 0


def headers_dict(msg: KafkaMessage) -> dict[str, str]:
    out: dict[str, str] = {}
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    for k, v in pairs:
        if isinstance(v, bytes):
            out[k] = v.decode("utf-8", "replace")
        elif isinstance(v, str):
            out[k] = v
    return out


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its batch, commits and exits."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


class StageRunner:
    """Runs one consumer-driven stage against the broker in ``settings``."""

    def __init__(self, spec: StageSpec[Any], settings: Settings, clock: Clock | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.clock: Clock = clock or LiveClock()
        self.log = logging.getLogger(f"surge.{spec.name}")
        self.metrics = StageMetrics.create(spec.name)
        self.health = HealthState()
        self.stop = StopFlag()
        self.tracer = make_tracer_provider(spec.name, settings).get_tracer(f"surge.{spec.name}")
        self.group_id = f"surge-{spec.name}"

    def run(self) -> int:
        settings = self.settings
        stop_health = serve_health(settings.stage_port(self.spec.name), self.metrics.registry, self.health,
                                   host=settings.metrics_host)
        self.stop.install()
        try:
            created = ensure_topics(settings)
            if created:
                self.log.info("created topics %s", created)
            producer = Producer(producer_config(settings, f"{self.group_id}-producer"))
            consumer = Consumer(consumer_config(settings, self.group_id))
            consumer.subscribe(
                [t.value for t in self.spec.input_topics],
                on_assign=self._on_assign,
                on_revoke=lambda c, parts: self.log.info("revoked %d partition(s)", len(parts)),
            )
            state = self.spec.make_state()
            self.health.set_live(True)
            self.log.info("stage %s consuming %s", self.spec.name, [t.value for t in self.spec.input_topics])
            try:
                self._loop(consumer, producer, state)
            except FatalStageError as exc:
                self.log.error("fatal: %s; exiting without committing the batch, to be restarted", exc)
                return 1
            finally:
                self.health.set_ready(False, phase="draining")
                producer.flush(30)
                consumer.close()  # leaves the group at once so a replacement gets the partitions quickly
                if self.spec.on_close is not None:
                    self.spec.on_close(state)
            self.log.info("stage %s stopped cleanly", self.spec.name)
            return 0
        finally:
            stop_health()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.restarts.labels(self.spec.name).inc()
        self.health.set_ready(True, phase="consuming")
        self.log.info("assigned %d partition(s)", len(partitions))

    def _loop(self, consumer: Consumer, producer: Producer, state: Any) -> None:
        while not self.stop.stopped:
            msgs = self._next_batch(consumer)
            producer.poll(0)
            if msgs:
                self.handle_batch(consumer, producer, state, msgs)

    def _next_batch(self, consumer: Consumer) -> list[KafkaMessage]:
        """Wait for a first record, then take what is already queued, then fill for at most the fill window.

        ``consume(n, timeout)`` alone would hold every batch for the whole timeout unless n records arrive, which
        adds that timeout to every hop's latency.
        """
        batch_max = self.spec.batch_max or self.settings.batch_max
        fill_ms = self.spec.batch_timeout_ms if self.spec.batch_timeout_ms is not None else \
            self.settings.batch_timeout_ms
        first = consumer.poll(self.settings.poll_timeout_ms / 1000.0)
        if first is None:
            return []
        msgs = [first]
        if batch_max > 1:
            msgs.extend(consumer.consume(num_messages=batch_max - 1, timeout=0))
        if fill_ms > 0 and len(msgs) < batch_max:
            deadline = time.monotonic() + fill_ms / 1000.0
            while len(msgs) < batch_max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                msgs.extend(consumer.consume(num_messages=batch_max - len(msgs), timeout=remaining))
        return msgs

    def handle_batch(
        self, consumer: Consumer, producer: Producer, state: Any, msgs: list[KafkaMessage]
    ) -> None:
        name = self.spec.name
        now_us = self.clock.now_us()
        records: list[InRecord[Any]] = []
        kafka_out: list[KafkaRecord] = []
        offsets: dict[tuple[str, int], int] = {}
        parent_ctx = None
        links: list[Link] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.log.warning("consumer error: %s", err)
                    if err.fatal():
                        raise RuntimeError(f"fatal consumer error: {err}")
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            offsets[(topic, partition)] = max(offsets.get((topic, partition), -1), offset)
            headers = headers_dict(msg)
            ctx = PROPAGATOR.extract(headers) if "traceparent" in headers else None
            if ctx is not None:
                if parent_ctx is None:
                    parent_ctx = ctx
                else:
                    span_ctx = get_current_span(ctx).get_span_context()
                    if len(links) < 32:
                        links.append(Link(span_ctx))
            key = msg.key()
            try:
                value = decode(topic, key, msg.value())
            except InvalidMessage as exc:
                kafka_out.append(dead_letter(
                    stage=name, source_topic=topic, source_partition=partition, source_offset=offset,
                    key=key, payload=msg.value(), error_type=exc.error_type, reason=exc.reason, now_us=now_us))
                self.metrics.dlq.labels(name, exc.error_type).inc()
                continue
            records.append(InRecord(value=value, key=(key or b"").decode(), topic=topic, partition=partition,
                                    offset=offset))
        if not offsets:
            return
        self.metrics.events_in.labels(name).inc(len(records))
        self.metrics.batch_size.labels(name).observe(len(records))
        newest = max((exchange_us_of(r.value) for r in records), default=0)
        if newest:
            self.metrics.event_time_lag_seconds.labels(name).set(max(0.0, (now_us - newest) / 1e6))

        token = otel_context.attach(parent_ctx) if parent_ctx is not None else None
        try:
            with self.tracer.start_as_current_span(f"{name}.batch", links=links) as span:
                span.set_attribute("surge.records", len(records))
                started = time.perf_counter()
                outputs = self._process_isolating_failures(records, state)
                self.metrics.processing_seconds.labels(name).observe(time.perf_counter() - started)
                span.set_attribute("surge.emits", len(outputs.emits))
                carrier: dict[str, str] = {}
                inject(carrier)
                trace_headers: list[tuple[str, str | bytes | None]] = [(k, v.encode()) for k, v in carrier.items()]
        finally:
            if token is not None:
                otel_context.detach(token)

        for emit in outputs.emits:
            kafka_out.append((emit.topic.value, emit.key, emit.value.SerializeToString(), trace_headers))
        for rej in outputs.rejects:
            rec = rej.record
            kafka_out.append(dead_letter(
                stage=name, source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
                key=rec.key.encode(), payload=rec.value.SerializeToString(), error_type=rej.error_type,
                reason=rej.reason, now_us=now_us))
            self.metrics.dlq.labels(name, rej.error_type).inc()

        produce_all(producer, kafka_out)
        acked_us = self.clock.now_us()
        for emit in outputs.emits:
            self.metrics.events_out.labels(name, emit.topic.value).inc()
            if emit.exchange_us > 0:
                self.metrics.e2e_latency_seconds.labels(name).observe(max(0.0, (acked_us - emit.exchange_us) / 1e6))
        self._commit(consumer, offsets)

    def _process_isolating_failures(self, records: Sequence[InRecord[Any]], state: Any) -> Outputs:
        """Run the core on the batch; if it raises, retry record by record and dead-letter the culprits."""
        try:
            return self.spec.process(records, state, self.clock)
        except FatalStageError:
            raise
        except Exception:
            self.log.exception("process() failed on a batch of %d; isolating the bad record(s)", len(records))
        merged = Outputs()
        for rec in records:
            try:
                merged.extend(self.spec.process([rec], state, self.clock))
            except FatalStageError:
                raise
            except Exception as exc:
                merged.rejects.append(Reject(rec, "processing_error", f"{type(exc).__name__}: {exc}"))
        return merged

    def _commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        parts = [TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()]
        try:
            consumer.commit(offsets=parts, asynchronous=False)
        except Exception as exc:
            # Usually a rebalance: the records will be delivered again and de-duplicated by id downstream.
            self.metrics.commit_failures.labels(self.spec.name).inc()
            self.log.warning("offset commit failed (%s); records will be redelivered", exc)
