"""The source runner: delivery for stages driven by a source (exchange feeds, replays, the simulator), not a consumer.

A driver hands it each micro-batch's outputs with ``submit``; they go out through the same pipelined ``Delivery``
as a consumer-driven stage's (idempotent producer, dead letters, output metrics), without waiting for acks.
``service`` serves acknowledgements; a delivery failure marks the runner ``failed`` and the driver stops, so the
supervisor restarts the stage. ``backlog`` (batches not yet acknowledged) lets a driver slow down instead of
queueing without bound while the broker is away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import Producer
from opentelemetry.propagate import inject
from opentelemetry.trace import Tracer

from streams.runtime.clock import Clock, LiveClock
from streams.runtime.core import Emit
from streams.runtime.delivery import Delivery
from streams.runtime.dlq import dead_letter
from streams.runtime.kafka import DeliveryFailed, KafkaRecord, ensure_topics, producer_config
from streams.runtime.observability import HealthState, StageMetrics, make_tracer_provider, serve_health
from streams.runtime.runner import StopFlag
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

# A source cannot be paused like a consumer, so it may run further ahead of the acks than a stage does.
SOURCE_MAX_IN_FLIGHT = 2_000

log = logging.getLogger("surge.source")


@dataclass(frozen=True, slots=True)
class SourceReject:
    """Input a source could not use: its raw bytes go to dlq.v1 with the reason (no Kafka position exists)."""

    key: str
    payload: bytes
    error_type: str
    reason: str


class SourceRunner:
    def __init__(self, stage: str, producer: Producer, metrics: StageMetrics, tracer: Tracer, clock: Clock, *,
                 source_topic: str, max_in_flight: int = SOURCE_MAX_IN_FLIGHT) -> None:
        self.stage = stage
        self.producer = producer
        self.metrics = metrics
        self.tracer = tracer
        self.source_topic = source_topic  # e.g. "sim", "ws:<url>", "replay:<path>" in dead letters
        self.delivery = Delivery(stage, metrics, clock, max_in_flight=max_in_flight, lag_on_ack=True)
        self.error: DeliveryFailed | None = None
        # A live feed submits from its event loop while close() may come from another thread.
        self._lock = threading.Lock()

    @property
    def clock(self) -> Clock:
        return self.delivery.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        """A replay stamps dead letters and measures latency in recorded time."""
        self.delivery.clock = clock

    @property
    def backlog(self) -> int:
        return len(self.delivery.in_flight)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def submit(self, emits: Sequence[Emit], rejects: Sequence[SourceReject], *, raw_events: int) -> None:
        """Produce one micro-batch's outputs without waiting for acknowledgements."""
        if not emits and not rejects:
            self.service()
            return
        with self._lock:
            now_us = self.delivery.clock.now_us()
            with self.tracer.start_as_current_span(f"{self.stage}.batch") as span:
                span.set_attribute("surge.raw_events", raw_events)
                span.set_attribute("surge.emits", len(emits))
                carrier: dict[str, str] = {}
                inject(carrier)  # lets the next stage link its spans to this one
                headers: list[tuple[str, str | bytes | None]] | None = \
                    [(k, v.encode()) for k, v in carrier.items()] or None
                letters: list[KafkaRecord] = []
                for bad in rejects:
                    letters.append(dead_letter(
                        stage=self.stage, source_topic=self.source_topic, source_partition=-1, source_offset=-1,
                        key=bad.key.encode(), payload=bad.payload, error_type=bad.error_type, reason=bad.reason,
                        now_us=now_us))
                    self.metrics.dlq.labels(self.stage, bad.error_type).inc()
                self.delivery.send(self.producer, emits, letters, {}, headers)
        self.service()

    def service(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks and settle what is acknowledged; a failure is kept in ``error``."""
        self.producer.poll(timeout_s)
        with self._lock:
            if self.error is not None:
                return
            try:
                self.delivery.settle()
            except DeliveryFailed as exc:
                log.error("the bus refused %s output: %s", self.stage, exc)
                self.error = exc

    def wait_for_room(self, stop: threading.Event, limit: int) -> None:
        """Block (serving acks) while more than ``limit`` batches await acknowledgement: a driver that may block."""
        while self.backlog > limit and not stop.is_set() and not self.failed:
            self.service(0.01)

    def close(self, timeout_s: float = 30.0) -> int:
        """Wait for every submitted output; returns how many batches stay unacknowledged (0 = all delivered)."""
        self.producer.flush(timeout_s)
        self.service()
        if self.backlog:
            log.error("%d %s batch(es) unacknowledged at exit", self.backlog, self.stage)
        return self.backlog


@dataclass(frozen=True)
class SourceContext:
    """What a source stage's driver gets from the process that runs it (``run_source``): the stage's settings,
    clock, metrics (its /metrics registry is ``metrics.registry``), health, the stop event, and a producer whose
    topic metadata is already fetched; ``runner`` makes the delivery for one source."""

    name: str
    settings: Settings
    clock: Clock
    metrics: StageMetrics
    health: HealthState
    stop: threading.Event
    producer: Producer
    tracer: Tracer

    def runner(self, source_topic: str) -> SourceRunner:
        return SourceRunner(self.name, self.producer, self.metrics, self.tracer, self.clock,
                            source_topic=source_topic)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A stage driven by a source instead of a consumer: ``check`` validates the settings before anything is
    connected (a ValueError or FileNotFoundError is a usage error, exit 2); ``drive`` runs the source until the
    stop event or the source's end and returns the exit code."""

    name: str
    output_topics: tuple[Topic, ...]
    drive: Callable[[SourceContext], int]
    check: Callable[[Settings], None] | None = None


def run_source(spec: SourceSpec, settings: Settings, clock: Clock | None = None, *,
               stop_event: threading.Event | None = None) -> int:
    """Serve health and metrics, create the topics, open the producer, and drive the source; 0 = clean."""
    clock = clock or LiveClock()
    try:
        if spec.check is not None:
            spec.check(settings)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    metrics = StageMetrics.create(spec.name)
    health = HealthState(stall_after_s=settings.stall_readiness_s)
    stop_health = serve_health(settings.stage_port(spec.name), metrics.registry, health, host=settings.metrics_host)
    stop = StopFlag()
    if stop_event is not None:
        stop.event = stop_event
    if threading.current_thread() is threading.main_thread():
        stop.install()  # signal handlers can only be installed from the main thread
    try:
        created = ensure_topics(settings)
        if created:
            log.info("created topics %s", created)
        producer = Producer(producer_config(settings, f"surge-{spec.name}-producer"))
        for topic in spec.output_topics:
            # Fetch leaders before the source starts its clock, or the first produce stalls ~1 s on metadata.
            producer.list_topics(topic.value, timeout=10)
        tracer = make_tracer_provider(spec.name, settings).get_tracer(f"surge.{spec.name}")
        return spec.drive(SourceContext(spec.name, settings, clock, metrics, health, stop.event, producer, tracer))
    finally:
        stop_health()
