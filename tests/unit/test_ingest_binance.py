"""Unit tests of the Binance adapter's pure parts: venue specs, connection plans, --top, backoff, REST budget."""

from __future__ import annotations

import random
from typing import Any

import pytest

from schemas import common_pb2
from streams.ingest.binance import (
    Backoff,
    WeightBudget,
    base_urls,
    plan_connections,
    select_top_symbols,
    venue_spec,
)
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000


def test_venue_specs_say_what_differs_between_spot_and_usdm() -> None:
    spot, usdm = venue_spec("spot"), venue_spec("usdm")
    assert (spot.venue, spot.futures, spot.api) == (common_pb2.BINANCE_SPOT, False, "/api/v3")
    assert (usdm.venue, usdm.futures, usdm.api) == (common_pb2.BINANCE_USDM, True, "/fapi/v1")
    assert [(k.name, k.suffix, k.route) for k in spot.streams] == [
        ("trade", "@trade", ""), ("depth", "@depth@100ms", ""), ("bookTicker", "@bookTicker", "")]
    # USD-M routes high-frequency data to /public and the rest to /market; unrouted connections get only /public.
    assert [(k.name, k.suffix, k.route) for k in usdm.streams] == [
        ("depth", "@depth@100ms", "/public"), ("bookTicker", "@bookTicker", "/public"),
        ("trade", "@trade", "/market"), ("markPrice", "@markPrice@1s", "/market")]
    assert (spot.ping_path, usdm.ping_path) == ("/api/v3/ping", "/fapi/v1/ping")
    assert [spot.depth_weight(n) for n in (100, 500, 1000, 5000)] == [5, 25, 50, 250]
    assert [usdm.depth_weight(n) for n in (50, 100, 500, 1000)] == [2, 5, 10, 20]
    assert (spot.weight_limit_per_min, usdm.weight_limit_per_min) == (6000, 2400)
    assert spot.check_limit(5000) == 5000 and usdm.check_limit(1000) == 1000
    with pytest.raises(ValueError, match="allow limit"):
        usdm.check_limit(2000)
    with pytest.raises(ValueError, match="unknown Binance venue"):
        venue_spec("coinm")


def test_base_urls_come_from_the_settings() -> None:
    settings = Settings(binance_ws_url="ws://127.0.0.1:1/", binance_rest_url="http://127.0.0.1:1",
                        binance_futures_ws_url="ws://127.0.0.1:2", binance_futures_rest_url="http://127.0.0.1:2/")
    assert base_urls(settings, venue_spec("spot")) == ("ws://127.0.0.1:1", "http://127.0.0.1:1")
    assert base_urls(settings, venue_spec("usdm")) == ("ws://127.0.0.1:2", "http://127.0.0.1:2")
    assert base_urls(Settings(), venue_spec("spot")) == ("wss://stream.binance.com:9443", "https://api.binance.com")


def test_symbols_are_spread_over_combined_stream_connections() -> None:
    symbols = [f"S{i:02d}USDT" for i in range(60)]
    plans = plan_connections(venue_spec("spot"), "wss://stream.binance.com:9443", symbols, 25)
    assert [len(p.symbols) for p in plans] == [25, 25, 10]
    assert [p.symbols[0] for p in plans] == ["S00USDT", "S25USDT", "S50USDT"]
    first = plans[0]
    assert first.streams[:3] == ("s00usdt@trade", "s00usdt@depth@100ms", "s00usdt@bookTicker")
    assert len(first.streams) == 75
    assert first.url == "wss://stream.binance.com:9443/stream?streams=" + "/".join(first.streams)
    assert first.carries_depth and first.carries_trades

    usdm = plan_connections(venue_spec("usdm"), "wss://fstream.binance.com", ["BTCUSDT", "ETHUSDT"], 25)
    assert [(p.route, p.url) for p in usdm] == [
        ("/public", "wss://fstream.binance.com/public/stream?streams="
                    "btcusdt@depth@100ms/btcusdt@bookTicker/ethusdt@depth@100ms/ethusdt@bookTicker"),
        ("/market", "wss://fstream.binance.com/market/stream?streams="
                    "btcusdt@trade/btcusdt@markPrice@1s/ethusdt@trade/ethusdt@markPrice@1s"),
    ]
    assert [(p.carries_depth, p.carries_trades) for p in usdm] == [(True, False), (False, True)]
    with pytest.raises(ValueError, match="allows 200"):
        plan_connections(venue_spec("usdm"), "wss://x", [f"S{i}USDT" for i in range(101)], 101)


def test_top_symbols_by_quote_volume() -> None:
    info: dict[str, Any] = {"symbols": [
        {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
         "contractType": "PERPETUAL"},
        {"symbol": "ETHUSDT", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "USDT",
         "contractType": "PERPETUAL"},
        {"symbol": "SOLUSDT", "status": "TRADING", "baseAsset": "SOL", "quoteAsset": "USDT",
         "contractType": "PERPETUAL"},
        {"symbol": "XRPUSDT", "status": "TRADING", "baseAsset": "XRP", "quoteAsset": "USDT",
         "contractType": "PERPETUAL"},
        {"symbol": "USDCUSDT", "status": "TRADING", "baseAsset": "USDC", "quoteAsset": "USDT",
         "contractType": "PERPETUAL"},
        {"symbol": "LUNAUSDT", "status": "BREAK", "baseAsset": "LUNA", "quoteAsset": "USDT",
         "contractType": "PERPETUAL"},
        {"symbol": "ETHBTC", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "BTC",
         "contractType": "PERPETUAL"},
        {"symbol": "BTCUSDT_250627", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
         "contractType": "CURRENT_QUARTER"},
    ]}
    tickers: list[dict[str, Any]] = [
        {"symbol": "BTCUSDT", "quoteVolume": "9000000000.5"}, {"symbol": "ETHUSDT", "quoteVolume": "5000000000"},
        {"symbol": "SOLUSDT", "quoteVolume": "700000000"}, {"symbol": "XRPUSDT", "quoteVolume": "700000000"},
        {"symbol": "USDCUSDT", "quoteVolume": "99000000000"}, {"symbol": "LUNAUSDT", "quoteVolume": "1e12"},
        {"symbol": "ETHBTC", "quoteVolume": "1e12"}, {"symbol": "BTCUSDT_250627", "quoteVolume": "1e12"},
        {"symbol": "NOTLISTED", "quoteVolume": "1e12"}, {"symbol": "SOLUSDT", "quoteVolume": None},
    ]
    # Stablecoins, halted, other quotes, dated futures and unlisted symbols are out; ties go by name.
    assert select_top_symbols(info, tickers, 3, quote_asset="USDT", futures=True) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert select_top_symbols(info, tickers, 10, quote_asset="USDT", futures=True) == [
        "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    # Spot has no contract types: the dated contract's listing counts there.
    assert select_top_symbols(info, tickers, 1, quote_asset="USDT", futures=False) == ["BTCUSDT_250627"]
    assert select_top_symbols(info, tickers, 1, quote_asset="BTC", futures=True) == ["ETHBTC"]


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(base_s=0.5, cap_s=8.0, rng=_Fixed(1.0))
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 0.5
    low = Backoff(base_s=0.5, cap_s=8.0, rng=_Fixed(0.0))
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]  # jitter scales into [0.5, 1]
    seeded = Backoff(cap_s=8.0, rng=random.Random(3))
    assert all(d <= 8.0 for d in (seeded.next() for _ in range(100)))


def test_weight_budget_waits_for_the_oldest_spending_to_leave_the_minute() -> None:
    clock = ManualClock(T0)
    budget = WeightBudget(100, clock)
    assert budget.delay_s(60) == 0.0
    budget.spend(60)
    clock.advance_us(10_000_000)
    assert budget.delay_s(40) == 0.0
    budget.spend(40)
    clock.advance_us(5_000_000)
    # 100 of 100 used; 50 more needs the first 60 gone: at T0 + 60 s, i.e. in 45 s.
    assert budget.delay_s(50) == pytest.approx(45.0)
    clock.advance_us(45_000_000)
    assert budget.delay_s(50) == 0.0
    # A 429 blocks everything for Retry-After.
    budget.block(30.0)
    assert budget.delay_s(1) == pytest.approx(30.0)
    clock.advance_us(30_000_000)
    assert budget.delay_s(1) == 0.0
    # A single request above the whole budget still goes when nothing else is spent.
    empty = WeightBudget(10, ManualClock(T0))
    assert empty.delay_s(50) == 0.0
