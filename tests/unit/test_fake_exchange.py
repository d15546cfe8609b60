"""Unit tests of the loopback exchange's pure parts: its book, capture loading, URL routing and REST answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request

from services.testing.fake_exchange.server import (
    OPEN_INTEREST_BASE,
    OPEN_INTEREST_PER_TRADE,
    Capture,
    CaptureEvent,
    Client,
    FakeBook,
    FakeExchange,
    FakeOptions,
    fold_diffs,
    load_capture,
    stream_kind,
)
from streams.runtime.clock import ManualClock

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000_000
SNAPSHOT: dict[str, Any] = {"lastUpdateId": 100, "bids": [["100.00", "1.0"], ["99.00", "2.0"]],
                            "asks": [["101.00", "1.5"], ["102.00", "2.5"]]}


def test_the_exchange_book_applies_diffs_and_serves_sorted_snapshots() -> None:
    book = FakeBook(SNAPSHOT)
    book.apply({"U": 101, "u": 103, "b": [["100.50", "4.0"], ["99.00", "0.0"]], "a": [["103.00", "1.0"]],
                "T": 1700000000123})
    assert book.last_update_id == 103 and book.transaction_ms == 1700000000123
    assert book.snapshot(2) == ([["100.50", "4.0"], ["100.00", "1.0"]], [["101.00", "1.5"], ["102.00", "2.5"]])
    assert book.snapshot(10)[1] == [["101.00", "1.5"], ["102.00", "2.5"], ["103.00", "1.0"]]


def test_diffs_recorded_before_the_snapshot_line_but_newer_are_folded_in() -> None:
    older = {"U": 90, "u": 99, "b": [["100.00", "9.0"]], "a": []}
    straddling = {"U": 95, "u": 104, "b": [["100.00", "5.0"]], "a": []}
    folded = fold_diffs(SNAPSHOT, [older, straddling])
    assert folded["lastUpdateId"] == 104
    assert folded["bids"] == [["100.00", "5.0"], ["99.00", "2.0"]]


def test_real_capture_loads_from_the_snapshot_line_on(shared_data: Path) -> None:
    capture = load_capture([shared_data / "ws_messages/hftbacktest/spot/btcusdt_20240808.gz"])
    assert capture.symbols == ["BTCUSDT"]
    # The diff straddling lastUpdateId 50093239218 was recorded before the snapshot line: folded in.
    assert capture.snapshots["BTCUSDT"]["lastUpdateId"] == 50093239224
    first_diff = next(e for e in capture.events if e.kind == "depth")
    assert first_diff.data["U"] == 50093239225
    trades = [e.data["t"] for e in capture.events if e.kind == "trade"]
    assert trades[0] == 3735683260 and trades == list(range(trades[0], trades[0] + len(trades)))
    # The capturing machine's clock was ~1.27 s behind the exchange's.
    assert 1_200 < capture.skew_ms < 1_350
    assert stream_kind("btcusdt@depth@0ms") == "depth" and stream_kind("btcusdt@markPrice@1s") == "markPrice"


def small_capture() -> Capture:
    trades = [CaptureEvent(T0 + i, "BTCUSDT", "trade", {"e": "trade", "E": 1700000000000 + i, "T": 1700000000000 + i,
                                                        "s": "BTCUSDT", "t": 500 + i, "p": "100.00", "q": "0.5",
                                                        "m": i % 2 == 0, "M": True}) for i in range(3)]
    return Capture(trades, {"BTCUSDT": dict(SNAPSHOT), "ETHUSDT": dict(SNAPSHOT)}, 0,
                   {"BTCUSDT": 150.0, "ETHUSDT": 10.0})


def get(exchange: FakeExchange, path: str, **headers: str) -> tuple[int, Any, Headers]:
    response = exchange.handle_http(Request(path, Headers(headers)))
    return response.status_code, orjson.loads(response.body), response.headers


def test_websocket_paths_follow_binance_routing() -> None:
    spot = FakeExchange(small_capture(), FakeOptions(venue="spot"), ManualClock(T0))
    usdm = FakeExchange(small_capture(), FakeOptions(venue="usdm"), ManualClock(T0))
    assert spot.parse_ws_path("/stream?streams=btcusdt@trade/btcusdt@depth@100ms") == (
        "", True, ["btcusdt@trade", "btcusdt@depth@100ms"])
    assert spot.parse_ws_path("/ws/btcusdt@trade") == ("", False, ["btcusdt@trade"])
    assert spot.parse_ws_path("/ws") == ("", False, [])
    assert spot.parse_ws_path("/public/stream?streams=btcusdt@depth") is None  # spot has no routed paths
    assert spot.parse_ws_path("/api/v3/depth") is None
    assert usdm.parse_ws_path("/market/stream?streams=btcusdt@trade") == ("/market", True, ["btcusdt@trade"])
    assert usdm.parse_ws_path("/public/ws/btcusdt@depth/ethusdt@depth") == (
        "/public", False, ["btcusdt@depth", "ethusdt@depth"])


def test_rest_answers_like_binance() -> None:
    spot = FakeExchange(small_capture(), FakeOptions(venue="spot"), ManualClock(T0))
    assert get(spot, "/api/v3/ping")[:2] == (200, {})
    status, body, headers = get(spot, "/api/v3/depth?symbol=BTCUSDT&limit=1")
    assert (status, body) == (200, {"lastUpdateId": 100, "bids": [["100.00", "1.0"]], "asks": [["101.00", "1.5"]]})
    assert headers["X-MBX-USED-WEIGHT-1M"] == "6"  # ping 1 + depth 5
    assert get(spot, "/api/v3/depth?symbol=NOPE")[:2] == (400, {"code": -1121, "msg": "Invalid symbol."})
    status, body, _ = get(spot, "/api/v3/exchangeInfo")
    assert [(s["symbol"], s["status"], s["baseAsset"], s["quoteAsset"]) for s in body["symbols"]] == [
        ("BTCUSDT", "TRADING", "BTC", "USDT"), ("ETHUSDT", "TRADING", "ETH", "USDT")]
    status, body, _ = get(spot, "/api/v3/ticker/24hr")
    assert [(t["symbol"], t["quoteVolume"]) for t in body] == [("BTCUSDT", "150.00000000"), ("ETHUSDT", "10.00000000")]
    assert get(spot, "/fapi/v1/ping")[0] == 404  # the other venue's paths are not served
    # Trades exist only once published.
    assert get(spot, "/api/v3/trades?symbol=BTCUSDT")[1] == []
    for event in spot.capture.events:
        spot.trades["BTCUSDT"].append(event.data)
    _, body, _ = get(spot, "/api/v3/historicalTrades?symbol=BTCUSDT&fromId=501&limit=5")
    assert body == [
        {"id": 501, "price": "100.00", "qty": "0.5", "quoteQty": "50.00000000", "time": 1700000000001,
         "isBuyerMaker": False, "isBestMatch": True},
        {"id": 502, "price": "100.00", "qty": "0.5", "quoteQty": "50.00000000", "time": 1700000000002,
         "isBuyerMaker": True, "isBestMatch": True},
    ]
    assert [t["id"] for t in get(spot, "/api/v3/trades?symbol=BTCUSDT&limit=2")[1]] == [501, 502]


def test_usdm_rest_quirks() -> None:
    usdm = FakeExchange(small_capture(), FakeOptions(venue="usdm"), ManualClock(T0))
    status, body, _ = get(usdm, "/fapi/v1/depth?symbol=BTCUSDT&limit=5")
    assert status == 200 and body["E"] == T0 // 1000 and body["lastUpdateId"] == 100
    assert get(usdm, "/fapi/v1/depth?symbol=BTCUSDT&limit=7")[0] == 400  # not an allowed futures limit
    assert get(usdm, "/fapi/v1/historicalTrades?symbol=BTCUSDT")[:2] == (
        401, {"code": -2014, "msg": "API-key format invalid."})
    assert get(usdm, "/fapi/v1/historicalTrades?symbol=BTCUSDT", **{"X-MBX-APIKEY": "k"})[0] == 200
    _, body, _ = get(usdm, "/fapi/v1/exchangeInfo")
    assert {s["contractType"] for s in body["symbols"]} == {"PERPETUAL"}


def test_weight_beyond_the_limit_is_refused_with_retry_after() -> None:
    usdm = FakeExchange(small_capture(), FakeOptions(venue="usdm"), ManualClock(T0))
    for _ in range(120):  # 120 x 20 = 2400, the USD-M limit
        assert get(usdm, "/fapi/v1/depth?symbol=BTCUSDT&limit=1000")[0] == 200
    status, body, headers = get(usdm, "/fapi/v1/depth?symbol=BTCUSDT&limit=1000")
    assert (status, body["code"], headers["Retry-After"]) == (429, -1003, "1")
    assert usdm.status()["rate_limited"] == 1


def test_usdm_serves_open_interest_that_grows_with_the_market() -> None:
    usdm = FakeExchange(small_capture(), FakeOptions(venue="usdm", rebase_time=False), ManualClock(T0))
    status, body, headers = get(usdm, "/fapi/v1/openInterest?symbol=BTCUSDT")
    assert (status, body) == (200, {"openInterest": f"{OPEN_INTEREST_BASE:.3f}", "symbol": "BTCUSDT", "time": 0})
    assert headers["X-MBX-USED-WEIGHT-1M"] == "1"  # weight 1, as Binance documents
    for event in usdm.capture.events:
        usdm._publish(event)  # no subscriber: published, sent to nobody
    _, body, _ = get(usdm, "/fapi/v1/openInterest?symbol=BTCUSDT")
    assert body == {"openInterest": f"{OPEN_INTEREST_BASE + 3 * OPEN_INTEREST_PER_TRADE:.3f}", "symbol": "BTCUSDT",
                    "time": 1700000000002}  # the newest published event's exchange time
    assert usdm.stats["open_interest_served"][-1] == body
    assert get(usdm, "/fapi/v1/openInterest?symbol=NOPE")[0] == 400
    spot = FakeExchange(small_capture(), FakeOptions(venue="spot"), ManualClock(T0))
    assert get(spot, "/api/v3/openInterest?symbol=BTCUSDT")[0] == 404


def test_liquidations_are_synthesized_from_every_nth_trade_in_binance_shape() -> None:
    # Trades 1 s apart; every 2nd one becomes a forceOrder, sent on /market right after it.
    events = [CaptureEvent(T0 + i * 1_000_000, "BTCUSDT", "trade", {
        "e": "trade", "E": 1700000000000 + i * 1000, "T": 1700000000000 + i * 1000 - 1, "s": "BTCUSDT",
        "t": 500 + i, "p": f"{100 + i}.00", "q": "0.5", "m": i % 4 == 1}) for i in range(6)]
    capture = Capture(events, {"BTCUSDT": dict(SNAPSHOT)}, 0, {"BTCUSDT": 1.0})
    usdm = FakeExchange(capture, FakeOptions(venue="usdm", liquidations_every=2, rebase_time=False), ManualClock(T0))

    async def play() -> list[bytes]:
        client = Client(cast(ServerConnection, None), combined=True, route="/market")
        usdm._subscribe(client, ["btcusdt@forceOrder"])
        for event in capture.events:
            usdm._publish(event)
        return [client.queue.get_nowait()[1] for _ in range(client.queue.qsize())]

    frames = [orjson.loads(f) for f in asyncio.run(play())]
    assert [f["stream"] for f in frames] == ["btcusdt@forceOrder"] * 3
    assert frames[0]["data"] == {"e": "forceOrder", "E": 1700000001000, "o": {
        "s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.5", "p": "101.00", "ap": "101.00",
        "X": "FILLED", "l": "0.5", "z": "0.5", "T": 1700000000999}}
    assert [(f["data"]["o"]["S"], f["data"]["o"]["p"]) for f in frames] == [
        ("SELL", "101.00"), ("BUY", "103.00"), ("SELL", "105.00")]
    assert [x["E"] for x in usdm.stats["liquidations"]] == [1700000001000, 1700000003000, 1700000005000]
    assert usdm.stats["published"]["forceOrder"] == 3
