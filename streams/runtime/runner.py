"""The thin runner around a pure core: consume -> decode -> process -> produce -> (acks) -> commit.

Batches are pipelined: while batch N's outputs wait for the broker's acknowledgement, batch N+1 is consumed and
processed. Offsets are still committed only after every output of a batch (and of every batch before it) is
acknowledged, so delivery stays at-least-once; what changes is that a broker round trip no longer sits on
every hop's critical path.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from opentelemetry import context as otel_context
from opentelemetry.propagate import inject
from opentelemetry.trace import Link, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Gauge

from streams.runtime.clock import Clock, LiveClock
from streams.runtime.core import (
    DownstreamUnavailable,
    FatalStageError,
    InRecord,
    Outputs,
    Reject,
    StageContext,
    StageSpec,
)
from streams.runtime.delivery import Delivery, InFlightBatch
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import (
    DeliveryFailed,
    KafkaRecord,
    consumer_config,
    ensure_topics,
    producer_config,
)
from streams.runtime.observability import (
    HealthState,
    StageMetrics,
    make_tracer_provider,
    serve_health,
)
from streams.runtime.settings import Settings
from streams.runtime.topics import InvalidMessage, decode

PROPAGATOR = TraceContextTextMapPropagator()
# While outputs await acks, the consumer is polled this briefly so acks are noticed (and committed) promptly.
SETTLE_POLL_S = 0.002
# A flush that finds its store down is retried after this, doubling up to Settings.sink_backoff_max_s.
BACKOFF_START_S = 0.1


class StopDuringBackpressure(Exception):
    """SIGTERM arrived while a flush waited for its store; the batch is left uncommitted."""


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
        self.health = HealthState(stall_after_s=settings.stall_readiness_s)
        self.stop = StopFlag()
        self.tracer = make_tracer_provider(spec.name, settings).get_tracer(f"surge.{spec.name}")
        self.group_id = f"surge-{spec.name}"
        self.delivery = Delivery(spec.name, self.metrics, self.clock)
        self.fatal_client_error: KafkaError | None = None
        # Records polled while the consumer is paused for backpressure; they lead the next batch, never dropped.
        self.stash: list[KafkaMessage] = []
        self.backpressure_active = Gauge("surge_backpressure_active", "1 while the stage's store is down and its "
                                          "consumer paused", ["stage"], registry=self.metrics.registry)

    @property
    def in_flight(self) -> deque[InFlightBatch]:
        return self.delivery.in_flight

    def run(self) -> int:
        settings = self.settings
        stop_health = serve_health(settings.stage_port(self.spec.name), self.metrics.registry, self.health,
                                   host=settings.metrics_host)
        self.stop.install()
        try:
            created = ensure_topics(settings)
            if created:
                self.log.info("created topics %s", created)
            producer = Producer({**producer_config(settings, f"{self.group_id}-producer"),
                                 "error_cb": self._on_client_error})
            conf = {**consumer_config(settings, self.group_id), "on_commit": self._on_commit}
            if self.spec.fetch_wait_max_ms is not None:
                conf["fetch.wait.max.ms"] = self.spec.fetch_wait_max_ms
            consumer = Consumer(conf)
            consumer.subscribe(
                [t.value for t in self.spec.input_topics],
                on_assign=self._on_assign,
                on_revoke=lambda c, parts: self._on_revoke(c, producer, parts),
            )
            context = StageContext(self.spec.name, settings, self.clock, self.metrics.registry, self.health)
            state = self.spec.make_state(context)
            for hook in context.start_hooks:
                hook()
            self.health.set_live(True)
            self.log.info("stage %s consuming %s", self.spec.name, [t.value for t in self.spec.input_topics])
            try:
                self._loop(consumer, producer, state)
            except StopDuringBackpressure:
                self.log.warning("stopped while the store was down: the unflushed batch is not committed and will "
                                 "be read again")
            except FatalStageError as exc:
                self.log.error("fatal: %s; exiting without committing the batch, to be restarted", exc)
                return 1
            finally:
                self.health.set_ready(False, phase="draining")
                producer.flush(30)
                try:
                    self._settle(consumer, asynchronous=False)
                except DeliveryFailed as exc:
                    self.log.error("not committing undelivered outputs: %s", exc)
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

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            self._commit_failed(err)

    def _commit_failed(self, cause: object) -> None:
        # Usually a rebalance: the records will be delivered again and de-duplicated by id downstream.
        self.metrics.commit_failures.labels(self.spec.name).inc()
        self.log.warning("offset commit failed (%s); records will be redelivered", cause)

    def _on_revoke(self, consumer: Consumer, producer: Producer, partitions: list[TopicPartition]) -> None:
        # Commit what is acknowledged while the partitions are still ours, so the next owner re-reads little.
        producer.flush(10)
        try:
            self._settle(consumer, asynchronous=False)
        except DeliveryFailed:
            self.log.exception("outputs lost during a rebalance; their inputs will be redelivered")
        self.log.info("revoked %d partition(s)", len(partitions))

    def _on_client_error(self, err: KafkaError) -> None:
        # e.g. a fenced idempotent producer (a broker that lost its state): nothing more can be delivered.
        if err.fatal():
            self.fatal_client_error = err

    def _loop(self, consumer: Consumer, producer: Producer, state: Any) -> None:
        while not self.stop.stopped:
            msgs = self._next_batch(consumer)
            if msgs:
                self.handle_batch(consumer, producer, state, msgs)
            producer.poll(0)
            self._settle(consumer)
            if not self.delivery.full:
                self.health.beat()  # a batch done or an idle poll: the loop is making progress
            warn_at = time.monotonic() + 5.0
            while self.delivery.full and not self.stop.stopped:
                producer.poll(0.01)
                self._settle(consumer)
                if time.monotonic() >= warn_at:
                    self.log.warning("%d batches await acknowledgement; broker may be down", len(self.in_flight))
                    warn_at = time.monotonic() + 5.0
            if self.fatal_client_error is not None:
                raise FatalStageError(f"fatal Kafka client error: {self.fatal_client_error}")

    def _settle(self, consumer: Consumer, *, asynchronous: bool = True) -> None:
        """Commit the offsets of the oldest batches whose outputs are all acknowledged (see ``Delivery``)."""
        offsets = self.delivery.settle()
        if offsets:
            self._commit(consumer, offsets, asynchronous=asynchronous)

    def _next_batch(self, consumer: Consumer) -> list[KafkaMessage]:
        """Wait for a first record, then take what is already queued, then fill for at most the fill window.

        ``consume(n, timeout)`` alone would hold every batch for the whole timeout unless n records arrive, which
        adds that timeout to every hop's latency.
        """
        batch_max = self.spec.batch_max or self.settings.batch_max
        fill_ms = self.spec.batch_timeout_ms if self.spec.batch_timeout_ms is not None else \
            self.settings.batch_timeout_ms
        if self.stash:
            msgs, self.stash = self.stash, []
            return msgs
        timeout_s = SETTLE_POLL_S if self.in_flight else self.settings.poll_timeout_ms / 1000.0
        first = consumer.poll(timeout_s)
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

    def handle_batch(self, consumer: Consumer, producer: Producer, state: Any, msgs: list[KafkaMessage]) -> None:
        """Decode, process and produce one batch; it stays in flight until ``_settle`` sees it acknowledged."""
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
                if self.spec.flush is not None:
                    outputs.rejects.extend(self._flush_with_backpressure(consumer, producer, state))
                span.set_attribute("surge.emits", len(outputs.emits))
                carrier: dict[str, str] = {}
                inject(carrier)
                trace_headers: list[tuple[str, str | bytes | None]] = [(k, v.encode()) for k, v in carrier.items()]
        finally:
            if token is not None:
                otel_context.detach(token)

        for rej in outputs.rejects:
            rec = rej.record
            kafka_out.append(dead_letter(
                stage=name, source_topic=rec.topic, source_partition=rec.partition, source_offset=rec.offset,
                key=rec.key.encode(), payload=rec.value.SerializeToString(), error_type=rej.error_type,
                reason=rej.reason, now_us=now_us))
            self.metrics.dlq.labels(name, rej.error_type).inc()
        self.delivery.send(producer, outputs.emits, kafka_out, offsets, trace_headers)

    def _flush_with_backpressure(self, consumer: Consumer, producer: Producer, state: Any) -> list[Reject]:
        """Run the stage's flush; while its store is down, pause the consumer and retry with capped exponential
        backoff for as long as it takes, reporting unhealthy. Nothing is committed or dropped meanwhile."""
        assert self.spec.flush is not None
        delay_s = BACKOFF_START_S
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    return self.spec.flush(state)
                except DownstreamUnavailable as exc:
                    if not paused:
                        paused = list(consumer.assignment())
                        consumer.pause(paused)
                        self.backpressure_active.labels(self.spec.name).set(1)
                        self.log.warning("store unavailable, consumer paused, retrying with backoff: %s", exc)
                    self.health.set_live(False, phase="backpressure", downstream="unavailable")
                    self.health.set_ready(False, phase="backpressure")
                    self._wait_paused(consumer, producer, delay_s, paused)
                    delay_s = min(delay_s * 2, self.settings.sink_backoff_max_s)
        finally:
            if paused:
                current = {(tp.topic, tp.partition) for tp in consumer.assignment()}
                consumer.resume([tp for tp in paused if (tp.topic, tp.partition) in current])
                self.backpressure_active.labels(self.spec.name).set(0)
                self.health.set_live(True, downstream="ok")
                self.health.set_ready(True, phase="consuming")
                self.log.info("store reachable again; consumer resumed")

    def _wait_paused(self, consumer: Consumer, producer: Producer, seconds: float,
                     paused: list[TopicPartition]) -> None:
        """Keep group membership and earlier acks moving while paused; stop promptly on SIGTERM."""
        deadline = time.monotonic() + seconds
        while not self.stop.stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            msg = consumer.poll(min(remaining, 0.2))  # paused partitions yield nothing; a new assignment might
            if msg is not None:
                self.stash.append(msg)
                newly = [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in
                         {(p.topic, p.partition) for p in paused}]
                consumer.pause(newly)
                paused.extend(newly)
            producer.poll(0)
            self._settle(consumer)
        raise StopDuringBackpressure

    def _process_isolating_failures(self, records: Sequence[InRecord[Any]], state: Any) -> Outputs:
        """Run the core on the batch; if it raises, roll the state back to before the batch (when the stage can
        checkpoint), then retry record by record, each from its own checkpoint, and dead-letter the culprits."""
        checkpoint = self.spec.checkpoint
        restore = checkpoint(state) if checkpoint is not None else None
        try:
            return self.spec.process(records, state, self.clock)
        except FatalStageError:
            raise
        except Exception:
            self.log.exception("process() failed on a batch of %d; isolating the bad record(s)", len(records))
        if restore is not None:
            restore()
        merged = Outputs()
        for rec in records:
            restore = checkpoint(state) if checkpoint is not None else None
            try:
                merged.extend(self.spec.process([rec], state, self.clock))
            except FatalStageError:
                raise
            except Exception as exc:
                if restore is not None:
                    restore()
                merged.rejects.append(Reject(rec, "processing_error", f"{type(exc).__name__}: {exc}"))
        return merged

    def _commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int], *, asynchronous: bool) -> None:
        parts = [TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()]
        try:
            if asynchronous:
                consumer.commit(offsets=parts, asynchronous=True)
            else:
                consumer.commit(offsets=parts, asynchronous=False)
        except Exception as exc:
            self._commit_failed(exc)
