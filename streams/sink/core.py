"""Sink core: signals / outcomes / dead letters -> warehouse rows (and Redis documents for signals).

Pure: ``process`` emits nothing; it appends rows to ``state.pending`` (one list per table, values in the
column order of ``TABLE_COLUMNS``, which matches ``schemas/clickhouse/*.sql`` minus MATERIALIZED columns).
The stage (``stage.py``) writes them and then calls ``SinkState.mark_written`` per table.

De-duplication, first line: ids written recently are kept in a bounded LRU (``RecentIds``) and skipped when
redelivered; duplicates inside one batch are skipped too. Second line: the tables are ReplacingMergeTree on
the id, so anything that slips through (e.g. after a restart empties the LRU) collapses under FINAL.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import orjson
from google.protobuf.message import Message

from schemas import common_pb2, dlq_pb2, outcome_pb2, prediction_pb2, signal_pb2
from streams.runtime.clock import Clock
from streams.runtime.core import InRecord, Outputs, Reject
from streams.storage.schema import insertable_columns

SIGNALS: Final = "signals"
OUTCOMES: Final = "outcomes"
DEAD_LETTERS: Final = "dead_letters"

SIGNAL_COLUMNS: Final = (
    "signal_id", "venue", "symbol", "decision", "tier", "p_up", "horizon_min", "expected_return_bps",
    "estimated_cost_bps", "net_utility_bps", "regime", "top_features", "model_version", "feature_version",
    "cost_model_version", "data_window_id", "quality_flags", "price", "exchange_us", "ingest_us", "infer_us",
    "decision_us", "cooldown_until_us", "stored_us",
)
OUTCOME_COLUMNS: Final = (
    "outcome_id", "signal_id", "venue", "symbol", "decision", "tier", "horizon_min", "label", "entry_price",
    "exit_price", "realized_return_bps", "net_return_bps", "max_favourable_bps", "max_adverse_bps", "entry_us",
    "exit_us", "time_to_barrier_us", "estimated_cost_bps", "realized_cost_bps", "upper_barrier_bps",
    "lower_barrier_bps", "paper_equity", "risk_state", "stored_us",
)
DEAD_LETTER_COLUMNS: Final = (
    "dlq_id", "stage", "source_topic", "source_partition", "source_offset", "error_type", "reason",
    "payload_b64", "failed_us", "stored_us",
)
TABLE_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    SIGNALS: SIGNAL_COLUMNS,
    OUTCOMES: OUTCOME_COLUMNS,
    DEAD_LETTERS: DEAD_LETTER_COLUMNS,
})
# Types of the inserted columns, read from the DDL itself so the pre-insert check cannot drift from the tables.
COLUMN_TYPES: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {table: insertable_columns(table) for table in TABLE_COLUMNS})

DEFAULT_LRU_CAPACITY: Final = 200_000


class RecentIds:
    """A bounded set with least-recently-used eviction: memory stays flat however long the sink runs."""

    def __init__(self, capacity: int = DEFAULT_LRU_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        if key in self._ids:
            self._ids.move_to_end(key)  # type: ignore[arg-type]  # key is a str when present
            return True
        return False

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def _empty_tables() -> dict[str, list[Any]]:
    return {table: [] for table in TABLE_COLUMNS}


@dataclass(slots=True)
class SinkState:
    """Rows waiting for the stage's flush. Per table, ``pending``, ``pending_keys`` and ``pending_records`` are
    parallel lists (row, its dedup key, the input it came from, for dead-lettering a row the warehouse refuses);
    ``pending_signals`` runs parallel to the signals rows (their Redis documents)."""

    written: RecentIds = field(default_factory=RecentIds)
    pending: dict[str, list[list[Any]]] = field(default_factory=_empty_tables)
    pending_keys: dict[str, list[str]] = field(default_factory=_empty_tables)
    pending_records: dict[str, list[InRecord[Any]]] = field(default_factory=_empty_tables)
    pending_signals: list[dict[str, Any]] = field(default_factory=list)
    # Within a flush that has not finished yet (kept across its retries after an outage): the indices of the
    # pending rows already stored or refused, and the refused rows' dead letters.
    done: dict[str, set[int]] = field(default_factory=lambda: {table: set() for table in TABLE_COLUMNS})
    refused: list[Reject] = field(default_factory=list)
    duplicates_skipped: int = 0

    def has_pending(self) -> bool:
        return any(self.pending.values())

    def mark_written(self, table: str, indices: Collection[int] | None = None) -> None:
        """Record the keys of the rows at ``indices`` (default: all pending rows of ``table``) as written and
        take those rows out of the pending lists."""
        rows = self.pending[table]
        done = set(range(len(rows))) if indices is None else set(indices)
        for i in sorted(done):
            self.written.add(self.pending_keys[table][i])
        self.drop_pending(table, done)

    def drop_pending(self, table: str, indices: Collection[int]) -> None:
        gone = set(indices)

        def keep(values: list[Any]) -> list[Any]:
            return [v for i, v in enumerate(values) if i not in gone]

        self.pending[table] = keep(self.pending[table])
        self.pending_keys[table] = keep(self.pending_keys[table])
        self.pending_records[table] = keep(self.pending_records[table])
        if table == SIGNALS:
            self.pending_signals = keep(self.pending_signals)

    def clear_pending(self) -> None:
        self.pending = _empty_tables()
        self.pending_keys = _empty_tables()
        self.pending_records = _empty_tables()
        self.pending_signals = []
        self.done = {table: set() for table in TABLE_COLUMNS}
        self.refused = []


def enum_name(enum: Any, number: int) -> str:
    """The protobuf enum name; an unknown number (open proto3 enums) is kept as its digits, not dropped."""
    try:
        return str(enum.Name(number))
    except ValueError:
        return str(number)


def quality_flag_names(flags: Sequence[int]) -> list[str]:
    return [enum_name(common_pb2.QualityFlag, f) for f in flags]


def top_features_list(features: Sequence[prediction_pb2.FeatureContribution]) -> list[dict[str, Any]]:
    return [{"name": f.name, "value": f.value, "contribution": f.contribution} for f in features]


def signal_doc(signal: signal_pb2.Signal, stored_us: int) -> dict[str, Any]:
    """The signal as a JSON document (column name -> value); Redis and the gateway use this shape."""
    ts = signal.ts
    return {
        "signal_id": signal.signal_id,
        "venue": enum_name(common_pb2.Venue, signal.venue),
        "symbol": signal.symbol,
        "decision": enum_name(signal_pb2.Decision, signal.decision),
        "tier": enum_name(signal_pb2.Tier, signal.tier),
        "p_up": signal.p_up,
        "horizon_min": signal.horizon_min,
        "expected_return_bps": signal.expected_return_bps,
        "estimated_cost_bps": signal.estimated_cost_bps,
        "net_utility_bps": signal.net_utility_bps,
        "regime": signal.regime,
        "top_features": top_features_list(signal.top_features),
        "model_version": signal.model_version,
        "feature_version": signal.feature_version,
        "cost_model_version": signal.cost_model_version,
        "data_window_id": signal.data_window_id,
        "quality_flags": quality_flag_names(signal.quality_flags),
        "price": signal.price,
        "exchange_us": ts.exchange_us,
        "ingest_us": ts.ingest_us,
        "infer_us": ts.infer_us,
        "decision_us": ts.decision_us,
        "cooldown_until_us": signal.cooldown_until_us,
        "stored_us": stored_us,
        # Same definition as the table's MATERIALIZED latency_ms column.
        "latency_ms": (ts.decision_us - ts.exchange_us) / 1000.0,
    }


def signal_row(doc: Mapping[str, Any]) -> list[Any]:
    row = [doc[c] for c in SIGNAL_COLUMNS]
    row[SIGNAL_COLUMNS.index("top_features")] = orjson.dumps(doc["top_features"]).decode()
    return row


def outcome_row(outcome: outcome_pb2.Outcome, stored_us: int) -> list[Any]:
    return [
        outcome.outcome_id,
        outcome.signal_id,
        enum_name(common_pb2.Venue, outcome.venue),
        outcome.symbol,
        enum_name(signal_pb2.Decision, outcome.decision),
        enum_name(signal_pb2.Tier, outcome.tier),
        outcome.horizon_min,
        enum_name(outcome_pb2.OutcomeLabel, outcome.label),
        outcome.entry_price,
        outcome.exit_price,
        outcome.realized_return_bps,
        outcome.net_return_bps,
        outcome.max_favourable_bps,
        outcome.max_adverse_bps,
        outcome.entry_us,
        outcome.exit_us,
        outcome.time_to_barrier_us,
        outcome.estimated_cost_bps,
        outcome.realized_cost_bps,
        outcome.upper_barrier_bps,
        outcome.lower_barrier_bps,
        outcome.paper_equity,
        outcome.risk_state,
        stored_us,
    ]


def dead_letter_id(letter: dlq_pb2.DeadLetter) -> str:
    """Kafka position when there is one; otherwise (ws/replay sources) a content hash of the payload."""
    if letter.source_partition >= 0 and letter.source_offset >= 0:
        return f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"
    return f"{letter.source_topic}:sha256:{hashlib.sha256(letter.payload).hexdigest()}"


def dead_letter_row(letter: dlq_pb2.DeadLetter, stored_us: int) -> list[Any]:
    return [
        dead_letter_id(letter),
        letter.stage,
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        letter.error_type,
        letter.reason,
        base64.b64encode(letter.payload).decode("ascii"),
        letter.failed_us,
        stored_us,
    ]


def dedup_key(table: str, value: Message) -> str:
    """Namespaced by table: an outcome_id equals its signal_id by design. Dead letters are per stage."""
    if isinstance(value, signal_pb2.Signal):
        return f"{table}:{value.signal_id}"
    if isinstance(value, outcome_pb2.Outcome):
        return f"{table}:{value.outcome_id}"
    if isinstance(value, dlq_pb2.DeadLetter):
        return f"{table}:{value.stage}:{dead_letter_id(value)}"
    raise TypeError(f"no table for {type(value).__name__}")


def table_for(value: Message) -> str | None:
    if isinstance(value, signal_pb2.Signal):
        return SIGNALS
    if isinstance(value, outcome_pb2.Outcome):
        return OUTCOMES
    if isinstance(value, dlq_pb2.DeadLetter):
        return DEAD_LETTERS
    return None


def process(batch: Sequence[InRecord[Message]], state: SinkState, clock: Clock) -> Outputs:
    out = Outputs()
    stored_us = clock.now_us()
    batch_keys: set[str] = {k for keys in state.pending_keys.values() for k in keys}
    for record in batch:
        value = record.value
        table = table_for(value)
        if table is None:
            out.rejects.append(Reject(record, "unexpected_type", f"sink cannot store {type(value).__name__}"))
            continue
        key = dedup_key(table, value)
        if key in batch_keys or key in state.written:
            state.duplicates_skipped += 1
            continue
        doc: dict[str, Any] | None = None
        if isinstance(value, signal_pb2.Signal):
            doc = signal_doc(value, stored_us)
            row = signal_row(doc)
        elif isinstance(value, outcome_pb2.Outcome):
            row = outcome_row(value, stored_us)
        else:
            assert isinstance(value, dlq_pb2.DeadLetter)
            row = dead_letter_row(value, stored_us)
        problem = row_problem(table, row)
        if problem is not None:
            out.rejects.append(Reject(record, "invalid_row", f"{table}: {problem}"))
            continue
        if doc is not None:
            state.pending_signals.append(doc)
        state.pending[table].append(row)
        state.pending_keys[table].append(key)
        state.pending_records[table].append(record)
        batch_keys.add(key)
    return out


def row_problem(table: str, row: Sequence[Any]) -> str | None:
    """Why the warehouse could not store ``row`` faithfully (a NaN Float64, an out-of-range integer...), or None.

    Checked before insert, against the column types of the DDL, so one bad value is dead-lettered on its own
    instead of failing the whole insert (JSON has no NaN: it would arrive as null and the insert would fail).
    """
    for name, value in zip(TABLE_COLUMNS[table], row, strict=True):
        problem = value_problem(COLUMN_TYPES[table][name], value)
        if problem is not None:
            return f"{name} = {value!r:.80}: {problem}"
    return None


_INT_TYPE = re.compile(r"^(U?)Int(8|16|32|64)$")


def value_problem(column_type: str, value: Any) -> str | None:
    base = column_type
    if base.startswith("LowCardinality(") and base.endswith(")"):
        base = base[len("LowCardinality("):-1]
    if base.startswith("Array(") and base.endswith(")"):
        if not isinstance(value, list):
            return f"{column_type} needs a list"
        return next((f"item {v!r:.40}: {p}" for v in value if (p := value_problem(base[6:-1], v)) is not None), None)
    if base in ("Float64", "Float32"):
        return _float_problem(column_type, value)
    match = _INT_TYPE.match(base)
    if match is not None:
        return _int_problem(column_type, value, unsigned=bool(match.group(1)), bits=int(match.group(2)))
    if base == "String":
        return None if isinstance(value, str) else f"{column_type} needs a string"
    return f"no check for column type {column_type}"


def _float_problem(column_type: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{column_type} needs a number"
    return None if math.isfinite(value) else f"{column_type} must be finite"


def _int_problem(column_type: str, value: Any, *, unsigned: bool, bits: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{column_type} needs an integer"
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return None if low <= value <= high else f"outside {column_type} [{low}, {high}]"
