"""`surge tail`: print a topic's protobuf messages as JSON, because kcat cannot decode them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from google.protobuf.json_format import MessageToDict

from streams.runtime.clock import Clock, LiveClock
from streams.runtime.kafka import consumer_config
from streams.runtime.runner import headers_dict
from streams.runtime.settings import Settings
from streams.runtime.topics import PAYLOAD_TYPES, Topic


@dataclass(frozen=True)
class TailedRecord:
    topic: str
    partition: int
    offset: int
    key: str
    timestamp_ms: int
    value: dict[str, Any] | None
    error: str | None
    headers: dict[str, str]

    def to_json(self, with_meta: bool) -> bytes:
        if not with_meta and self.value is not None:
            return orjson.dumps(self.value)
        return orjson.dumps({
            "topic": self.topic, "partition": self.partition, "offset": self.offset, "key": self.key,
            "timestamp_ms": self.timestamp_ms, "headers": self.headers, "value": self.value, "error": self.error,
        })


def tail(
    settings: Settings,
    topic: Topic,
    *,
    from_beginning: bool,
    idle_timeout_s: float,
    max_messages: int | None = None,
    clock: Clock | None = None,
) -> Iterator[TailedRecord]:
    """Yield decoded records until nothing arrives for ``idle_timeout_s`` (or ``max_messages``).

    Without ``from_beginning`` only records produced after the start are shown. That is decided by record
    timestamp rather than end offsets, which the embedded Tansu broker reports wrongly.
    """
    clock = clock or LiveClock()
    started_ms = clock.now_us() // 1000
    conf = consumer_config(settings, f"surge-tail-{uuid.uuid4().hex[:8]}")
    consumer = Consumer(conf)
    try:
        metadata = consumer.list_topics(topic.value, timeout=10)
        partitions = metadata.topics[topic.value].partitions if topic.value in metadata.topics else {}
        if not partitions:
            return
        consumer.assign([TopicPartition(topic.value, p, OFFSET_BEGINNING) for p in partitions])
        payload_type = PAYLOAD_TYPES[topic]
        seen = 0
        last_activity = time.monotonic()
        while time.monotonic() - last_activity < idle_timeout_s:
            msgs = consumer.consume(num_messages=500, timeout=0.2)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"consumer error: {err}")
                    continue
                last_activity = time.monotonic()
                _, ts_ms = msg.timestamp()
                if not from_beginning and ts_ms < started_ms:
                    continue
                value: dict[str, Any] | None
                error: str | None = None
                message = payload_type()
                try:
                    message.ParseFromString(msg.value() or b"")
                    value = MessageToDict(message, preserving_proto_field_name=True)
                except Exception as exc:  # undecodable bytes are shown, not hidden
                    value, error = None, f"undecodable: {exc}"
                record = TailedRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                                      (msg.key() or b"").decode("utf-8", "replace"), ts_ms, value, error,
                                      headers_dict(msg))
                yield record
                seen += 1
                if max_messages is not None and seen >= max_messages:
                    return
    finally:
        consumer.close()
