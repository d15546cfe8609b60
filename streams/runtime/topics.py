"""The bus: topic names, their payload types, and protobuf decoding with validation."""

from __future__ import annotations

from enum import StrEnum

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from schemas import SCHEMA_VERSION, dlq_pb2, features_pb2, market_pb2, outcome_pb2, prediction_pb2, signal_pb2


class Topic(StrEnum):
    TICKS = "ticks.v1"
    FEATURES = "features.v1"
    PREDICTIONS = "predictions.v1"
    SIGNALS = "signals.v1"
    OUTCOMES = "outcomes.v1"
    DLQ = "dlq.v1"


PAYLOAD_TYPES: dict[Topic, type[Message]] = {
    Topic.TICKS: market_pb2.TickBatch,
    Topic.FEATURES: features_pb2.FeatureVector,
    Topic.PREDICTIONS: prediction_pb2.Prediction,
    Topic.SIGNALS: signal_pb2.Signal,
    Topic.OUTCOMES: outcome_pb2.Outcome,
    Topic.DLQ: dlq_pb2.DeadLetter,
}

# The field that must be a non-empty deterministic id on each payload type.
_ID_FIELD: dict[Topic, str] = {
    Topic.TICKS: "batch_id",
    Topic.FEATURES: "vector_id",
    Topic.PREDICTIONS: "prediction_id",
    Topic.SIGNALS: "signal_id",
    Topic.OUTCOMES: "outcome_id",
}


class InvalidMessage(ValueError):
    """Input that cannot be used: carries a machine-readable error type for the dead-letter envelope."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


def decode(topic: str, key: bytes | None, payload: bytes | None) -> Message:
    """Decode and validate one record; raises InvalidMessage with the reason on any problem."""
    try:
        kind = Topic(topic)
    except ValueError as exc:
        raise InvalidMessage("unknown_topic", f"no payload type for topic {topic!r}") from exc
    if payload is None:
        raise InvalidMessage("empty_payload", "record has no value")
    message = PAYLOAD_TYPES[kind]()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise InvalidMessage("decode_error", f"undecodable {message.DESCRIPTOR.name} protobuf: {exc}") from exc
    # Protobuf parses many random byte strings without error, so the content is checked too.
    if kind is Topic.DLQ:
        return message
    version = getattr(message, "schema_version")  # noqa: B009 - every bus payload has it, not statically known
    if version != SCHEMA_VERSION:
        raise InvalidMessage(
            "schema_version", f"schema_version {version} of {message.DESCRIPTOR.name}, expected {SCHEMA_VERSION}"
        )
    if len(UnknownFieldSet(message)):
        raise InvalidMessage("unknown_fields", f"{message.DESCRIPTOR.name} carries unknown fields")
    ident = getattr(message, _ID_FIELD[kind])
    if not ident:
        raise InvalidMessage("missing_id", f"{message.DESCRIPTOR.name}.{_ID_FIELD[kind]} is empty")
    symbol = getattr(message, "symbol")  # noqa: B009 - every keyed payload has it
    if not symbol:
        raise InvalidMessage("missing_symbol", f"{message.DESCRIPTOR.name}.symbol is empty")
    if key is not None and key.decode("utf-8", "replace") != symbol:
        raise InvalidMessage("key_mismatch", f"record key {key!r} differs from symbol {symbol!r}")
    return message
