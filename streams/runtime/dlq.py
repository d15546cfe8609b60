"""Dead-letter envelopes: the original bytes plus why and where, for dlq.v1."""

from __future__ import annotations

from schemas import SCHEMA_VERSION, dlq_pb2
from streams.runtime.kafka import KafkaRecord
from streams.runtime.topics import Topic


def dead_letter(
    *,
    stage: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    key: bytes | None,
    payload: bytes | None,
    error_type: str,
    reason: str,
    now_us: int,
) -> KafkaRecord:
    """Build the dlq.v1 record; reason and source are also in headers so tools can filter without decoding."""
    envelope = dlq_pb2.DeadLetter(
        schema_version=SCHEMA_VERSION,
        stage=stage,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        key=key or b"",
        payload=payload or b"",
        reason=reason,
        error_type=error_type,
        failed_us=now_us,
    )
    headers: list[tuple[str, str | bytes | None]] = [
        ("dlq.reason", reason.encode()[:1024]),
        ("dlq.error_type", error_type.encode()),
        ("dlq.stage", stage.encode()),
        ("dlq.source.topic", source_topic.encode()),
        ("dlq.source.partition", str(source_partition).encode()),
        ("dlq.source.offset", str(source_offset).encode()),
    ]
    return (Topic.DLQ.value, key or b"", envelope.SerializeToString(), headers)
