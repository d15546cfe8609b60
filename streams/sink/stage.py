"""Sink stage: run the pure core, then write its rows to the warehouse and Redis before offsets are committed.

Order inside one ``process`` call: core -> insert signals -> Redis (latest hash, recent list, pub/sub) ->
insert outcomes -> insert dead letters. The runner commits offsets only after ``process`` returns, so a batch
is committed only once everything in it is stored.

Failure policy:

* Warehouse: each insert is retried with backoff; if it still fails, ``SinkWriteError`` is raised. It is a
  ``FatalStageError``: the runner would otherwise isolate the failure by dead-lettering records one by one,
  which during a warehouse outage would divert every good record to the DLQ. Instead nothing is committed,
  the stage exits, the supervisor restarts it, and the batch is read again.
* Redis is a cache for the live dashboard, not the record: a failure is logged and counted, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import redis
from google.protobuf.message import Message

from streams.runtime.clock import Clock
from streams.runtime.core import FatalStageError, InRecord, Outputs, StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic
from streams.sink import core
from streams.sink.core import TABLE_COLUMNS, SinkState
from streams.storage.cache import SignalCache, open_redis
from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse

log = logging.getLogger("surge.sink")

# Seconds to wait before each retry: rides out a warehouse restart (~8 s in all) before giving up on a batch.
RETRY_DELAYS_S: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


class SinkWriteError(FatalStageError):
    """The warehouse did not take a batch; see the module docstring."""


@dataclass
class SinkRuntime:
    """The pure core's state plus the clients it is flushed to."""

    warehouse: Warehouse
    redis: redis.Redis
    state: SinkState = field(default_factory=SinkState)
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S
    sleep: Callable[[float], None] = time.sleep
    redis_failures: int = 0


def with_retries(rt: SinkRuntime, what: str, fn: Callable[[], Any]) -> Any:
    """Call ``fn``; on failure wait ``retry_delays_s[i]`` and try again; raise SinkWriteError when all fail."""
    attempts = len(rt.retry_delays_s) + 1
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1:
                raise SinkWriteError(f"{what} failed after {attempts} attempt(s): {exc}") from exc
            log.warning("%s failed (attempt %d/%d): %s", what, attempt + 1, attempts, exc)
            rt.sleep(rt.retry_delays_s[attempt])
    raise AssertionError("unreachable")


def write_table(rt: SinkRuntime, table: str) -> None:
    rows = rt.state.pending[table]
    if rows:
        with_retries(rt, f"insert into {table}", lambda: rt.warehouse.insert(table, rows, TABLE_COLUMNS[table]))
    rt.state.mark_written(table)


def publish_signals(rt: SinkRuntime, docs: Sequence[dict[str, Any]]) -> None:
    if not docs:
        return
    try:
        SignalCache(rt.redis).publish(docs)
    except redis.RedisError as exc:
        rt.redis_failures += 1
        log.warning("redis update of %d signal(s) failed: %s", len(docs), exc)


def flush(rt: SinkRuntime) -> None:
    """Write everything pending; raises SinkWriteError (pending dropped, to be re-read) if the warehouse fails."""
    state = rt.state
    try:
        docs = state.pending_signals
        state.pending_signals = []
        write_table(rt, core.SIGNALS)
        publish_signals(rt, docs)  # only after the signals are stored: Redis never shows an unsaved signal
        write_table(rt, core.OUTCOMES)
        write_table(rt, core.DEAD_LETTERS)
    except Exception:
        state.clear_pending()
        raise


def process(batch: Sequence[InRecord[Message]], rt: SinkRuntime, clock: Clock) -> Outputs:
    try:
        outputs = core.process(batch, rt.state, clock)
    except Exception:
        rt.state.clear_pending()  # the runner retries record by record; start those retries clean
        raise
    flush(rt)
    return outputs


def make_runtime(settings: Settings) -> SinkRuntime:
    """Open the warehouse (creating the schema if missing) and Redis; called in the stage process."""
    warehouse = open_warehouse(settings.warehouse_url(), settings.clickhouse_database)
    client = open_redis(settings.redis_connection_url())
    rt = SinkRuntime(warehouse=warehouse, redis=client)
    try:
        with_retries(rt, "schema set-up", lambda: apply_ddl(warehouse, settings.clickhouse_database))
    except Exception:
        close_runtime(rt)
        raise
    return rt


def close_runtime(rt: SinkRuntime) -> None:
    rt.warehouse.close()
    rt.redis.close()


def spec(settings: Settings) -> StageSpec[SinkRuntime]:
    return StageSpec(
        name="sink",
        input_topics=(Topic.SIGNALS, Topic.OUTCOMES, Topic.DLQ),
        make_state=lambda: make_runtime(settings),
        process=process,
        on_close=close_runtime,
        batch_max=settings.sink_batch_max,
        batch_timeout_ms=settings.sink_flush_ms,
        fetch_wait_max_ms=settings.sink_fetch_wait_max_ms,
    )
