"""Binance REST client: the calls ingest needs, under one rolling-minute request-weight budget.

Depth snapshots, exchangeInfo, ticker/24hr (``--top N`` by quote volume), ping, trade backfill
(``historicalTrades`` from an id where public, else the last 1000 ``trades``) and USD-M ``openInterest``. The
budget keeps the client under a share of Binance's per-minute weight limit (``VenueSpec.weight_limit_per_min``);
429/418 answers pause it for ``Retry-After``. Answers are returned raw or as decoded JSON; turning them into
events is the codec's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

from streams.ingest.core import STAGE
from streams.runtime.clock import Clock
from streams.venues.binance.spec import VenueSpec

log = logging.getLogger("surge.venues.binance.rest")

TRADES_PAGE = 1000             # Binance's maximum ``limit`` for trade lists
MAX_TRADE_PAGES = 20           # at most 20 000 trades backfilled per gap
# Quote-asset pairs of stablecoins: huge volume, no signal. Excluded from --top.
STABLECOINS = frozenset({"USDC", "FDUSD", "TUSD", "BUSD", "DAI", "USDP", "USDE", "USD1", "PYUSD", "EUR", "AEUR",
                         "EURI", "XUSD", "BFUSD", "RLUSD", "USDS"})


def rank_value(ticker: Mapping[str, Any], rank_by: str) -> float:
    """What ``--top`` ranks a ticker/24hr entry by: its quote volume, or its 24 h volatility as the day's range
    over the last price. Raises KeyError/TypeError/ValueError on a ticker without the fields."""
    if rank_by == "volatility":
        last = float(ticker["lastPrice"])
        if last <= 0.0:
            raise ValueError("no last price")
        return (float(ticker["highPrice"]) - float(ticker["lowPrice"])) / last
    return float(ticker["quoteVolume"])


def select_top_symbols(exchange_info: Mapping[str, Any], tickers: Sequence[Mapping[str, Any]], n: int, *,
                       quote_asset: str, futures: bool, rank_by: str = "quote_volume") -> list[str]:
    """The ``n`` trading symbols quoted in ``quote_asset`` with the largest 24 h quote volume (or volatility).

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
                ranked.append((-rank_value(ticker, rank_by), str(symbol)))
            except (KeyError, TypeError, ValueError):
                continue
    ranked.sort()
    return [symbol for _, symbol in ranked[:n]]


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

    def headroom(self, weight: int, share: float) -> bool:
        """Whether ``weight`` can be spent now while staying within ``share`` of the budget (for optional calls,
        such as book audits, that must leave the rest to snapshots and backfills)."""
        self.delay_s(0)  # expire the spending older than a minute
        if self.clock.now_us() < self.blocked_until_us:
            return False
        return self._used + weight <= self.per_minute * share

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
        """The raw REST snapshot; the codec decodes it (no re-serialisation)."""
        return await self.get(self.spec.depth_path, {"symbol": symbol, "limit": limit},
                              self.spec.depth_weight(limit))

    async def open_interest(self, symbol: str) -> bytes:
        """The raw REST open-interest sample of ``symbol`` (USD-M; the codec decodes it)."""
        if not self.spec.open_interest_weight:
            raise ValueError(f"Binance {self.spec.name} has no open interest")
        return await self.get(self.spec.open_interest_path, {"symbol": symbol}, self.spec.open_interest_weight)

    async def exchange_info(self) -> dict[str, Any]:
        info = orjson.loads(await self.get(self.spec.exchange_info_path, None, self.spec.exchange_info_weight))
        if not isinstance(info, dict):
            raise RestError(200, "exchangeInfo is not an object", "exchangeInfo")
        return info

    async def ticker_24hr(self) -> list[dict[str, Any]]:
        tickers = orjson.loads(await self.get(self.spec.ticker_24hr_path, None, self.spec.ticker_24hr_weight))
        if not isinstance(tickers, list):
            raise RestError(200, "ticker/24hr is not a list", "ticker/24hr")
        return tickers

    async def top_symbols(self, n: int, quote_asset: str, rank_by: str = "quote_volume") -> list[str]:
        info, tickers = await self.exchange_info(), await self.ticker_24hr()
        return select_top_symbols(info, tickers, n, quote_asset=quote_asset, futures=self.spec.futures,
                                  rank_by=rank_by)

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
                        self.spec.historical_trades_path,
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
        recent = orjson.loads(await self.get(self.spec.trades_path, {"symbol": symbol, "limit": TRADES_PAGE},
                                             self.spec.trades_weight))
        return recent if isinstance(recent, list) else []
