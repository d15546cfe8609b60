"""confluent-kafka plumbing shared by the runner, the CLI and the tests: configs, topics, delivery tracking."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # re-exported at runtime, stub lacks __all__

from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

log = logging.getLogger("surge.kafka")


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": settings.linger_ms,
        "compression.type": "lz4",
        "message.timeout.ms": 120_000,  # a broker outage shorter than this is ridden out by retries
        "reconnect.backoff.max.ms": 2000,
    }


def consumer_config(settings: Settings, group_id: str, *, from_beginning: bool = True) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group_id,
        "client.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # "earliest" so a new group never skips data; Tansu's end offsets are wrong anyway.
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
        "reconnect.backoff.max.ms": 2000,
    }


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def ensure_topics(settings: Settings, topics: Iterable[str] = tuple(Topic), timeout_s: float = 30.0) -> list[str]:
    """Create the topics that are missing; existing ones are left alone. Returns the names created."""
    admin = admin_client(settings)
    deadline = time.monotonic() + timeout_s
    wanted = list(topics)
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker {settings.bootstrap_servers} unreachable: {exc}") from exc
            time.sleep(0.5)
    missing = [t for t in wanted if t not in existing]
    created: list[str] = []
    if not missing:
        return created
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=settings.partitions, replication_factor=settings.replication_factor)
         for t in missing],
        request_timeout=15,
    )
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            # Another stage created it between our list and create: that is the idempotent outcome we want.
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


@dataclass
class DeliveryTracker:
    """Counts acknowledgements of one batch's produce() calls, so offsets are committed only after all."""

    pending: int = 0
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def callback(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            self.pending -= 1
            if err is not None:
                self.failures.append(f"{msg.topic()}: {err}")

    def expect(self, n: int = 1) -> None:
        with self._lock:
            self.pending += n


class DeliveryFailed(RuntimeError):
    pass


# (topic, key, value, headers) as handed to Producer.produce.
KafkaRecord = tuple[str, str | bytes, bytes, list[tuple[str, str | bytes | None]] | None]


def produce_nowait(
    producer: Producer, records: Sequence[KafkaRecord], tracker: DeliveryTracker
) -> list[tuple[KafkaRecord, str]]:
    """Hand records to the producer; ``tracker`` counts their acknowledgements as callbacks are served.

    Returns the records the producer refused outright (e.g. larger than ``message.max.bytes``), with the reason,
    so the caller can dead-letter them: retrying such a record can never succeed.
    """
    refused: list[tuple[KafkaRecord, str]] = []
    for record in records:
        topic, key, value, headers = record
        while True:
            try:
                tracker.expect()
                producer.produce(topic, key=key, value=value, headers=headers, on_delivery=tracker.callback)
                break
            except BufferError:
                tracker.expect(-1)
                producer.poll(0.05)  # local queue full: serve callbacks to make room
            except KafkaException as exc:
                tracker.expect(-1)
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                refused.append((record, f"{topic} record of {len(value)} bytes exceeds the producer's "
                                        "message.max.bytes"))
                break
    return refused


def produce_all(
    producer: Producer,
    records: Sequence[KafkaRecord],
) -> None:
    """Produce records and block until every one is acknowledged; raises DeliveryFailed otherwise.

    The idempotent producer retries internally until message.timeout.ms, so a failure here is final for
    this batch: the caller must not commit, and the records will be re-read after a restart.
    """
    tracker = DeliveryTracker()
    refused = produce_nowait(producer, records, tracker)
    if refused:
        raise DeliveryFailed(f"{len(refused)} record(s) refused by the producer: {[r for _, r in refused[:3]]}")
    while tracker.pending > 0:
        producer.flush(1.0)
        if tracker.pending > 0:
            log.warning("waiting for %d unacknowledged record(s); broker may be down", tracker.pending)
    if tracker.failures:
        raise DeliveryFailed(f"{len(tracker.failures)} record(s) not delivered: {tracker.failures[:3]}")
