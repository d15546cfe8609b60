"""Sink stage: the pure core turns records into rows; ``flush`` writes them at commit time.

The runner calls ``process`` (pure: rows are validated against the DDL's column types and queued, bad ones
rejected to dlq.v1) and then ``flush``, before the batch's offsets can be committed. Order inside a flush:
insert signals -> Redis (latest hash, recent list, pub/sub) -> insert outcomes -> insert dead letters ->
insert predictions -> Redis (latest per instrument, SET EX) -> insert features -> insert book tops -> Redis
(latest per instrument) -> insert trades (each insert also fills the rollup views of ``schemas/clickhouse``).

Topics: signals.v1, outcomes.v1, dlq.v1, and (each by a setting, on by default) predictions.v1, features.v1
and ticks.v1. One insert per table per flush: a batch of ``SURGE_SINK_BATCH_MAX`` records (or what arrived in
``SURGE_SINK_FLUSH_MS``); a tick batch carries tens of trades, so market-data inserts run to 5k-20k rows.

Failure policy:

* Warehouse down (``WarehouseUnavailable``: connection refused, timeout, 5xx): ``DownstreamUnavailable`` is raised,
  the runner pauses the consumer, reports unhealthy, and retries the same flush with backoff for as long as the
  outage lasts. What a flush already wrote stays written (and de-duplicated); nothing is dropped or committed.
* Warehouse refuses an insert (any other ``WarehouseError``): the batch is bisected until the refused rows are
  found; they go to dlq.v1 with the warehouse's reason and every other row is stored.
* Redis is a cache for the live dashboard, not the record: a failure is logged and counted, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis
from google.protobuf.message import Message

from streams.runtime.clock import Clock
from streams.runtime.core import DownstreamUnavailable, InRecord, Outputs, Reject, StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.sink import core
from streams.sink.core import TABLE_COLUMNS, SinkState
from streams.storage.cache import BOOK, PREDICTION, HotCache, SignalCache, open_redis
from streams.storage.warehouse import (
    DEFAULT_TTL_DAYS,
    Warehouse,
    WarehouseError,
    WarehouseUnavailable,
    apply_ddl,
    open_warehouse_from,
    settings_ttl_days,
)

log = logging.getLogger("surge.sink")

@dataclass
class SinkRuntime:
    """The pure core's state plus the clients it is flushed to."""

    warehouse: Warehouse
    redis: redis.Redis
    state: SinkState = field(default_factory=SinkState)
    redis_failures: int = 0
    database: str | None = None  # set: the schema is created (idempotently) before the first insert
    ttl_days: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TTL_DAYS))
    cache_ttl_s: int = 5
    hot: HotCache | None = None

    def hot_cache(self) -> HotCache:
        if self.hot is None:
            self.hot = HotCache(self.redis, ttl_s=self.cache_ttl_s)
        return self.hot


def publish_signals(rt: SinkRuntime, docs: Sequence[dict[str, object]]) -> None:
    try:
        SignalCache(rt.redis).publish(docs)
    except redis.RedisError as exc:
        rt.redis_failures += 1
        log.warning("redis update of %d signal(s) failed: %s", len(docs), exc)


LATEST_KINDS = {core.PREDICTIONS: PREDICTION, core.BOOK_TOPS: BOOK}


def publish_latest(rt: SinkRuntime, table: str, docs: Sequence[dict[str, object]]) -> None:
    try:
        rt.hot_cache().put_latest(LATEST_KINDS[table], docs)
    except redis.RedisError as exc:
        rt.redis_failures += 1
        log.warning("redis update of the latest %s failed: %s", table, exc)


def insert_rows(rt: SinkRuntime, table: str, indices: list[int]) -> None:
    """Insert the pending rows at ``indices``; bisect a refused insert down to the rows the warehouse refuses,
    which are queued on ``state.refused``. Rows written are marked at once, so a retry after an outage
    resumes where this one stopped."""
    state = rt.state
    rows = [state.pending[table][i] for i in indices]
    try:
        rt.warehouse.insert(table, rows, TABLE_COLUMNS[table])
    except WarehouseUnavailable as exc:
        raise DownstreamUnavailable(f"insert into {table}: {exc}") from exc
    except WarehouseError as exc:
        if len(indices) == 1:
            record = state.pending_records[table][indices[0]]
            state.refused.append(Reject(record, "warehouse_rejected", f"{table}: {exc}"[:2000]))
            state.done[table].add(indices[0])
            return
        mid = len(indices) // 2
        insert_rows(rt, table, indices[:mid])
        insert_rows(rt, table, indices[mid:])
        return
    keys = state.pending_keys[table]
    state.written.add_many(keys[i] for i in indices)
    state.done[table].update(indices)
    if table == core.SIGNALS:  # only after the signals are stored: Redis never shows an unsaved signal
        publish_signals(rt, [state.pending_signals[i] for i in indices])
    elif table in LATEST_KINDS:
        publish_latest(rt, table, [state.pending_docs[table][i] for i in indices])


def write_table(rt: SinkRuntime, table: str) -> None:
    state = rt.state
    todo = [i for i in range(len(state.pending[table])) if i not in state.done[table]]
    try:
        if todo:
            insert_rows(rt, table, todo)
    finally:
        state.drop_pending(table, state.done[table])
        state.done[table] = set()


def ensure_schema(rt: SinkRuntime) -> None:
    if rt.database is None:
        return
    try:
        apply_ddl(rt.warehouse, rt.database, rt.ttl_days)
    except WarehouseUnavailable as exc:
        raise DownstreamUnavailable(f"schema set-up: {exc}") from exc
    rt.database = None


def flush(rt: SinkRuntime) -> list[Reject]:
    """Write everything pending (see the module docstring); returns the rows the warehouse refused."""
    ensure_schema(rt)
    for table in TABLE_COLUMNS:  # signals first, bulky market data last
        write_table(rt, table)
    refused, rt.state.refused = rt.state.refused, []
    return refused


def process(batch: Sequence[InRecord[Message]], rt: SinkRuntime, clock: Clock) -> Outputs:
    return core.process(batch, rt.state, clock)


def checkpoint(rt: SinkRuntime) -> Callable[[], None]:
    """Flush empties the pending rows after every batch, so undoing a failed batch means dropping its rows."""
    before = {table: len(rows) for table, rows in rt.state.pending.items()}

    def restore() -> None:
        for table, n in before.items():
            rt.state.drop_pending(table, range(n, len(rt.state.pending[table])))

    return restore


def make_runtime(settings: Settings) -> SinkRuntime:
    """Open the warehouse and Redis clients (nothing is contacted yet); called in the stage process."""
    warehouse = open_warehouse_from(settings)
    client = open_redis(settings.redis_connection_url())
    # The schema is applied by the first flush, so a warehouse that is down at start is ridden out like any
    # other outage (consumer paused, retried without limit) instead of failing the stage.
    return SinkRuntime(warehouse=warehouse, redis=client, database=settings.clickhouse_database,
                       ttl_days=settings_ttl_days(settings), cache_ttl_s=settings.cache_ttl_s)


def input_topics(settings: Settings) -> tuple[Topic, ...]:
    topics = [Topic.SIGNALS, Topic.OUTCOMES, Topic.DLQ]
    if settings.sink_store_predictions:
        topics.append(Topic.PREDICTIONS)
    if settings.sink_store_features:
        topics.append(Topic.FEATURES)
    if settings.sink_store_ticks:
        topics.append(Topic.TICKS)
    return tuple(topics)


def close_runtime(rt: SinkRuntime) -> None:
    rt.warehouse.close()
    rt.redis.close()


def spec(settings: Settings) -> StageSpec[SinkRuntime]:
    return StageSpec(
        name="sink",
        input_topics=input_topics(settings),
        make_state=lambda context: make_runtime(context.settings),
        process=process,
        on_close=close_runtime,
        flush=flush,
        checkpoint=checkpoint,
        batch_max=settings.sink_batch_max,
        batch_timeout_ms=settings.sink_flush_ms,
        fetch_wait_max_ms=settings.sink_fetch_wait_max_ms,
    )
