"""Sink core: signals / outcomes / dead letters / predictions / feature vectors / tick batches -> warehouse
rows (and Redis documents: signals, and the latest prediction and book top per instrument).

A tick batch gives one ``trades`` row per trade and one ``book_tops`` row (its last bookTicker, else the best
levels of its last book snapshot); every other message gives one row. A message any of whose rows the DDL's
column types refuse is dead-lettered whole.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Final

import orjson
from google.protobuf.message import Message

from schemas import common_pb2, dlq_pb2, features_pb2, market_pb2, outcome_pb2, prediction_pb2, signal_pb2
from streams.runtime.clock import Clock
from streams.runtime.core import InRecord, Outputs, Reject
from streams.runtime.instrument import key_of, venue_name
from streams.storage.schema import insertable_columns

SIGNALS: Final = "signals"
OUTCOMES: Final = "outcomes"
DEAD_LETTERS: Final = "dead_letters"
PREDICTIONS: Final = "predictions"
FEATURES: Final = "features"
BOOK_TOPS: Final = "book_tops"
TRADES: Final = "trades"

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
PREDICTION_COLUMNS: Final = (
    "prediction_id", "venue", "symbol", "model_version", "feature_version", "horizons", "p_up", "ci_low", "ci_high",
    "regime", "mid_price", "spread_bps", "top_features", "data_window_id", "canary", "quality_flags", "exchange_us",
    "infer_us", "stored_us",
)
FEATURE_COLUMNS: Final = (
    "vector_id", "venue", "symbol", "feature_version", "names", "values", "regime", "mid_price", "data_window_id",
    "quality_flags", "exchange_us", "features_us", "stored_us",
)
BOOK_TOP_COLUMNS: Final = (
    "venue", "symbol", "batch_id", "source", "update_id", "bid_price", "bid_qty", "ask_price", "ask_qty",
    "quality_flags", "exchange_us", "ingest_us", "stored_us",
)
TRADE_COLUMNS: Final = (
    "venue", "symbol", "trade_id", "price", "qty", "buyer_is_maker", "batch_id", "exchange_us", "ingest_us",
    "stored_us",
)
# Flush order too: the signal path's tables first, the bulky market data last.
TABLE_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    SIGNALS: SIGNAL_COLUMNS,
    OUTCOMES: OUTCOME_COLUMNS,
    DEAD_LETTERS: DEAD_LETTER_COLUMNS,
    PREDICTIONS: PREDICTION_COLUMNS,
    FEATURES: FEATURE_COLUMNS,
    BOOK_TOPS: BOOK_TOP_COLUMNS,
    TRADES: TRADE_COLUMNS,
})
# Tables whose rows carry a Redis document (parallel list ``SinkState.pending_docs``).
DOC_TABLES: Final = frozenset({SIGNALS, PREDICTIONS, BOOK_TOPS})
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
        self.add_many((key,))

    def add_many(self, keys: Iterable[str]) -> None:
        ids = self._ids
        for key in keys:
            ids[key] = None
            ids.move_to_end(key)
        for _ in range(len(ids) - self.capacity):
            ids.popitem(last=False)


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
    # predictions / book_tops: their Redis documents (latest per instrument), parallel to the rows.
    pending_docs: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {PREDICTIONS: [], BOOK_TOPS: []})
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
        keys = self.pending_keys[table]
        self.written.add_many(keys[i] for i in sorted(done))
        self.drop_pending(table, done)

    def drop_pending(self, table: str, indices: Collection[int]) -> None:
        gone = set(indices)
        if len(gone) == len(self.pending[table]):  # the usual flush: everything went
            self.pending[table], self.pending_keys[table], self.pending_records[table] = [], [], []
            if table == SIGNALS:
                self.pending_signals = []
            elif table in self.pending_docs:
                self.pending_docs[table] = []
            return

        def keep(values: list[Any]) -> list[Any]:
            return [v for i, v in enumerate(values) if i not in gone]

        self.pending[table] = keep(self.pending[table])
        self.pending_keys[table] = keep(self.pending_keys[table])
        self.pending_records[table] = keep(self.pending_records[table])
        if table == SIGNALS:
            self.pending_signals = keep(self.pending_signals)
        elif table in self.pending_docs:
            self.pending_docs[table] = keep(self.pending_docs[table])

    def clear_pending(self) -> None:
        self.pending = _empty_tables()
        self.pending_keys = _empty_tables()
        self.pending_records = _empty_tables()
        self.pending_signals = []
        self.pending_docs = {PREDICTIONS: [], BOOK_TOPS: []}
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


def _nan_to_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def prediction_doc(pred: prediction_pb2.Prediction, stored_us: int) -> dict[str, Any]:
    """The prediction as a JSON document (Redis ``latest`` and the gateway use this shape)."""
    return {
        "prediction_id": pred.prediction_id,
        "instrument": key_of(pred),
        "venue": venue_name(pred.venue),
        "symbol": pred.symbol,
        "model_version": pred.model_version,
        "feature_version": pred.feature_version,
        "horizons": [{"horizon_min": h.horizon_min, "p_up": _nan_to_none(h.p_up), "ci_low": _nan_to_none(h.ci_low),
                      "ci_high": _nan_to_none(h.ci_high)} for h in pred.horizons],
        "regime": pred.regime,
        "mid_price": _nan_to_none(pred.mid_price),
        "spread_bps": _nan_to_none(pred.spread_bps),
        "top_features": top_features_list(pred.top_features),
        "data_window_id": pred.data_window_id,
        "canary": pred.canary,
        "quality_flags": quality_flag_names(pred.quality_flags),
        "exchange_us": pred.ts.exchange_us,
        "infer_us": pred.ts.infer_us,
        "stored_us": stored_us,
    }


def prediction_row(pred: prediction_pb2.Prediction, stored_us: int) -> list[Any]:
    return [
        pred.prediction_id, venue_name(pred.venue), pred.symbol, pred.model_version, pred.feature_version,
        [h.horizon_min for h in pred.horizons], [h.p_up for h in pred.horizons], [h.ci_low for h in pred.horizons],
        [h.ci_high for h in pred.horizons], pred.regime, pred.mid_price, pred.spread_bps,
        orjson.dumps(top_features_list(pred.top_features)).decode(), pred.data_window_id, int(pred.canary),
        quality_flag_names(pred.quality_flags), pred.ts.exchange_us, pred.ts.infer_us, stored_us,
    ]


def feature_row(vec: features_pb2.FeatureVector, stored_us: int) -> list[Any]:
    """NaN values (a window not filled yet) are stored as NULL: JSON and the warehouse service have no NaN."""
    return [
        vec.vector_id, venue_name(vec.venue), vec.symbol, vec.feature_version, list(vec.names),
        [_nan_to_none(v) for v in vec.values], vec.regime, vec.mid_price, vec.data_window_id,
        quality_flag_names(vec.quality_flags), vec.ts.exchange_us, vec.ts.features_us, stored_us,
    ]


def book_top_doc(batch: market_pb2.TickBatch, stored_us: int) -> dict[str, Any] | None:
    """The batch's last top of book: its last bookTicker, else the best levels of its last book snapshot."""
    ticker: market_pb2.BookTicker | None = None
    book: market_pb2.BookSnapshot | None = None
    for event in batch.events:
        kind = event.WhichOneof("event")
        if kind == "book_ticker":
            ticker = event.book_ticker
        elif kind == "book" and event.book.bids and event.book.asks:
            book = event.book
    if ticker is not None:
        source, update_id = "book_ticker", ticker.update_id
        bid, bid_qty, ask, ask_qty = ticker.bid_price, ticker.bid_qty, ticker.ask_price, ticker.ask_qty
        exchange_us, ingest_us = ticker.exchange_us, ticker.ingest_us
    elif book is not None:
        source, update_id = "book", book.last_update_id
        bid, bid_qty, ask, ask_qty = book.bids[0].price, book.bids[0].qty, book.asks[0].price, book.asks[0].qty
        exchange_us, ingest_us = book.exchange_us, book.ingest_us
    else:
        return None
    return {
        "instrument": key_of(batch), "venue": venue_name(batch.venue), "symbol": batch.symbol,
        "batch_id": batch.batch_id, "source": source, "update_id": update_id, "bid_price": bid, "bid_qty": bid_qty,
        "ask_price": ask, "ask_qty": ask_qty, "quality_flags": quality_flag_names(batch.quality_flags),
        "exchange_us": exchange_us or batch.ts.exchange_us, "ingest_us": ingest_us or batch.ts.ingest_us,
        "stored_us": stored_us,
    }


def book_top_row(doc: Mapping[str, Any]) -> list[Any]:
    return [doc[c] for c in BOOK_TOP_COLUMNS]


def trade_rows(batch: market_pb2.TickBatch, stored_us: int) -> list[list[Any]]:
    venue, symbol, batch_id = venue_name(batch.venue), batch.symbol, batch.batch_id
    rows: list[list[Any]] = []
    for event in batch.events:
        if event.WhichOneof("event") == "trade":
            t = event.trade  # each attribute access of a sub-message builds a new wrapper: once per trade
            rows.append([venue, symbol, t.trade_id, t.price, t.qty, int(t.buyer_is_maker), batch_id, t.exchange_us,
                         t.ingest_us, stored_us])
    return rows


def trades_certainly_fine(rows: Sequence[Sequence[Any]]) -> bool:
    """True when every value of these ``trade_rows`` rows is storable, checked in one pass (the hot path: trades
    are most of the rows). The Trade message's int64, bool and string fields already fit the columns' Int64,
    UInt8 and String, so only price and qty can hold a bad value (NaN or +-inf), and a finite sum proves they do
    not: a NaN or an infinity makes the sum NaN or infinite. False (a bad value, or a sum that overflowed) means:
    ask ``row_problem`` row by row."""
    total = 0.0
    for row in rows:
        total += row[3] + row[4]  # price, qty (a test pins the positions to the DDL)
    return total - total == 0.0


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
    if isinstance(value, prediction_pb2.Prediction):
        return f"{table}:{value.prediction_id}"
    if isinstance(value, features_pb2.FeatureVector):
        return f"{table}:{value.vector_id}"
    raise TypeError(f"no table for {type(value).__name__}")


_TABLE_OF: Final[Mapping[type[Message], str]] = MappingProxyType({
    signal_pb2.Signal: SIGNALS,
    outcome_pb2.Outcome: OUTCOMES,
    dlq_pb2.DeadLetter: DEAD_LETTERS,
    prediction_pb2.Prediction: PREDICTIONS,
    features_pb2.FeatureVector: FEATURES,
    market_pb2.TickBatch: TRADES,  # and book_tops
})


def table_for(value: Message) -> str | None:
    return _TABLE_OF.get(type(value))


def tick_rows(batch: market_pb2.TickBatch, stored_us: int) -> list[tuple[str, str, list[Any], dict[str, Any] | None]]:
    """(table, dedup key, row, Redis document) of a tick batch: its trades and its top of book."""
    venue = venue_name(batch.venue)
    out: list[tuple[str, str, list[Any], dict[str, Any] | None]] = [
        (TRADES, f"{TRADES}:{venue}:{batch.symbol}:{row[2]}", row, None) for row in trade_rows(batch, stored_us)]
    top = book_top_doc(batch, stored_us)
    if top is not None:
        out.append((BOOK_TOPS, f"{BOOK_TOPS}:{venue}:{batch.batch_id}", book_top_row(top), top))
    return out


def rows_of(value: Message, table: str, stored_us: int) -> list[tuple[str, str, list[Any], dict[str, Any] | None]]:
    """(table, dedup key, row, Redis document or None) for every row ``value`` gives."""
    if isinstance(value, market_pb2.TickBatch):
        return tick_rows(value, stored_us)
    key = dedup_key(table, value)
    if isinstance(value, signal_pb2.Signal):
        doc = signal_doc(value, stored_us)
        return [(table, key, signal_row(doc), doc)]
    if isinstance(value, outcome_pb2.Outcome):
        return [(table, key, outcome_row(value, stored_us), None)]
    if isinstance(value, prediction_pb2.Prediction):
        return [(table, key, prediction_row(value, stored_us), prediction_doc(value, stored_us))]
    if isinstance(value, features_pb2.FeatureVector):
        return [(table, key, feature_row(value, stored_us), None)]
    assert isinstance(value, dlq_pb2.DeadLetter)
    return [(table, key, dead_letter_row(value, stored_us), None)]


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
        fresh = []
        for item in rows_of(value, table, stored_us):
            key = item[1]
            if key in batch_keys or key in state.written:
                state.duplicates_skipped += 1
                continue
            fresh.append(item)
        if not fresh:
            continue
        problem = first_row_problem(fresh)
        if problem is not None:
            out.rejects.append(Reject(record, "invalid_row", problem))
            continue
        for row_table, key, row, doc in fresh:
            if row_table == SIGNALS:
                assert doc is not None
                state.pending_signals.append(doc)
            elif row_table in state.pending_docs:
                assert doc is not None
                state.pending_docs[row_table].append(doc)
            state.pending[row_table].append(row)
            state.pending_keys[row_table].append(key)
            state.pending_records[row_table].append(record)
            batch_keys.add(key)
    return out


def first_row_problem(items: Sequence[tuple[str, str, list[Any], dict[str, Any] | None]]) -> str | None:
    """The first row of one record's ``rows_of`` the warehouse could not store faithfully, as "table: why"."""
    trades = [row for table, _, row, _ in items if table == TRADES]
    trusted = bool(trades) and trades_certainly_fine(trades)
    for table, _, row, _ in items:
        if trusted and table == TRADES:
            continue
        problem = row_problem(table, row)
        if problem is not None:
            return f"{table}: {problem}"
    return None


def row_problem(table: str, row: Sequence[Any]) -> str | None:
    """Why the warehouse could not store ``row`` faithfully (a NaN Float64, an out-of-range integer...), or None.

    Checked before insert, against the column types of the DDL, so one bad value is dead-lettered on its own
    instead of failing the whole insert (JSON has no NaN: it would arrive as null and the insert would fail).
    The common case (every value fine) runs one precompiled predicate per column; ``value_problem`` explains.
    """
    for ok, value in zip(_CHECKS[table], row, strict=True):
        if not ok(value):
            break
    else:
        return None
    for name, value in zip(TABLE_COLUMNS[table], row, strict=True):
        problem = value_problem(COLUMN_TYPES[table][name], value)
        if problem is not None:
            return f"{name} = {value!r:.80}: {problem}"
    return None


Check = Callable[[Any], bool]


def _is_float(v: Any) -> bool:
    return (type(v) is float and v - v == 0.0) or type(v) is int  # v - v is NaN for NaN and +-inf


def _is_str(v: Any) -> bool:
    return type(v) is str


def _never(v: Any) -> bool:
    return False


@cache
def checker(column_type: str) -> Check:
    """A predicate with ``value_problem(column_type, v) is None`` semantics, without building messages."""
    base, _ = _unwrap(column_type, "LowCardinality")
    base, nullable = _unwrap(base, "Nullable")
    item_type, is_array = _unwrap(base, "Array")
    if is_array:
        item = checker(item_type)
        inner: Check = lambda v: type(v) is list and all(map(item, v))  # noqa: E731
    elif base in ("Float64", "Float32"):
        inner = _is_float
    elif (match := _INT_TYPE.match(base)) is not None:
        bits = int(match.group(2))
        low, high = (0, 2**bits - 1) if match.group(1) else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        inner = lambda v: type(v) is int and low <= v <= high  # noqa: E731
    elif base == "String":
        inner = _is_str
    else:
        inner = _never
    if nullable:
        return lambda v: v is None or inner(v)
    return inner


_INT_TYPE = re.compile(r"^(U?)Int(8|16|32|64)$")


def _unwrap(column_type: str, wrapper: str) -> tuple[str, bool]:
    if column_type.startswith(f"{wrapper}(") and column_type.endswith(")"):
        return column_type[len(wrapper) + 1:-1], True
    return column_type, False


def value_problem(column_type: str, value: Any) -> str | None:
    base, _ = _unwrap(column_type, "LowCardinality")
    base, nullable = _unwrap(base, "Nullable")
    if nullable and value is None:
        return None
    item_type, is_array = _unwrap(base, "Array")
    if is_array:
        return _array_problem(column_type, item_type, value)
    if base in ("Float64", "Float32"):
        return _float_problem(column_type, value)
    match = _INT_TYPE.match(base)
    if match is not None:
        return _int_problem(column_type, value, unsigned=bool(match.group(1)), bits=int(match.group(2)))
    known = base == "String"
    if known and not isinstance(value, str):
        return f"{column_type} needs a string"
    return None if known else f"no check for column type {column_type}"


def _array_problem(column_type: str, item_type: str, value: Any) -> str | None:
    if not isinstance(value, list):
        return f"{column_type} needs a list"
    return next((f"item {v!r:.40}: {p}" for v in value if (p := value_problem(item_type, v)) is not None), None)


def _float_problem(column_type: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{column_type} needs a number"
    return None if math.isfinite(value) else f"{column_type} must be finite"


def _int_problem(column_type: str, value: Any, *, unsigned: bool, bits: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{column_type} needs an integer"
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return None if low <= value <= high else f"outside {column_type} [{low}, {high}]"


_CHECKS: Final[Mapping[str, tuple[Check, ...]]] = MappingProxyType({
    table: tuple(checker(COLUMN_TYPES[table][c]) for c in columns) for table, columns in TABLE_COLUMNS.items()})
