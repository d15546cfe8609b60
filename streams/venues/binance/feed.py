"""The Binance live feed: WebSocket connections + REST -> the venue-neutral ingest core -> the source runner.

Frames are decoded by the Binance codec and processed every few milliseconds on the asyncio loop, snapshot and
backfill requests become REST tasks, and outputs go to the runtime's source runner. After a reconnect the
connection's books are marked resyncing and re-snapshotted once, and trades since the last one seen are
backfilled, so a dropped connection loses no trade. While the bus falls behind, processing pauses; frames that
pile up beyond ``MAX_FRAMES`` are dropped and every book resynced.

Live universe (``--top N``): every ``SURGE_TOP_REFRESH_S`` the ranker is asked again; symbols that left the top N
are flushed and unsubscribed, new ones are subscribed on connections with room (or on new connections), and the
other streams never stop. Each ranking is handed to ``on_universe`` (run_live: the Redis key
``surge:universe:<venue>``, for the gateway's ``/symbols``).

Book audits (``SURGE_BOOK_AUDIT_INTERVAL_S``): every symbol's book is compared with a ``AUDIT_LIMIT``-level REST
snapshot at the same update id (``core.audit_snapshot``), one symbol after another, staggered over the interval.
They spend at most ``AUDIT_BUDGET_SHARE`` of ingest's REST weight budget, so snapshots and trade backfills always
have the rest; with many symbols the interval is stretched to fit (logged once), and an audit that would break the
share is put off (``surge_ingest_book_audits_deferred_total``).

Open interest (USD-M, ``SURGE_OPEN_INTEREST_INTERVAL_S``): every symbol's REST ``openInterest`` is polled on the
staggered schedule of ``open_interest.OpenInterestSchedule`` (within ingest's REST weight budget; polls without
headroom are put off, ``surge_ingest_open_interest_deferred_total``), and each sample goes on the symbol's next
TickBatch (``core.apply_open_interest``). Liquidations arrive on the ``forceOrder`` stream like any other frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import orjson
from prometheus_client import Counter, Gauge

from streams.ingest import core
from streams.ingest.config import IngestConfig
from streams.ingest.core import STAGE, Frame, IngestOutputs, TradeGap
from streams.ingest.quality import IngestQuality, health_detail
from streams.runtime.clock import Clock
from streams.runtime.observability import HealthState, StageMetrics
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner
from streams.venues.binance.codec import CODEC
from streams.venues.binance.open_interest import OpenInterestSchedule
from streams.venues.binance.rest import BinanceRest, RestError
from streams.venues.binance.spec import VenueSpec, base_urls, venue_spec
from streams.venues.binance.ws import Backoff, ConnectionPlan, StreamConnection, plan_connections, route_plan

log = logging.getLogger("surge.venues.binance.feed")

LOOP_S = 0.005                 # process frames every 5 ms: well inside the 20 ms micro-batch window
EXPORT_EVERY_US = 1_000_000    # quality metrics and health detail refresh
MAX_BACKLOG = 2_000            # queued outputs at the publisher before processing pauses (broker slow or away)
MAX_FRAMES = 1_000_000         # frames waiting while paused before they are dropped and the books resynced
SNAPSHOT_RETRY_S = 0.5         # a snapshot older than the buffered stream is fetched again after this
AUDIT_LIMIT = 100              # levels per side of an audit snapshot (valid on both venues; weight 5 on both)
AUDIT_BUDGET_SHARE = 0.5       # audits run only while ingest's REST spending stays below this share of its budget
AUDIT_TICK_S = 0.25            # how often the audit schedule is looked at
OPEN_INTEREST_TICK_S = 0.25    # how often the open-interest schedule is looked at
UNIVERSE_KEY = "surge:universe:"  # + venue name: the followed symbols as JSON (run_live's publisher)

Ranker = Callable[[], Awaitable[list[str]]]
UniverseHook = Callable[[list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """The settings the live feed uses, resolved once: the core's (``ingest``) and the connections' own."""

    ingest: IngestConfig
    snapshot_limit: int
    symbols_per_connection: int
    ping_interval_s: float
    rollover_s: float
    backoff_max_s: float
    book_audit_interval_s: float = 0.0
    top_refresh_s: float = 0.0
    open_interest_interval_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveOptions:
        return cls(
            ingest=IngestConfig.from_settings(settings), snapshot_limit=settings.snapshot_limit,
            symbols_per_connection=settings.symbols_per_connection, ping_interval_s=settings.ws_ping_interval_s,
            rollover_s=settings.ws_rollover_s, backoff_max_s=settings.ws_backoff_max_s,
            book_audit_interval_s=settings.book_audit_interval_s, top_refresh_s=settings.top_refresh_s,
            open_interest_interval_s=settings.open_interest_interval_s)


class LiveFeed:
    """Binance WebSocket connections + REST -> the ingest core -> the source runner."""

    def __init__(self, spec: VenueSpec, ws_base: str, symbols: Sequence[str], options: LiveOptions, clock: Clock, *,
                 rest: BinanceRest, publisher: SourceRunner, metrics: StageMetrics, quality: IngestQuality,
                 health: HealthState, rng: random.Random | None = None, ranker: Ranker | None = None,
                 on_universe: UniverseHook | None = None) -> None:
        self.spec = spec
        self.ws_base = ws_base
        self.rng = rng
        self.ranker = ranker
        self.on_universe = on_universe
        self.symbols: list[str] = list(dict.fromkeys(symbols))
        self.options = options
        self.clock = clock
        self.rest = rest
        self.publisher = publisher
        self.metrics = metrics
        self.quality = quality
        self.health = health
        self.state = options.ingest.new_state(spec.venue, futures=spec.futures, sequence_base=clock.now_us(),
                                              codec=CODEC, audits=options.book_audit_interval_s > 0)
        for symbol in self.symbols:
            self.state.symbol_state(symbol)
        self.state.fixed_universe = True  # frames of a symbol just unsubscribed must not bring its state back
        self.frames: list[Frame] = []
        self.fatal = False
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._backfill_tasks: set[asyncio.Task[None]] = set()
        self._audit_tasks: dict[str, asyncio.Task[None]] = {}
        self._open_interest_tasks: dict[str, asyncio.Task[None]] = {}
        self.open_interest: OpenInterestSchedule | None = None
        if spec.open_interest_weight and options.open_interest_interval_s > 0:
            self.open_interest = OpenInterestSchedule(self.symbols, options.open_interest_interval_s,
                                                      spec.open_interest_weight, rest.budget, clock)
        self.plans = plan_connections(spec, ws_base, self.symbols, options.symbols_per_connection)
        self.connections = [self._connection(plan) for plan in self.plans]
        self._conn_stops: dict[StreamConnection, asyncio.Event] = {}
        self._conn_tasks: dict[StreamConnection, asyncio.Task[None]] = {}
        self._stop: asyncio.Event | None = None
        registry = metrics.registry
        self.metrics_connections = Gauge("surge_ingest_ws_connections", "Open WebSocket connections",
                                         registry=registry)
        self.metrics_connects = Counter("surge_ingest_ws_connects", "WebSocket connections opened",
                                        ["stage", "route", "kind"], registry=registry)
        self.metrics_connect_failures = Counter("surge_ingest_ws_connect_failures", "Failed WebSocket connects",
                                                ["stage", "route"], registry=registry)
        self.metrics_disconnects = Counter("surge_ingest_ws_disconnects", "WebSocket connections lost",
                                           ["stage", "route"], registry=registry)
        self.metrics_rollovers = Counter("surge_ingest_ws_rollovers", "Proactive connection rollovers",
                                         ["stage", "route"], registry=registry)
        self.metrics_audits_deferred = Counter("surge_ingest_book_audits_deferred",
                                               "Book audits put off to stay within their share of the REST budget",
                                               ["stage"], registry=registry)
        self.metrics_open_interest_deferred = Counter(
            "surge_ingest_open_interest_deferred", "Open-interest polls put off to stay within the REST budget",
            ["stage"], registry=registry)
        self.metrics_universe = Gauge("surge_ingest_universe_symbols", "Symbols followed", registry=registry)
        self.metrics_universe.set(len(self.symbols))
        self.metrics_universe_changes = Counter("surge_ingest_universe_changes",
                                                "Symbols added to or removed from the followed set",
                                                ["stage", "change"], registry=registry)
        self.metrics_overloads = Counter("surge_ingest_overloads", "Frames dropped because the bus fell behind",
                                         ["stage"], registry=registry)

    # --- connection callbacks (on the event loop) --------------------------------------------------------------

    def deliver(self, message: bytes, local_us: int) -> None:
        self.frames.append(("", message, local_us))

    def on_connected(self, conn: StreamConnection, *, reconnect: bool) -> None:
        route = conn.plan.route or "/"
        self.metrics_connects.labels(STAGE, route, "reconnect" if reconnect else "first").inc()
        self._update_connection_gauge()
        if not reconnect:
            log.info("connected %s (%d streams)", conn.plan.label, len(conn.plan.streams))
            return
        log.warning("reconnected %s: resyncing its books and backfilling its trades", conn.plan.label)
        self._process_pending()  # the old connection's frames first, so the marks below come after them
        symbols = conn.plan.symbols
        if conn.plan.carries_depth:
            for symbol in symbols:
                task = self._snapshot_tasks.pop(symbol, None)
                if task is not None:
                    task.cancel()  # taken before this connection buffered anything: useless now
            core.lose_sync(self.state, symbols, self.clock)
        if conn.plan.carries_trades:
            self._handle(core.resume_trades(self.state, symbols, self.clock), raw_events=0)

    def on_connect_failed(self, conn: StreamConnection) -> None:
        self.metrics_connect_failures.labels(STAGE, conn.plan.route or "/").inc()

    def on_disconnected(self, conn: StreamConnection) -> None:
        self.metrics_disconnects.labels(STAGE, conn.plan.route or "/").inc()
        self._update_connection_gauge()

    def on_rollover(self, conn: StreamConnection) -> None:
        self.metrics_rollovers.labels(STAGE, conn.plan.route or "/").inc()

    def _connection(self, plan: ConnectionPlan) -> StreamConnection:
        o = self.options
        return StreamConnection(plan, self, self.clock, ping_interval_s=o.ping_interval_s, rollover_s=o.rollover_s,
                                backoff_max_s=o.backoff_max_s, rng=self.rng)

    def _start_connection(self, conn: StreamConnection) -> None:
        """Run ``conn`` until the feed stops or the connection is retired (its symbols all left)."""
        own = self._conn_stops[conn] = asyncio.Event()
        stop = self._stop
        assert stop is not None

        async def run() -> None:
            watcher = asyncio.create_task(stop.wait())
            watcher.add_done_callback(lambda _: own.set())
            try:
                await conn.run(own)
            finally:
                watcher.cancel()

        self._conn_tasks[conn] = asyncio.create_task(run())

    def _update_connection_gauge(self) -> None:
        self.metrics_connections.set(sum(c.up for c in self.connections))

    # --- processing --------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: then close the connections, process what arrived and hand the rest to the publisher."""
        self._stop = stop
        for conn in self.connections:
            self._start_connection(conn)
        loops = []
        if self.options.book_audit_interval_s > 0 and self.state.symbols:
            loops.append(asyncio.create_task(self._audit_loop(stop)))
        if self.ranker is not None and self.options.top_refresh_s > 0:
            loops.append(asyncio.create_task(self._universe_loop(stop)))
        if self.open_interest is not None:
            loops.append(asyncio.create_task(self._open_interest_loop(stop)))
        try:
            await self._process_loop(stop)
        finally:
            stop.set()
            for event in self._conn_stops.values():
                event.set()
            await asyncio.gather(*self._conn_tasks.values(), *loops, return_exceptions=True)
            tasks = [*self._snapshot_tasks.values(), *self._backfill_tasks, *self._audit_tasks.values(),
                     *self._open_interest_tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._process_pending()
            flushed = core.flush(self.state, self.clock, force=True)
            self.publisher.submit(flushed.emits, flushed.rejects(), raw_events=0)
            self.quality.export(self.state)

    async def _process_loop(self, stop: asyncio.Event) -> None:
        next_export = self.clock.now_us()
        while not stop.is_set():
            await asyncio.sleep(LOOP_S)
            self.publisher.service()
            if self.publisher.failed:
                log.error("the bus refused our output; stopping so the supervisor restarts ingest")
                self.fatal = True
                return
            if self.publisher.backlog > MAX_BACKLOG:
                if len(self.frames) > MAX_FRAMES:
                    self._overload()
                continue  # let the broker catch up; frames keep arriving and wait
            self._process_pending()
            now = self.clock.now_us()
            if now >= next_export:
                next_export = now + EXPORT_EVERY_US
                self._export()

    def _process_pending(self) -> None:
        frames, self.frames = self.frames, []
        started = time.perf_counter()
        out = core.process(frames, self.state, self.clock)
        if frames:
            self.metrics.processing_seconds.labels(STAGE).observe(time.perf_counter() - started)
            self.metrics.events_in.labels(STAGE).inc(len(frames))
            self.metrics.batch_size.labels(STAGE).observe(len(frames))
        self._handle(out, raw_events=len(frames))

    def _handle(self, out: IngestOutputs, *, raw_events: int) -> None:
        for symbol in out.resync_requests:
            self._request_snapshot(symbol)
        for gap in out.trade_gaps:
            task = asyncio.create_task(self._backfill(gap))
            self._backfill_tasks.add(task)
            task.add_done_callback(self._backfill_tasks.discard)
        self.publisher.submit(out.emits, out.rejects(), raw_events=raw_events)

    def _overload(self) -> None:
        dropped = len(self.frames)
        self.frames = []
        log.error("OVERLOAD: the bus is %d outputs behind; dropped %d frames, resyncing every book",
                  self.publisher.backlog, dropped)
        self.metrics_overloads.labels(STAGE).inc()
        core.lose_sync(self.state, list(self.state.symbols), self.clock, reason="overload")

    def _export(self) -> None:
        self.quality.export(self.state)
        up = sum(c.up for c in self.connections)
        detail = health_detail(self.state)
        detail["connections"] = f"{up}/{len(self.connections)}"
        self.health.set_live(not self.publisher.failed, **detail)
        self.health.set_ready(up == len(self.connections) and not self.publisher.failed)

    # --- REST tasks --------------------------------------------------------------------------------------------

    def _request_snapshot(self, symbol: str) -> None:
        task = self._snapshot_tasks.get(symbol)
        if task is not None and not task.done():
            return
        self._snapshot_tasks[symbol] = asyncio.create_task(self._snapshot(symbol))

    async def _snapshot(self, symbol: str) -> None:
        backoff = Backoff(base_s=0.5, cap_s=self.options.backoff_max_s)
        while True:
            try:
                body = await self.rest.depth(symbol, self.options.snapshot_limit)
            except (RestError, httpx.HTTPError) as exc:
                delay = backoff.next()
                log.warning("snapshot of %s failed (%s); retrying in %.1fs", symbol, exc, delay,
                            extra={"symbol": symbol})
                await asyncio.sleep(delay)
                continue
            self._process_pending()  # diffs received while the snapshot was in flight go into the buffer first
            out = core.apply_snapshot(self.state, symbol, body, self.clock)
            again = symbol in out.resync_requests
            out.resync_requests = [s for s in out.resync_requests if s != symbol]
            self._handle(out, raw_events=0)
            if not again:
                if self.state.symbols[symbol].book.synced:
                    log.info("book %s synced at update %d", symbol, self.state.symbols[symbol].book.last_update_id,
                             extra={"symbol": symbol})
                return
            log.info("snapshot of %s is older than the buffered stream; fetching another", symbol,
                     extra={"symbol": symbol})
            await asyncio.sleep(SNAPSHOT_RETRY_S)

    # --- live universe -----------------------------------------------------------------------------------------

    async def _universe_loop(self, stop: asyncio.Event) -> None:
        assert self.ranker is not None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.options.top_refresh_s)
            if stop.is_set():
                return
            try:
                ranked = await self.ranker()
            except (RestError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
                log.warning("could not re-rank the universe (%s); keeping %d symbols", exc, len(self.symbols))
                continue
            if ranked:
                await self.set_universe(ranked)

    async def set_universe(self, symbols: Sequence[str]) -> None:
        """Follow exactly ``symbols`` from now on, changing only what changed."""
        wanted = list(dict.fromkeys(symbols))
        removed = [s for s in self.symbols if s not in wanted]
        added = [s for s in wanted if s not in self.symbols]
        if removed or added:
            self._process_pending()  # frames of the leaving symbols go out first
            for symbol in removed:
                for tasks in (self._snapshot_tasks, self._audit_tasks, self._open_interest_tasks):
                    task = tasks.pop(symbol, None)
                    if task is not None:
                        task.cancel()
            if removed:
                self._handle(core.drop_symbols(self.state, removed, self.clock), raw_events=0)
                self.quality.forget(removed)
            core.add_symbols(self.state, added)
            self.symbols = [s for s in self.symbols if s not in removed] + added
            if self.open_interest is not None:
                self.open_interest.set_symbols(self.symbols)
            await self._replan(removed, added)
            self.metrics_universe.set(len(self.symbols))
            self.metrics_universe_changes.labels(STAGE, "added").inc(len(added))
            self.metrics_universe_changes.labels(STAGE, "removed").inc(len(removed))
            self.health.set_live(True, symbols=",".join(self.symbols))
            log.info("universe: +%s -%s (%d symbols)", ",".join(added) or "none", ",".join(removed) or "none",
                     len(self.symbols))
        if self.on_universe is not None:
            await self.on_universe(list(self.symbols))

    async def _replan(self, removed: Sequence[str], added: Sequence[str]) -> None:
        """Unsubscribe ``removed`` and subscribe ``added`` on the running connections (new ones for what does not
        fit); a connection left without symbols is retired."""
        per = self.options.symbols_per_connection
        groups: dict[tuple[str, ...], list[StreamConnection]] = {}
        for conn in self.connections:
            groups.setdefault(conn.plan.symbols, []).append(conn)
        waiting = list(added)
        for key, conns in groups.items():
            kept = [s for s in key if s not in removed]
            room = max(0, per - len(kept))
            symbols, waiting = kept + waiting[:room], waiting[room:]
            if not symbols:
                for conn in conns:
                    self._conn_stops[conn].set()
                    self.connections.remove(conn)
                continue
            if tuple(symbols) != key:
                for conn in conns:
                    await conn.resubscribe(route_plan(self.spec, self.ws_base, conn.plan.route, symbols))
        for plan in plan_connections(self.spec, self.ws_base, waiting, per):
            conn = self._connection(plan)
            self.connections.append(conn)
            self._start_connection(conn)
        self.plans = [c.plan for c in self.connections]
        self._update_connection_gauge()

    # --- book audits --------------------------------------------------------------------------------------------

    def audit_interval_s(self) -> float:
        """The audit interval per symbol: the setting, stretched when the symbols' audits would need more than
        ``AUDIT_BUDGET_SHARE`` of the REST budget."""
        interval = self.options.book_audit_interval_s
        weight = self.spec.depth_weight(AUDIT_LIMIT)
        per_minute = self.rest.budget.per_minute * AUDIT_BUDGET_SHARE
        needed_s = len(self.state.symbols) * weight * 60.0 / per_minute if per_minute > 0 else float("inf")
        return max(interval, needed_s)

    async def _audit_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.audit_interval_s()
        symbols = list(self.state.symbols)
        if interval > self.options.book_audit_interval_s:
            log.warning("book audits of %d symbols every %.0fs would exceed %.0f%% of the REST weight budget; "
                        "auditing each every %.0fs", len(symbols), self.options.book_audit_interval_s,
                        AUDIT_BUDGET_SHARE * 100, interval)
        weight = self.spec.depth_weight(AUDIT_LIMIT)
        start = loop.time()
        due = {s: start + interval * (i + 1) / len(symbols) for i, s in enumerate(symbols)}  # staggered
        while not stop.is_set():
            await asyncio.sleep(AUDIT_TICK_S)
            now = loop.time()
            if due.keys() != self.state.symbols.keys():  # the universe changed
                interval = self.audit_interval_s()
                due = {s: due.get(s, now + interval * (0.5 + 0.5 * random.random())) for s in self.state.symbols}
            for symbol, at in due.items():
                if at > now:
                    continue
                due[symbol] = max(at + interval, now + AUDIT_TICK_S)
                running = self._audit_tasks.get(symbol)
                snapshot = self._snapshot_tasks.get(symbol)
                if ((running is not None and not running.done()) or (snapshot is not None and not snapshot.done())
                        or not self.state.symbols[symbol].book.synced):
                    continue  # a resync is under way: the book is about to be a fresh snapshot anyway
                if not self.rest.budget.headroom(weight, AUDIT_BUDGET_SHARE):
                    self.metrics_audits_deferred.labels(STAGE).inc()
                    due[symbol] = now + interval / 4
                    continue
                self._audit_tasks[symbol] = asyncio.create_task(self._audit(symbol))

    async def _audit(self, symbol: str) -> None:
        try:
            body = await self.rest.depth(symbol, AUDIT_LIMIT)
        except (RestError, httpx.HTTPError) as exc:
            log.info("book audit snapshot of %s failed: %s", symbol, exc, extra={"symbol": symbol})
            return
        self._process_pending()  # the diffs received meanwhile first: the book is as close to the snapshot as can be
        st = self.state.symbols[symbol]
        before = st.audit_mismatches
        out = core.audit_snapshot(self.state, symbol, body, self.clock)
        if st.audit_mismatches > before:
            log.warning("book audit of %s: the local book differs from the REST snapshot at update %d; resyncing",
                        symbol, st.book.last_update_id, extra={"symbol": symbol})
        self._handle(out, raw_events=0)

    # --- open interest (USD-M) -------------------------------------------------------------------------------

    async def _open_interest_loop(self, stop: asyncio.Event) -> None:
        schedule = self.open_interest
        assert schedule is not None
        log.info("open interest of %d symbols every %.0fs", len(schedule.due), schedule.interval_us() / 1e6)
        deferred = 0
        while not stop.is_set():
            await asyncio.sleep(OPEN_INTEREST_TICK_S)
            for symbol in schedule.take_due():
                running = self._open_interest_tasks.get(symbol)
                if running is not None and not running.done():
                    continue  # the last poll is still out: skip a turn rather than pile up
                self._open_interest_tasks[symbol] = asyncio.create_task(self._poll_open_interest(symbol))
            if schedule.deferred > deferred:
                self.metrics_open_interest_deferred.labels(STAGE).inc(schedule.deferred - deferred)
                deferred = schedule.deferred

    async def _poll_open_interest(self, symbol: str) -> None:
        try:
            body = await self.rest.open_interest(symbol)
        except (RestError, httpx.HTTPError) as exc:
            log.info("open interest of %s failed: %s", symbol, exc, extra={"symbol": symbol})
            return
        self._process_pending()  # frames received meanwhile first: the sample goes on the next batch
        self._handle(core.apply_open_interest(self.state, symbol, body, self.clock), raw_events=0)

    async def _backfill(self, gap: TradeGap) -> None:
        try:
            trades = await self.rest.trades_since(gap.symbol, gap.first_id, gap.last_id)
        except (RestError, httpx.HTTPError) as exc:
            log.warning("trade backfill of %s from id %d failed: %s", gap.symbol, gap.first_id, exc,
                        extra={"symbol": gap.symbol})
            trades = []
        self._process_pending()  # live trades received meanwhile are held with the gap: order is kept
        out = core.apply_trade_backfill(self.state, gap.symbol, trades, self.clock)
        self._handle(out, raw_events=0)


# --- entry point -------------------------------------------------------------------------------------------------


async def resolve_symbols(rest: BinanceRest, settings: Settings) -> list[str]:
    """``--top N`` by 24 h quote volume (or volatility), else SURGE_SYMBOLS checked against exchangeInfo where
    reachable."""
    if settings.top_n:
        backoff = Backoff(cap_s=settings.ws_backoff_max_s)
        for _ in range(5):
            try:
                top = await rest.top_symbols(settings.top_n, settings.top_quote_asset, settings.top_rank_by)
            except (RestError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
                log.warning("could not rank symbols by volume (%s); retrying", exc)
                await asyncio.sleep(backoff.next())
                continue
            log.info("top %d %s symbols by 24h %s: %s", settings.top_n, rest.spec.name, settings.top_rank_by,
                     ",".join(top))
            return top
        raise RuntimeError("could not rank symbols by 24h quote volume: Binance REST unreachable")
    wanted = list(dict.fromkeys(settings.symbol_list))
    try:
        info = await rest.exchange_info()
    except (RestError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
        log.warning("exchangeInfo unavailable (%s); using %s unchecked", exc, ",".join(wanted))
        return wanted
    trading = {str(s.get("symbol")) for s in info.get("symbols", []) if s.get("status") == "TRADING"}
    unknown = [s for s in wanted if s not in trading]
    if unknown:
        log.error("not trading on Binance %s, left out: %s", rest.spec.name, ",".join(unknown))
    return [s for s in wanted if s in trading]


def universe_publisher(settings: Settings, venue: str, clock: Clock) -> UniverseHook:
    """Publish the followed symbols to Redis (``surge:universe:<venue>``: JSON with the symbols, the ranking and
    the time), expiring after three refresh cycles so a dead ingest does not leave a stale universe. A Redis that
    cannot be reached is logged and skipped; ingest goes on."""
    from redis.exceptions import RedisError

    from streams.storage.cache import open_redis

    client = open_redis(settings.redis_connection_url())
    key = UNIVERSE_KEY + venue
    ttl_s = max(60, round(3 * settings.top_refresh_s)) if settings.top_refresh_s else None
    failed = False

    async def publish(symbols: list[str]) -> None:
        nonlocal failed
        doc = orjson.dumps({"venue": venue, "symbols": symbols, "top_n": settings.top_n,
                            "rank_by": settings.top_rank_by, "updated_us": clock.now_us()})
        try:
            await asyncio.to_thread(client.set, key, doc, ex=ttl_s)
            failed = False
        except (RedisError, OSError) as exc:
            if not failed:
                log.warning("could not publish the universe to Redis (%s); retrying every refresh", exc)
            failed = True

    return publish


async def run_live(settings: Settings, clock: Clock, stop: threading.Event, *, publisher: SourceRunner,
                   metrics: StageMetrics, quality: IngestQuality, health: HealthState) -> int:
    """Run the live Binance source until ``stop``; 0 on a clean stop, 1 when the bus failed, 2 on bad config."""
    spec = venue_spec(settings.venue)
    spec.check_limit(settings.snapshot_limit)
    ws_base, rest_base = base_urls(settings, spec)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per REST call otherwise
    requests = Counter("surge_ingest_rest_requests", "Binance REST requests", ["stage", "path", "status"],
                       registry=metrics.registry)
    rest = BinanceRest(spec, rest_base, clock, weight_share=settings.rest_weight_share, requests=requests)
    try:
        try:
            symbols = await resolve_symbols(rest, settings)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 2
        if not symbols:
            log.error("no symbol to follow")
            return 2
        ranker: Ranker | None = None
        if settings.top_n:
            async def ranker() -> list[str]:
                return await rest.top_symbols(settings.top_n, settings.top_quote_asset, settings.top_rank_by)

        on_universe = universe_publisher(settings, spec.name, clock) if settings.top_n else None
        feed = LiveFeed(spec, ws_base, symbols, LiveOptions.from_settings(settings), clock, rest=rest,
                        publisher=publisher, metrics=metrics, quality=quality, health=health, ranker=ranker,
                        on_universe=on_universe)
        if on_universe is not None:
            await on_universe(symbols)
        log.info("ingest from LIVE Binance %s: %d symbols over %d connections (%s, REST %s)", spec.name, len(symbols),
                 len(feed.connections), ws_base, rest_base)
        health.set_live(True, source="live", venue=spec.name, symbols=",".join(symbols))
        loop_stop = asyncio.Event()

        async def watch_stop() -> None:
            while not stop.is_set() and not loop_stop.is_set():
                await asyncio.sleep(0.1)
            loop_stop.set()

        watcher = asyncio.create_task(watch_stop())
        await feed.run(loop_stop)
        watcher.cancel()
        return 1 if feed.fatal else 0
    finally:
        await rest.aclose()
