"""Binance live source: declarative venue specs, REST client, WebSocket connection manager and the live feed.

* ``VenueSpec`` says everything venue-specific in one place: REST paths and weights, stream names and on which
  routed WebSocket path each lives (USD-M serves depth/bookTicker on ``/public`` and trade/markPrice on
  ``/market``), the depth continuity rule (spot ``U == previous u + 1``, futures ``pu == previous u``), the
  per-connection stream limit and the per-minute REST weight limit.
* ``BinanceRest`` (httpx): depth snapshots, exchangeInfo, ticker/24hr (``--top N`` by quote volume), ping and
  trade backfill (``historicalTrades`` from an id where public, else the last 1000 ``trades``). A rolling-minute
  weight budget keeps it under a share of Binance's limit; 429/418 answers pause it for ``Retry-After``.
* ``StreamConnection`` (websockets): one combined-stream connection for up to ``symbols_per_connection`` symbols
  of one route; client pings (a missing pong drops it), reconnect with exponential backoff capped at
  ``ws_backoff_max_s`` and jitter, and a proactive rollover before Binance's 24 h cut: a replacement connects
  and buffers, then takes over when the old one closes, so nothing is lost or resynced (the core drops the
  overlap as duplicates).
* ``LiveFeed`` drives the pure core: frames are processed every few milliseconds on the asyncio loop, snapshot
  and backfill requests become REST tasks, and outputs go to the runtime's source runner. After a reconnect the
  connection's books are marked resyncing and re-snapshotted once, and trades since the last one seen are
  backfilled, so a dropped connection loses no trade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from prometheus_client import Counter, Gauge
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from schemas import common_pb2
from streams.ingest import core
from streams.ingest.core import STAGE, Frame, IngestOutputs, TradeGap
from streams.ingest.quality import IngestQuality, health_detail
from streams.runtime.clock import Clock
from streams.runtime.observability import HealthState, StageMetrics
from streams.runtime.settings import Settings
from streams.runtime.source import SourceRunner

log = logging.getLogger("surge.ingest.binance")

VenueName = Literal["spot", "usdm"]

LOOP_S = 0.005                 # process frames every 5 ms: well inside the 20 ms micro-batch window
EXPORT_EVERY_US = 1_000_000    # quality metrics and health detail refresh
MAX_BACKLOG = 2_000            # queued outputs at the publisher before processing pauses (broker slow or away)
MAX_FRAMES = 1_000_000         # frames waiting while paused before they are dropped and the books resynced
SNAPSHOT_RETRY_S = 0.5         # a snapshot older than the buffered stream is fetched again after this
ROLLOVER_OVERLAP_US = 1_000_000   # the replacement connection buffers this long after its first frame
ROLLOVER_WAIT_MAX_US = 15_000_000  # ... but no longer than this for a first frame (quiet symbols)
ROLLOVER_RETRY_S = 30.0
TRADES_PAGE = 1000             # Binance's maximum ``limit`` for trade lists
MAX_TRADE_PAGES = 20           # at most 20 000 trades backfilled per gap
MAX_MESSAGE_BYTES = 16 * 2**20
YIELD_EVERY = 64               # frames a reader takes in a row before letting other tasks run
# Quote-asset pairs of stablecoins: huge volume, no signal. Excluded from --top.
STABLECOINS = frozenset({"USDC", "FDUSD", "TUSD", "BUSD", "DAI", "USDP", "USDE", "USD1", "PYUSD", "EUR", "AEUR",
                         "EURI", "XUSD", "BFUSD", "RLUSD", "USDS"})


# --- venue specs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamKind:
    """One per-symbol stream: ``<symbol><suffix>``, served on WebSocket path ``route``."""

    name: str       # "trade" | "depth" | "bookTicker" | "markPrice"
    suffix: str     # "@trade", "@depth@100ms", ...
    route: str      # "" (spot) or "/public" | "/market" (USD-M routed paths)


@dataclass(frozen=True, slots=True)
class VenueSpec:
    name: VenueName
    venue: common_pb2.Venue
    futures: bool                          # depth continuity: pu == previous u (futures) or U == previous u + 1
    streams: tuple[StreamKind, ...]
    api: str                               # REST prefix: "/api/v3" or "/fapi/v1"
    depth_limits: tuple[int, ...] | None   # allowed snapshot limits; None: any up to 5000
    weight_limit_per_min: int              # Binance's REST request-weight limit per IP and minute
    max_streams_per_connection: int
    exchange_info_weight: int
    ticker_24hr_weight: int                # all symbols at once
    trades_weight: int                     # one page of historicalTrades / trades
    historical_trades_public: bool         # historicalTrades?fromId= without an API key

    @property
    def ping_path(self) -> str:
        return f"{self.api}/ping"

    def depth_weight(self, limit: int) -> int:
        if self.futures:
            return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250

    def check_limit(self, limit: int) -> int:
        if self.depth_limits is not None and limit not in self.depth_limits:
            raise ValueError(f"{self.name} depth snapshots allow limit in {self.depth_limits}, not {limit}")
        if not 1 <= limit <= 5000:
            raise ValueError(f"depth snapshot limit {limit} outside 1..5000")
        return limit


def venue_spec(name: str) -> VenueSpec:
    """The declarative description of one Binance venue."""
    if name == "spot":
        return VenueSpec(
            name="spot", venue=common_pb2.BINANCE_SPOT, futures=False,
            streams=(StreamKind("trade", "@trade", ""), StreamKind("depth", "@depth@100ms", ""),
                     StreamKind("bookTicker", "@bookTicker", "")),
            api="/api/v3", depth_limits=None, weight_limit_per_min=6000, max_streams_per_connection=1024,
            exchange_info_weight=20, ticker_24hr_weight=80, trades_weight=25, historical_trades_public=True)
    if name == "usdm":
        return VenueSpec(
            name="usdm", venue=common_pb2.BINANCE_USDM, futures=True,
            streams=(StreamKind("depth", "@depth@100ms", "/public"), StreamKind("bookTicker", "@bookTicker", "/public"),
                     StreamKind("trade", "@trade", "/market"), StreamKind("markPrice", "@markPrice@1s", "/market")),
            api="/fapi/v1", depth_limits=(5, 10, 20, 50, 100, 500, 1000), weight_limit_per_min=2400,
            max_streams_per_connection=200, exchange_info_weight=1, ticker_24hr_weight=40, trades_weight=5,
            historical_trades_public=False)
    raise ValueError(f"unknown Binance venue {name!r}; choose spot or usdm")


def base_urls(settings: Settings, spec: VenueSpec) -> tuple[str, str]:
    """(WebSocket base, REST base) of the venue, from the SURGE_BINANCE_* settings."""
    if spec.futures:
        return settings.binance_futures_ws_url.rstrip("/"), settings.binance_futures_rest_url.rstrip("/")
    return settings.binance_ws_url.rstrip("/"), settings.binance_rest_url.rstrip("/")


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """One combined-stream connection: its URL, the symbols it carries and what kinds of data."""

    route: str
    symbols: tuple[str, ...]
    streams: tuple[str, ...]
    url: str
    carries_depth: bool
    carries_trades: bool

    @property
    def label(self) -> str:
        return f"{self.route or '/'}[{self.symbols[0]}..{self.symbols[-1]}]"


def plan_connections(spec: VenueSpec, ws_base: str, symbols: Sequence[str],
                     per_connection: int) -> list[ConnectionPlan]:
    """Spread the symbols over connections: ``per_connection`` symbols each, one connection per route."""
    routes: dict[str, list[StreamKind]] = {}
    for kind in spec.streams:
        routes.setdefault(kind.route, []).append(kind)
    plans: list[ConnectionPlan] = []
    for i in range(0, len(symbols), per_connection):
        chunk = tuple(symbols[i:i + per_connection])
        for route, kinds in routes.items():
            streams = tuple(f"{s.lower()}{k.suffix}" for s in chunk for k in kinds)
            if len(streams) > spec.max_streams_per_connection:
                raise ValueError(f"{len(streams)} streams on one connection; {spec.name} allows "
                                 f"{spec.max_streams_per_connection}: lower SURGE_SYMBOLS_PER_CONNECTION")
            url = f"{ws_base.rstrip('/')}{route}/stream?streams={'/'.join(streams)}"
            names = {k.name for k in kinds}
            plans.append(ConnectionPlan(route, chunk, streams, url, "depth" in names, "trade" in names))
    return plans


def select_top_symbols(exchange_info: Mapping[str, Any], tickers: Sequence[Mapping[str, Any]], n: int, *,
                       quote_asset: str, futures: bool) -> list[str]:
    """The ``n`` trading symbols quoted in ``quote_asset`` with the largest 24 h quote volume.

    Futures: perpetual contracts only. Stablecoin-vs-stablecoin pairs are skipped (volume without signal).
    Ties are broken by name so the choice is deterministic.
    """
    eligible: set[str] = set()
    for info in exchange_info.get("symbols", []):
        if info.get("status") != "TRADING" or info.get("quoteAsset") != quote_asset:
            continue
        if info.get("baseAsset") in STABLECOINS:
            continue
        if futures and info.get("contractType") != "PERPETUAL":
            continue
        eligible.add(str(info["symbol"]))
    ranked: list[tuple[float, str]] = []
    for ticker in tickers:
        symbol = ticker.get("symbol")
        if symbol in eligible:
            try:
                ranked.append((-float(ticker["quoteVolume"]), str(symbol)))
            except (KeyError, TypeError, ValueError):
                continue
    ranked.sort()
    return [symbol for _, symbol in ranked[:n]]


# --- reconnect backoff -------------------------------------------------------------------------------------------


class Backoff:
    """Exponential reconnect delays: base, 2*base, ... capped at ``cap_s``; each scaled by a jitter in [0.5, 1]
    so many connections dropped together do not reconnect in lockstep."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 8.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


# --- REST --------------------------------------------------------------------------------------------------------


class RestError(Exception):
    def __init__(self, status: int, body: str, path: str) -> None:
        super().__init__(f"HTTP {status} from {path}: {body[:200]}")
        self.status = status


class WeightBudget:
    """Rolling one-minute REST weight budget: ``delay_s`` says how long to wait before spending ``weight``."""

    def __init__(self, per_minute: int, clock: Clock) -> None:
        self.per_minute = max(1, per_minute)
        self.clock = clock
        self._spent: deque[tuple[int, int]] = deque()  # (clock µs, weight)
        self._used = 0
        self.blocked_until_us = 0

    def delay_s(self, weight: int) -> float:
        now = self.clock.now_us()
        while self._spent and self._spent[0][0] <= now - 60_000_000:
            self._used -= self._spent.popleft()[1]
        if now < self.blocked_until_us:
            return (self.blocked_until_us - now) / 1e6
        if not self._spent or self._used + weight <= self.per_minute:
            return 0.0
        # Wait until enough of the oldest spending has left the window.
        need = self._used + weight - self.per_minute
        for at_us, spent in self._spent:
            need -= spent
            if need <= 0:
                return max(0.0, (at_us + 60_000_000 - now) / 1e6)
        return 60.0

    def spend(self, weight: int) -> None:
        self._spent.append((self.clock.now_us(), weight))
        self._used += weight

    def block(self, seconds: float) -> None:
        self.blocked_until_us = max(self.blocked_until_us, self.clock.now_us() + round(seconds * 1e6))


class BinanceRest:
    """The REST calls ingest needs, under one weight budget."""

    def __init__(self, spec: VenueSpec, base_url: str, clock: Clock, *, weight_share: float = 0.5,
                 client: httpx.AsyncClient | None = None, requests: Counter | None = None) -> None:
        self.spec = spec
        self.base_url = base_url.rstrip("/")
        self.budget = WeightBudget(int(spec.weight_limit_per_min * weight_share), clock)
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        self._requests = requests
        self._historical_ok = spec.historical_trades_public

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, params: Mapping[str, str | int] | None, weight: int) -> bytes:
        """GET ``path``; raises RestError on an error status (after honouring Retry-After on 429/418)."""
        while (delay := self.budget.delay_s(weight)) > 0:
            await asyncio.sleep(delay)
        self.budget.spend(weight)
        try:
            response = await self._client.get(self.base_url + path, params=params)
        except httpx.HTTPError:
            self._count(path, "error")
            raise
        self._count(path, str(response.status_code))
        if response.status_code in (418, 429):
            retry = float(response.headers.get("Retry-After", "60") or 60)
            log.error("Binance REST rate limit hit (%d) on %s; pausing REST for %.0fs", response.status_code, path,
                      retry)
            self.budget.block(retry)
        if response.status_code != 200:
            raise RestError(response.status_code, response.text, path)
        return response.content

    def _count(self, path: str, status: str) -> None:
        if self._requests is not None:
            self._requests.labels(STAGE, path, status).inc()

    async def ping(self) -> bool:
        try:
            await self.get(self.spec.ping_path, None, 1)
        except (RestError, httpx.HTTPError):
            return False
        return True

    async def depth(self, symbol: str, limit: int) -> bytes:
        """The raw REST snapshot; the core decodes it (no re-serialisation)."""
        return await self.get(f"{self.spec.api}/depth", {"symbol": symbol, "limit": limit},
                              self.spec.depth_weight(limit))

    async def exchange_info(self) -> dict[str, Any]:
        info = orjson.loads(await self.get(f"{self.spec.api}/exchangeInfo", None, self.spec.exchange_info_weight))
        if not isinstance(info, dict):
            raise RestError(200, "exchangeInfo is not an object", "exchangeInfo")
        return info

    async def ticker_24hr(self) -> list[dict[str, Any]]:
        tickers = orjson.loads(await self.get(f"{self.spec.api}/ticker/24hr", None, self.spec.ticker_24hr_weight))
        if not isinstance(tickers, list):
            raise RestError(200, "ticker/24hr is not a list", "ticker/24hr")
        return tickers

    async def top_symbols(self, n: int, quote_asset: str) -> list[str]:
        info, tickers = await self.exchange_info(), await self.ticker_24hr()
        return select_top_symbols(info, tickers, n, quote_asset=quote_asset, futures=self.spec.futures)

    async def trades_since(self, symbol: str, first_id: int, last_id: int | None) -> list[Any]:
        """Trades with id >= ``first_id`` (up to ``last_id`` if given), oldest first, as decoded JSON objects.

        ``historicalTrades?fromId=`` pages from the first missing id; where that needs an API key (USD-M) the
        most recent 1000 ``trades`` are the best available and older missing ids stay missing.
        """
        if self._historical_ok:
            records: list[Any] = []
            from_id = first_id
            try:
                for _ in range(MAX_TRADE_PAGES):
                    page = orjson.loads(await self.get(
                        f"{self.spec.api}/historicalTrades",
                        {"symbol": symbol, "fromId": from_id, "limit": TRADES_PAGE}, self.spec.trades_weight))
                    if not isinstance(page, list) or not page:
                        break
                    records.extend(page)
                    newest = page[-1].get("id") if isinstance(page[-1], dict) else None
                    if len(page) < TRADES_PAGE or not isinstance(newest, int) or (
                            last_id is not None and newest >= last_id):
                        break
                    from_id = newest + 1
                return records
            except RestError as exc:
                if exc.status not in (400, 401, 403):
                    raise
                log.warning("historicalTrades refused (%s); backfilling from recent trades only", exc)
                self._historical_ok = False
        recent = orjson.loads(await self.get(f"{self.spec.api}/trades", {"symbol": symbol, "limit": TRADES_PAGE},
                                             self.spec.trades_weight))
        return recent if isinstance(recent, list) else []


# --- WebSocket connections ---------------------------------------------------------------------------------------


class _Link:
    """One open WebSocket and the task reading it. Frames go to ``deliver``, or to a buffer while the link is a
    rollover replacement waiting to take over."""

    def __init__(self, ws: ClientConnection, deliver: Any, clock: Clock, *, buffering: bool = False) -> None:
        self.ws = ws
        self.deliver = deliver
        self.clock = clock
        self.buffer: list[tuple[bytes, int]] | None = [] if buffering else None
        self.frames = 0
        self.first_frame_us = 0
        self.opened_us = clock.now_us()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        ws, clock = self.ws, self.clock
        while True:
            message = await ws.recv(decode=False)
            local_us = clock.now_us()
            if isinstance(message, str):
                message = message.encode()
            if not self.frames:
                self.first_frame_us = local_us
            self.frames += 1
            if message.startswith(b'{"result"'):
                continue  # a SUBSCRIBE acknowledgement, not market data
            if self.buffer is not None:
                self.buffer.append((message, local_us))
            else:
                self.deliver(message, local_us)
            if not self.frames % YIELD_EVERY:
                # recv() does not suspend while frames are queued: let the processor run, or micro-batch
                # windows stretch under load.
                await asyncio.sleep(0)

    def go_live(self) -> None:
        """Hand the buffered frames over in order, then deliver directly (no await in between: no reordering)."""
        buffered, self.buffer = self.buffer or [], None
        for message, local_us in buffered:
            self.deliver(message, local_us)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def closed_reason(self) -> str:
        if self.task is None or not self.task.done() or self.task.cancelled():
            return "open"
        exc = self.task.exception()
        return f"{type(exc).__name__}: {exc}" if exc is not None else "closed"


class StreamConnection:
    """Keeps one combined-stream connection up: reconnects with backoff, rolls over before the 24 h limit."""

    def __init__(self, plan: ConnectionPlan, feed: LiveFeed, clock: Clock, *, ping_interval_s: float,
                 rollover_s: float, backoff_max_s: float, rng: random.Random | None = None) -> None:
        self.plan = plan
        self.feed = feed
        self.clock = clock
        self.ping_interval_s = ping_interval_s
        self.rollover_us = round(rollover_s * 1e6)
        self.backoff = Backoff(cap_s=backoff_max_s, rng=rng)
        self.active: _Link | None = None
        self.sessions = 0
        self.rollovers = 0

    @property
    def up(self) -> bool:
        return self.active is not None and self.active.task is not None and not self.active.task.done()

    async def _open(self) -> ClientConnection:
        return await connect(self.plan.url, ping_interval=self.ping_interval_s, ping_timeout=self.ping_interval_s,
                             max_size=MAX_MESSAGE_BYTES, open_timeout=10, close_timeout=2, compression=None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                ws = await self._open()
            except (OSError, TimeoutError, WebSocketException, InvalidURI, InvalidHandshake) as exc:
                delay = self.backoff.next()
                log.warning("connect %s failed (%s); retrying in %.1fs", self.plan.label, exc, delay)
                self.feed.metrics_connect_failures.labels(STAGE, self.plan.route or "/").inc()
                await _sleep_or_stop(stop, delay)
                continue
            link = _Link(ws, self.feed.deliver, self.clock)
            self.sessions += 1
            self.active = link
            link.start()  # its first frame comes only after the next await, so on_connected still goes first
            self.feed.on_connected(self, reconnect=self.sessions > 1)
            await self._serve(stop)
            current = self.active
            self.feed.on_disconnected(self)
            if stop.is_set():
                break
            if current.frames:
                self.backoff.reset()  # it worked for a while: start again from the shortest delay
            delay = self.backoff.next()
            log.warning("connection %s dropped (%s); reconnecting in %.1fs", self.plan.label, current.closed_reason,
                        delay)
            await _sleep_or_stop(stop, delay)

    async def _serve(self, stop: asyncio.Event) -> None:
        """Until the active link drops (a rollover hands over to a new link without returning) or stop."""
        rollover = asyncio.create_task(self._rollover_loop())
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                link = self.active
                assert link is not None and link.task is not None
                done, _ = await asyncio.wait({link.task, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    await (self.active or link).close()
                    return
                if self.active is not link:
                    continue  # rolled over to a fresh connection
                return
        finally:
            rollover.cancel()
            stopper.cancel()
            await asyncio.gather(rollover, stopper, return_exceptions=True)

    async def _rollover_loop(self) -> None:
        while True:
            link = self.active
            assert link is not None
            wait_s = (link.opened_us + self.rollover_us - self.clock.now_us()) / 1e6
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            try:
                ws = await self._open()
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("rollover of %s could not connect (%s); retrying in %.0fs", self.plan.label, exc,
                            ROLLOVER_RETRY_S)
                await asyncio.sleep(ROLLOVER_RETRY_S)
                continue
            fresh = _Link(ws, self.feed.deliver, self.clock, buffering=True)
            fresh.start()
            while True:
                assert fresh.task is not None
                if fresh.task.done():
                    break
                now = self.clock.now_us()
                if fresh.frames and now - fresh.first_frame_us >= ROLLOVER_OVERLAP_US:
                    break
                if now - fresh.opened_us >= ROLLOVER_WAIT_MAX_US:
                    break
                await asyncio.sleep(0.05)
            assert fresh.task is not None
            if fresh.task.done():
                log.warning("rollover replacement for %s closed early (%s); retrying", self.plan.label,
                            fresh.closed_reason)
                await asyncio.sleep(ROLLOVER_RETRY_S)
                continue
            old = link
            self.active = fresh       # before closing the old link, so _serve sees a hand-over, not a drop
            await old.close()         # the old reader delivered everything it received
            fresh.go_live()           # then the overlap, which the core drops as duplicates
            self.rollovers += 1
            self.feed.on_rollover(self)
            log.info("rolled %s over to a fresh connection (buffered %d frames of overlap)", self.plan.label,
                     fresh.frames)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


# --- the live feed -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """The settings the live feed uses, resolved once."""

    microbatch_ms: int
    snapshot_limit: int
    symbols_per_connection: int
    ping_interval_s: float
    rollover_s: float
    backoff_max_s: float
    trade_backfill_timeout_s: float
    quarantine_failures: int
    quarantine_window_s: float
    quarantine_release_s: float
    quarantine_resync_interval_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveOptions:
        return cls(
            microbatch_ms=settings.microbatch_ms, snapshot_limit=settings.snapshot_limit,
            symbols_per_connection=settings.symbols_per_connection, ping_interval_s=settings.ws_ping_interval_s,
            rollover_s=settings.ws_rollover_s, backoff_max_s=settings.ws_backoff_max_s,
            trade_backfill_timeout_s=settings.trade_backfill_timeout_s,
            quarantine_failures=settings.quarantine_failures, quarantine_window_s=settings.quarantine_window_s,
            quarantine_release_s=settings.quarantine_release_s,
            quarantine_resync_interval_s=settings.quarantine_resync_interval_s)


def new_state(venue: common_pb2.Venue, futures: bool, options: LiveOptions, sequence_base: int) -> core.IngestState:
    return core.IngestState(
        venue=venue, futures=futures, microbatch_ms=options.microbatch_ms, sequence_base=sequence_base,
        trade_backfill_timeout_us=round(options.trade_backfill_timeout_s * 1e6),
        quarantine_failures=options.quarantine_failures,
        quarantine_window_us=round(options.quarantine_window_s * 1e6),
        quarantine_release_us=round(options.quarantine_release_s * 1e6),
        quarantine_resync_interval_us=round(options.quarantine_resync_interval_s * 1e6))


class LiveFeed:
    """Binance WebSocket connections + REST -> the ingest core -> the source runner."""

    def __init__(self, spec: VenueSpec, ws_base: str, symbols: Sequence[str], options: LiveOptions, clock: Clock, *,
                 rest: BinanceRest, publisher: SourceRunner, metrics: StageMetrics, quality: IngestQuality,
                 health: HealthState, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.options = options
        self.clock = clock
        self.rest = rest
        self.publisher = publisher
        self.metrics = metrics
        self.quality = quality
        self.health = health
        self.state = new_state(spec.venue, spec.futures, options, clock.now_us())
        for symbol in symbols:
            self.state.symbol_state(symbol)
        self.frames: list[Frame] = []
        self.fatal = False
        self._snapshot_tasks: dict[str, asyncio.Task[None]] = {}
        self._backfill_tasks: set[asyncio.Task[None]] = set()
        self.plans = plan_connections(spec, ws_base, list(symbols), options.symbols_per_connection)
        self.connections = [
            StreamConnection(plan, self, clock, ping_interval_s=options.ping_interval_s,
                             rollover_s=options.rollover_s, backoff_max_s=options.backoff_max_s, rng=rng)
            for plan in self.plans]
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

    def on_disconnected(self, conn: StreamConnection) -> None:
        self.metrics_disconnects.labels(STAGE, conn.plan.route or "/").inc()
        self._update_connection_gauge()

    def on_rollover(self, conn: StreamConnection) -> None:
        self.metrics_rollovers.labels(STAGE, conn.plan.route or "/").inc()

    def _update_connection_gauge(self) -> None:
        self.metrics_connections.set(sum(c.up for c in self.connections))

    # --- processing --------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: then close the connections, process what arrived and hand the rest to the publisher."""
        conn_tasks = [asyncio.create_task(c.run(stop)) for c in self.connections]
        try:
            await self._process_loop(stop)
        finally:
            stop.set()
            await asyncio.gather(*conn_tasks, return_exceptions=True)
            for task in [*self._snapshot_tasks.values(), *self._backfill_tasks]:
                task.cancel()
            await asyncio.gather(*self._snapshot_tasks.values(), *self._backfill_tasks, return_exceptions=True)
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
                log.warning("snapshot of %s failed (%s); retrying in %.1fs", symbol, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._process_pending()  # diffs received while the snapshot was in flight go into the buffer first
            out = core.apply_snapshot(self.state, symbol, body, self.clock)
            again = symbol in out.resync_requests
            out.resync_requests = [s for s in out.resync_requests if s != symbol]
            self._handle(out, raw_events=0)
            if not again:
                if self.state.symbols[symbol].book.synced:
                    log.info("book %s synced at update %d", symbol, self.state.symbols[symbol].book.last_update_id)
                return
            log.info("snapshot of %s is older than the buffered stream; fetching another", symbol)
            await asyncio.sleep(SNAPSHOT_RETRY_S)

    async def _backfill(self, gap: TradeGap) -> None:
        try:
            trades = await self.rest.trades_since(gap.symbol, gap.first_id, gap.last_id)
        except (RestError, httpx.HTTPError) as exc:
            log.warning("trade backfill of %s from id %d failed: %s", gap.symbol, gap.first_id, exc)
            trades = []
        self._process_pending()  # live trades received meanwhile are held with the gap: order is kept
        out = core.apply_trade_backfill(self.state, gap.symbol, trades, self.clock)
        self._handle(out, raw_events=0)


# --- entry point ---------------------------------------------------------------------------------------------------


async def resolve_symbols(rest: BinanceRest, settings: Settings) -> list[str]:
    """``--top N`` by 24 h quote volume, else SURGE_SYMBOLS checked against exchangeInfo where reachable."""
    if settings.top_n:
        backoff = Backoff(cap_s=settings.ws_backoff_max_s)
        for _ in range(5):
            try:
                top = await rest.top_symbols(settings.top_n, settings.top_quote_asset)
            except (RestError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
                log.warning("could not rank symbols by volume (%s); retrying", exc)
                await asyncio.sleep(backoff.next())
                continue
            log.info("top %d %s symbols by 24h quote volume: %s", settings.top_n, rest.spec.name, ",".join(top))
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
        feed = LiveFeed(spec, ws_base, symbols, LiveOptions.from_settings(settings), clock, rest=rest,
                        publisher=publisher, metrics=metrics, quality=quality, health=health)
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
