"""Unit tests of the Binance adapter's pure parts (``streams.venues.binance``): venue specs, the codec, connection
plans, --top, backoff, REST budget."""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import common_pb2
from streams.ingest.events import (
    DepthEvent,
    MarkPriceEvent,
    Rejected,
    SnapshotEvent,
    TickerEvent,
    TradeEvent,
)
from streams.runtime.clock import ManualClock
from streams.runtime.settings import Settings
from streams.venues.binance import codec
from streams.venues.binance.codec import CODEC
from streams.venues.binance.rest import WeightBudget, select_top_symbols
from streams.venues.binance.spec import base_urls, ping_url, venue_spec
from streams.venues.binance.ws import Backoff, plan_connections

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
        ("trade", "@trade", "/market"), ("markPrice", "@markPrice@1s", "/market"),
        ("forceOrder", "@forceOrder", "/market")]
    assert (spot.ping_path, usdm.ping_path) == ("/api/v3/ping", "/fapi/v1/ping")
    assert [spot.depth_path, spot.exchange_info_path, spot.ticker_24hr_path, spot.trades_path,
            spot.historical_trades_path] == ["/api/v3/depth", "/api/v3/exchangeInfo", "/api/v3/ticker/24hr",
                                             "/api/v3/trades", "/api/v3/historicalTrades"]
    assert usdm.historical_trades_path == "/fapi/v1/historicalTrades"
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
    # The one ping URL: the supervisor's and the ingest stage's --source auto probe.
    assert ping_url(settings) == "http://127.0.0.1:1/api/v3/ping"
    assert ping_url(settings.model_copy(update={"venue": "usdm"})) == "http://127.0.0.1:2/fapi/v1/ping"


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
                    "btcusdt@trade/btcusdt@markPrice@1s/btcusdt@forceOrder/ethusdt@trade/ethusdt@markPrice@1s/"
                    "ethusdt@forceOrder"),
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


# --- codec ---------------------------------------------------------------------------------------------------------

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared/data/binance/ws_messages/hftbacktest"
PARSERS: list[Callable[..., Any]] = [codec.parse_trade, codec.parse_depth, codec.parse_book_ticker,
                                     codec.parse_mark_price, codec.parse_snapshot, codec.parse_rest_trade]


def docstring_samples(parser: Callable[..., Any]) -> list[tuple[str | None, str]]:
    """(capture file named before the sample or None, the sample's text) for every ``::`` block of a docstring."""
    doc = parser.__doc__ or ""  # as written: the samples are indented 8 spaces, the prose 4
    samples = []
    for match in re.finditer(r"::\n\n((?: {8}.*\n?)+)", doc):
        intro = doc[:match.start()].rsplit("\n\n", 1)[-1]
        named = re.findall(r"``((?:spot|usdm)/[^`]+)``", intro)
        samples.append((named[-1] if named else None, "".join(ln.strip() for ln in match.group(1).splitlines())))
    return samples


def captured(relative: str, payload: bytes) -> bool:
    path = CAPTURES / relative
    if not path.is_file():
        pytest.skip(f"real Binance capture {path} not found (../shared is absent on this machine)")
    with gzip.open(path, "rb") as fh:
        return any(payload in line for line in fh)


@pytest.mark.parametrize("parser", PARSERS, ids=[p.__name__ for p in PARSERS])
def test_every_parser_quotes_real_captured_payloads(parser: Callable[..., Any]) -> None:
    samples = docstring_samples(parser)
    assert samples, f"{parser.__name__} quotes no sample payload"
    for capture, text in samples:
        if "..." in text:  # shortened: the head of the sample must still be verbatim
            assert capture is not None
            head = text.split("...", 1)[0].rsplit(",", 1)[0].encode()
            assert captured(capture, head), f"{parser.__name__}: {head[:80]!r} not in {capture}"
            continue
        sample = orjson.loads(text)
        if parser is codec.parse_rest_trade:  # no REST trade answer was captured: its WebSocket twin was
            assert capture is not None and captured(capture, b'"t":%d' % sample["id"])
        else:
            assert capture is not None and captured(capture, orjson.dumps(sample)), f"{parser.__name__}: {text}"
        if parser is codec.parse_snapshot:
            parser(sample)
        else:
            parser(sample, 5)  # and it parses


def test_the_parsers_read_their_samples() -> None:
    spot_trade = orjson.loads(b'{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
                              b'"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}')
    ev = codec.parse_trade(spot_trade, 5)
    assert (ev.trade.trade_id, ev.trade.price, ev.trade.qty) == (3735683259, 61837.63, 0.02)
    assert ev.trade.buyer_is_maker and ev.trade.exchange_us == 1723161255342000 and ev.trade.ingest_us == 5
    spot_depth = orjson.loads(b'{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,'
                              b'"u":50093239207,"b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000",'
                              b'"0.32332000"],["61844.30000000","0.40163000"]]}')
    ev, update = codec.parse_depth(spot_depth, 5)
    assert (update.first_update_id, update.final_update_id, update.prev_final_update_id) == (
        50093239203, 50093239207, 0)
    assert update.bids == [(55653.87, 0.0)] and len(ev.depth.asks) == 2
    spot_ticker = orjson.loads(b'{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000",'
                               b'"a":"61837.64000000","A":"1.54698000"}')
    bt = codec.parse_book_ticker(spot_ticker, 5).book_ticker
    assert (bt.update_id, bt.bid_price, bt.ask_qty, bt.exchange_us) == (50093239212, 61837.63, 1.54698, 0)
    usdm_ticker = orjson.loads(b'{"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507",'
                               b'"a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256313}')
    assert codec.parse_book_ticker(usdm_ticker, 5).book_ticker.exchange_us == 1723161256313000


def test_decode_normalises_each_frame_kind_with_its_sequence_ids() -> None:
    envelope = (b'{"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1723161256299,"T":1723161256298,'
                b'"s":"BTCUSDT","U":5123107832006,"u":5123107837557,"pu":5123107831937,"b":[["58710.20","0.014"]],'
                b'"a":[]}}')
    depth = CODEC.decode("", envelope, 7)
    assert type(depth) is DepthEvent and depth.symbol == "BTCUSDT" and depth.raw is envelope
    assert (depth.update.first_update_id, depth.update.final_update_id, depth.update.prev_final_update_id) == (
        5123107832006, 5123107837557, 5123107831937)
    assert (depth.sent_us, depth.local_us) == (1723161256299000, 7)
    # A spot bookTicker has neither "e" nor "E": told by its fields, no send time; the stream name is enough.
    ticker = CODEC.decode("btcusdt@bookTicker", {"u": 9, "b": "1", "B": "1", "a": "2", "A": "1"}, 7)
    assert type(ticker) is TickerEvent and ticker.symbol == "BTCUSDT" and ticker.sent_us == 0
    assert ticker.event.book_ticker.update_id == 9
    trade = CODEC.decode("", {"e": "trade", "E": 2, "s": "ethusdt", "t": 5, "p": "1", "q": "1", "T": 1, "m": False}, 7)
    assert type(trade) is TradeEvent and trade.symbol == "ETHUSDT" and trade.event.trade.trade_id == 5
    mark = CODEC.decode("", b'{"e":"markPriceUpdate","E":1680652701000,"s":"BTCUSDT","p":"28147.27373413",'
                            b'"P":"28142.15563565","i":"28159.75642857","r":"0.00002754","T":1680652800000}', 7)
    assert type(mark) is MarkPriceEvent and mark.event.mark_price.next_funding_us == 1680652800000000
    # A capture's bare REST snapshot line gets its symbol from the hint.
    snap = CODEC.decode("BTCUSDT", b'{"lastUpdateId":100,"bids":[["1.0","2.0"]],"asks":[["3.0","4.0"]]}', 7)
    assert type(snap) is SnapshotEvent
    assert (snap.symbol, snap.last_update_id, snap.bids) == ("BTCUSDT", 100, [(1.0, 2.0)])
    assert CODEC.decode("", b'{"lastUpdateId":100,"bids":[],"asks":[]}', 7) == Rejected(
        "", b'{"lastUpdateId":100,"bids":[],"asks":[]}', "missing_field", "snapshot without a symbol hint")


def test_decode_rejects_what_it_cannot_use_and_still_attributes_it() -> None:
    truncated = b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":17231612'
    bad = CODEC.decode("", truncated, 7)
    assert type(bad) is Rejected and (bad.symbol, bad.error_type, bad.depth) == ("BTCUSDT", "malformed_json", True)
    bad = CODEC.decode("", b'{"stream":"btcusdt@trade","data":{"e":"tr', 7)
    assert type(bad) is Rejected and (bad.symbol, bad.depth) == ("BTCUSDT", False)
    bad = CODEC.decode("ETHUSDT", {"e": "aggTrade", "E": 1, "s": "ETHUSDT"}, 7)
    assert type(bad) is Rejected and (bad.symbol, bad.error_type) == ("ETHUSDT", "unknown_event_type")
    bad = CODEC.decode("", {"e": "trade", "E": 1, "t": 1, "p": "1", "q": "1", "T": 1, "m": True}, 7)
    assert type(bad) is Rejected and (bad.symbol, bad.error_type) == ("", "missing_field")


def test_decode_trades_keeps_the_good_records_of_a_rest_answer() -> None:
    good = {"id": 7, "price": "1.5", "qty": "2", "quoteQty": "3", "time": 1000, "isBuyerMaker": True,
            "isBestMatch": True}
    decoded = CODEC.decode_trades("BTCUSDT", orjson.dumps([good, {**good, "id": 8, "price": "x"}, 5]), 9)
    assert [type(d).__name__ for d in decoded] == ["TradeEvent", "Rejected", "Rejected"]
    first = decoded[0]
    assert type(first) is TradeEvent and first.event.trade.trade_id == 7 and first.event.trade.ingest_us == 9
    assert [d.error_type for d in decoded if type(d) is Rejected] == ["invalid_price", "malformed_json"]
    [undecodable] = CODEC.decode_trades("BTCUSDT", b"[{", 9)
    assert type(undecodable) is Rejected and undecodable.reason.startswith("undecodable trades")
    [not_a_list] = CODEC.decode_trades("BTCUSDT", b'{"code":-1121}', 9)
    assert type(not_a_list) is Rejected and not_a_list.reason == "REST trades are not a JSON list"
