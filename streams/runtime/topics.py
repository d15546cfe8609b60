"""The bus: topic names, their payload types, and protobuf decoding with validation.

Decoding bounds the size of every string and list a stage may copy into its output, so one oversize record is
a dead letter at the first stage that reads it instead of an output the producer cannot send (Kafka's 1 MB
message limit): the symbol is 1..``SYMBOL_MAX_CHARS`` characters of ``[A-Z0-9_-]``; in UTF-8 bytes, source ids
are at most ``ID_MAX_BYTES``, versions ``VERSION_MAX_BYTES``, derived ids ``DERIVED_ID_MAX_BYTES``, window ids
``WINDOW_ID_MAX_BYTES`` and other strings the limit in ``STRING_LIMITS`` or ``STRING_MAX_BYTES``; the lists in
``REPEATED_LIMITS`` have at most that many entries (FeatureVector.names is bounded by count only).
``TickBatch.events`` is not bounded here: the features stage reads it without copying it, and ingest keeps a
batch to ``MAX_BATCH_EVENTS``. Values (finite prices, event times near the clock) are each stage's check, in
``streams.runtime.validate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Final, TypeAlias, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from schemas import SCHEMA_VERSION, dlq_pb2, features_pb2, market_pb2, outcome_pb2, prediction_pb2, signal_pb2
from streams.runtime.instrument import key_of


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


SYMBOL_MAX_CHARS: Final = 32
KEY_SHOWN_BYTES: Final = 48  # of a mismatching record key, in the dead letter's reason
SYMBOL_PATTERN: Final = re.compile(r"[A-Z0-9_-]+")
ID_MAX_BYTES: Final = 128  # batch_id and vector_id (= the batch_id)
VERSION_MAX_BYTES: Final = 64  # model/feature/cost model versions
# Ids a stage derives from its input's: prediction_id = vector_id:model_version, signal_id = prediction_id:horizon
# (outcome_id = signal_id), so a valid input never yields an id the next stage refuses (128 + 1 + 64 + 1 + 10).
DERIVED_ID_MAX_BYTES: Final = 256
WINDOW_ID_MAX_BYTES: Final = 256  # data_window_id: "SYMBOL:first-last"
NAME_MAX_BYTES: Final = 128  # a top feature's name (copied from prediction to signal)
REGIME_MAX_BYTES: Final = 64  # "vol_medium_depth_medium" is 23
STRING_MAX_BYTES: Final = 256  # any other string field

STRING_LIMITS: Final[Mapping[str, int]] = {
    "batch_id": ID_MAX_BYTES,
    "vector_id": ID_MAX_BYTES,
    **dict.fromkeys(("model_version", "feature_version", "cost_model_version"), VERSION_MAX_BYTES),
    **dict.fromkeys(("prediction_id", "signal_id", "outcome_id"), DERIVED_ID_MAX_BYTES),
    "data_window_id": WINDOW_ID_MAX_BYTES,
    # FeatureVector.names only by count: infer looks them up and copies none (a top feature's name is the
    # model's), and reading ~60 strings out of every vector would double the cost of decoding it.
    "names": 0,
    "name": NAME_MAX_BYTES,  # FeatureContribution.name
    "regime": REGIME_MAX_BYTES,
}
# Entries per repeated field (by name, on any payload); lists not named here are not bounded.
REPEATED_LIMITS: Final[Mapping[str, int]] = {
    "names": 1024,  # FeatureVector: the feature table has ~60
    "values": 1024,
    "horizons": 64,
    "top_features": 64,
    "quality_flags": 32,  # QualityFlag has 10 values; later stages add, so a few repeats are tolerated
    "book_bids": 64,  # FeatureVector / Prediction: the forwarded book top (10 levels a side)
    "book_asks": 64,
    "bids": 5_000,  # TickBatch book snapshots and diffs: SURGE_SNAPSHOT_LIMIT is at most 5000 a side
    "asks": 5_000,
}

# A compiled walk per message type, one step per field that needs a check: (field, repeated?, max entries or 0,
# max string bytes or 0 for a message field, the walk of that message field).
_Plan: TypeAlias = tuple[tuple[FieldDescriptor, bool, int, int, "_Plan"], ...]


def _plan(desc: Descriptor, *, top: bool = True, outer: frozenset[str] = frozenset()) -> _Plan:
    """The checks of ``desc``'s fields: strings by STRING_LIMITS, lists by REPEATED_LIMITS, nested messages."""
    outer = outer | {desc.full_name}  # a self-nesting type is walked once, not forever
    steps: list[tuple[FieldDescriptor, bool, int, int, _Plan]] = []
    for fd in desc.fields:
        if top and fd.name == "symbol":
            continue  # checked on its own: length and alphabet
        repeated = bool(fd.is_repeated)
        count = REPEATED_LIMITS.get(fd.name, 0) if repeated else 0
        if fd.type == FieldDescriptor.TYPE_STRING:
            limit = STRING_LIMITS.get(fd.name, STRING_MAX_BYTES)  # 0: not checked (a list still by count)
            if limit or count:
                steps.append((fd, repeated, count, limit, ()))
        elif fd.message_type is not None and fd.message_type.full_name not in outer:
            sub = _plan(fd.message_type, top=False, outer=outer)
            if sub or count:
                steps.append((fd, repeated, count, 0, sub))
        elif count:
            steps.append((fd, repeated, count, 0, ()))
    return tuple(steps)


class InvalidMessage(ValueError):
    """Input that cannot be used: carries a machine-readable error type for the dead-letter envelope."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


_PLANS: Final[dict[Topic, _Plan]] = {
    kind: _plan(cast(Descriptor, cls.DESCRIPTOR)) for kind, cls in PAYLOAD_TYPES.items()  # upb's is the same API
}


def _string_size(value: str, limit: int) -> int:
    """UTF-8 size of ``value``, exact only when it could exceed ``limit`` (a UTF-8 character is <= 4 bytes)."""
    n = len(value)
    if n * 4 <= limit or value.isascii():
        return n
    return len(value.encode("utf-8", "surrogatepass"))


def _check_sizes(message: Message, plan: _Plan, path: str) -> None:
    for fd, repeated, count, max_bytes, sub in plan:
        name = f"{path}.{fd.name}"
        value = getattr(message, fd.name)
        if repeated:
            if count and len(value) > count:
                raise InvalidMessage("field_too_large", f"{name} has {len(value)} entries, limit {count}")
            if max_bytes:
                for i, item in enumerate(value):
                    size = _string_size(item, max_bytes)
                    if size > max_bytes:
                        raise InvalidMessage("field_too_large", f"{name}[{i}] is {size} bytes, limit {max_bytes}")
            elif sub:
                for i, item in enumerate(value):
                    _check_sizes(item, sub, f"{name}[{i}]")
        elif max_bytes:
            size = _string_size(value, max_bytes)
            if size > max_bytes:
                raise InvalidMessage("field_too_large", f"{name} is {size} bytes, limit {max_bytes}")
        elif sub:
            _check_sizes(value, sub, name)


def check_bounds(kind: Topic, message: Message) -> None:
    """Field sizes and the symbol's form; raises InvalidMessage. Part of ``decode``, exposed for producers."""
    type_name = message.DESCRIPTOR.name
    _check_sizes(message, _PLANS[kind], type_name)
    symbol: str = getattr(message, "symbol")  # noqa: B009 - every keyed payload has it
    if len(symbol) > SYMBOL_MAX_CHARS:
        raise InvalidMessage("field_too_large", f"{type_name}.symbol is {len(symbol)} characters, "
                             f"limit {SYMBOL_MAX_CHARS}")
    if symbol and SYMBOL_PATTERN.fullmatch(symbol) is None:
        raise InvalidMessage("invalid_symbol", f"{type_name}.symbol {symbol!r} is not 1-{SYMBOL_MAX_CHARS} "
                             "characters of [A-Z0-9_-]")


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
    check_bounds(kind, message)
    ident = getattr(message, _ID_FIELD[kind])
    if not ident:
        raise InvalidMessage("missing_id", f"{message.DESCRIPTOR.name}.{_ID_FIELD[kind]} is empty")
    symbol = getattr(message, "symbol")  # noqa: B009 - every keyed payload has it
    if not symbol:
        raise InvalidMessage("missing_symbol", f"{message.DESCRIPTOR.name}.symbol is empty")
    expected = key_of(message)  # type: ignore[arg-type]  # every keyed payload has venue and symbol
    if key is not None and key.decode("utf-8", "replace") != expected:
        shown = key if len(key) <= KEY_SHOWN_BYTES else key[:KEY_SHOWN_BYTES] + b"..."  # a reason stays small
        raise InvalidMessage("key_mismatch", f"record key {shown!r} ({len(key)} bytes) differs from the "
                             f"instrument key {expected!r}")
    return message
