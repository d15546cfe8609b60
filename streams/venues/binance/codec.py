"""Binance's wire format -> normalised events (``streams.ingest.events``): every frame kind ingest consumes.

Pure and stateless: JSON decoding, the combined-stream envelope (``{"stream": .., "data": {..}}``), the symbol
(the payload's ``s``, else the stream name or the caller's hint), field checks (ids and times are integers,
prices positive and finite, sizes non-negative and finite) and the Binance event time ``E`` as the frame's send
time. Spot and USD-M share the format; USD-M adds ``pu`` to diffs and ``e``/``E``/``T`` to bookTickers, and
streams mark prices and forced liquidations (``forceOrder``); its REST ``openInterest`` is polled. The simulator
(``streams.ingest.simulator``) speaks spot's format, so it shares the codec.

Every sample payload below is a real frame from the captures in ``../shared/data/binance/ws_messages``
(hftbacktest, see ``../shared/data/binance/PROVENANCE.md`` section 2a), shortened where marked, except for
``forceOrder`` and ``openInterest``: no capture holds them, so their samples are Binance's documented ones, verbatim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from schemas import market_pb2
from streams.ingest.book import DepthUpdate, Level
from streams.ingest.events import (
    DepthEvent,
    LiquidationEvent,
    MarkPriceEvent,
    NormalizedEvent,
    OpenInterestEvent,
    Raw,
    Rejected,
    SnapshotEvent,
    TickerEvent,
    TradeEvent,
)


class BadFrame(ValueError):
    """A frame the codec cannot use; ``error_type`` is the machine-readable dead-letter class."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


# --- field checks ------------------------------------------------------------------------------------------------


def _field(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise BadFrame("missing_field", f"field {key!r} missing") from None


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _field(data, key)
    if type(value) is not int:  # bool is an int subclass and never a valid id or time
        raise BadFrame("missing_field", f"field {key!r} is not an integer: {value!r}")
    return value


def _price(value: Any, what: str) -> float:
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise BadFrame("invalid_price", f"{what} is not numeric: {value!r}") from None
    if not 0.0 < price < math.inf:
        raise BadFrame("invalid_price", f"{what} is not positive and finite: {value!r}")
    return price


def _size(value: Any, what: str) -> float:
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise BadFrame("invalid_size", f"{what} is not numeric: {value!r}") from None
    if not 0.0 <= size < math.inf:
        raise BadFrame("invalid_size", f"{what} is negative or not finite: {value!r}")
    return size


def _levels(data: Mapping[str, Any], key: str) -> list[Level]:
    raw = _field(data, key)
    if not isinstance(raw, list | tuple):
        raise BadFrame("missing_field", f"field {key!r} is not a list of levels")
    try:
        levels = [(float(p), float(q)) for p, q in raw]
    except (TypeError, ValueError):
        return [_level(entry, key) for entry in raw]  # the slow path names the bad value
    for price, qty in levels:
        if not (0.0 < price < math.inf and 0.0 <= qty < math.inf):
            _price(price, f"{key} price")
            _size(qty, f"{key} qty")
    return levels


def _level(entry: Any, key: str) -> Level:
    if not isinstance(entry, list | tuple) or len(entry) != 2:
        raise BadFrame("missing_field", f"{key} level is not a [price, qty] pair: {entry!r}")
    return _price(entry[0], f"{key} price"), _size(entry[1], f"{key} qty")


def _checked_trade(data: Mapping[str, Any], ingest_us: int, *, id_key: str, price_key: str, qty_key: str,
                   maker_key: str, time_key: str) -> market_pb2.MarketEvent:
    """A trade with every field checked; the WebSocket and REST payloads differ only in their key names."""
    event = market_pb2.MarketEvent()
    trade = event.trade
    trade.trade_id = _int(data, id_key)
    trade.price = _price(_field(data, price_key), "trade price")
    qty = _size(_field(data, qty_key), "trade qty")
    if qty == 0.0:
        raise BadFrame("invalid_size", "trade qty is zero")
    trade.qty = qty
    maker = _field(data, maker_key)
    if type(maker) is not bool:
        raise BadFrame("missing_field", f"field {maker_key!r} is not a boolean: {maker!r}")
    trade.buyer_is_maker = maker
    trade.exchange_us = _int(data, time_key) * 1000
    trade.ingest_us = ingest_us
    return event


# --- parsers: one per frame kind ---------------------------------------------------------------------------------


def parse_trade(data: Mapping[str, Any], local_us: int) -> market_pb2.MarketEvent:
    """``<symbol>@trade``, spot and USD-M.

    Spot BTCUSDT (``spot/btcusdt_20240808.gz``)::

        {"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",
         "q":"0.02000000","T":1723161255342,"m":true,"M":true}

    USD-M BTCUSDT (``usdm/btcusdt_20240808.gz``)::

        {"e":"trade","E":1723161256322,"T":1723161256322,"s":"BTCUSDT","t":5266583935,"p":"61800.30",
         "q":"0.006","X":"MARKET","m":false}
    """
    try:  # fast path: every field present and plausible; anything else takes the checks below
        trade_id, price, qty, maker, at_ms = data["t"], float(data["p"]), float(data["q"]), data["m"], data["T"]
    except (KeyError, TypeError, ValueError):
        pass
    else:
        if (type(trade_id) is int and type(at_ms) is int and type(maker) is bool and 0.0 < price < math.inf
                and 0.0 < qty < math.inf):
            return market_pb2.MarketEvent(trade={
                "trade_id": trade_id, "price": price, "qty": qty, "buyer_is_maker": maker,
                "exchange_us": at_ms * 1000, "ingest_us": local_us})
    return _checked_trade(data, local_us, id_key="t", price_key="p", qty_key="q", maker_key="m", time_key="T")


def parse_depth(data: Mapping[str, Any], local_us: int) -> tuple[market_pb2.MarketEvent, DepthUpdate]:
    """Diff depth ``<symbol>@depth[@100ms|@0ms]``; USD-M adds ``T`` and ``pu``.

    Spot BTCUSDT (``spot/btcusdt_20240808.gz``)::

        {"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,
         "b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"],
         ["61844.30000000","0.40163000"],["61862.50000000","0.05019000"],["61862.51000000","0.00000000"]]}

    USD-M BTCUSDT (``usdm/btcusdt_20240808.gz``, levels shortened)::

        {"e":"depthUpdate","E":1723161256299,"T":1723161256298,"s":"BTCUSDT","U":5123107832006,
         "u":5123107837557,"pu":5123107831937,"b":[["58710.20","0.014"],["61496.50","0.010"],...],"a":[...]}
    """
    first, final = _int(data, "U"), _int(data, "u")
    prev = _int(data, "pu") if "pu" in data else 0
    if final < first:
        raise BadFrame("invalid_update_id", f"final update id {final} < first {first}")
    bids, asks = _levels(data, "b"), _levels(data, "a")
    exchange_us = _int(data, "E") * 1000
    event = market_pb2.MarketEvent(depth={
        "first_update_id": first, "final_update_id": final, "prev_final_update_id": prev,
        "bids": [{"price": price, "qty": qty} for price, qty in bids],
        "asks": [{"price": price, "qty": qty} for price, qty in asks],
        "exchange_us": exchange_us, "ingest_us": local_us})
    return event, DepthUpdate(first, final, prev, bids, asks, exchange_us, local_us)


def parse_book_ticker(data: Mapping[str, Any], local_us: int) -> market_pb2.MarketEvent:
    """``<symbol>@bookTicker``; spot has no event time (``exchange_us`` stays 0), USD-M adds e/E/T.

    Spot BTCUSDT (``spot/btcusdt_20240808.gz``)::

        {"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000",
         "A":"1.54698000"}

    USD-M BTCUSDT (``usdm/btcusdt_20240808.gz``)::

        {"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507","a":"61800.30",
         "A":"2.510","T":1723161256313,"E":1723161256313}
    """
    try:  # fast path, as in parse_trade
        update_id, bid, bid_qty = data["u"], float(data["b"]), float(data["B"])
        ask, ask_qty, at_ms = float(data["a"]), float(data["A"]), data.get("E", 0)
    except (KeyError, TypeError, ValueError):
        pass
    else:
        if (type(update_id) is int and type(at_ms) is int and 0.0 < bid < math.inf and 0.0 < ask < math.inf
                and 0.0 <= bid_qty < math.inf and 0.0 <= ask_qty < math.inf):
            return market_pb2.MarketEvent(book_ticker={
                "update_id": update_id, "bid_price": bid, "bid_qty": bid_qty, "ask_price": ask, "ask_qty": ask_qty,
                "exchange_us": at_ms * 1000, "ingest_us": local_us})
    event = market_pb2.MarketEvent()
    ticker = event.book_ticker
    ticker.update_id = _int(data, "u")
    ticker.bid_price = _price(_field(data, "b"), "bid price")
    ticker.bid_qty = _size(_field(data, "B"), "bid qty")
    ticker.ask_price = _price(_field(data, "a"), "ask price")
    ticker.ask_qty = _size(_field(data, "A"), "ask qty")
    ticker.exchange_us = _int(data, "E") * 1000 if "E" in data else 0
    ticker.ingest_us = local_us
    return event


def parse_mark_price(data: Mapping[str, Any], local_us: int) -> market_pb2.MarketEvent:
    """USD-M ``<symbol>@markPrice@1s``. BTCUSDT perpetual (``usdm/btcusdt_20230404.dat.gz``)::

        {"e":"markPriceUpdate","E":1680652701000,"s":"BTCUSDT","p":"28147.27373413","P":"28142.15563565",
         "i":"28159.75642857","r":"0.00002754","T":1680652800000}
    """
    event = market_pb2.MarketEvent()
    mark = event.mark_price
    mark.mark_price = _price(_field(data, "p"), "mark price")
    mark.index_price = _price(_field(data, "i"), "index price")
    try:
        rate = float(_field(data, "r"))
    except (TypeError, ValueError):
        raise BadFrame("invalid_field", f"funding rate is not numeric: {data.get('r')!r}") from None
    if not math.isfinite(rate):
        raise BadFrame("invalid_field", f"funding rate is not finite: {data.get('r')!r}")
    mark.funding_rate = rate
    mark.next_funding_us = _int(data, "T") * 1000
    mark.exchange_us = _int(data, "E") * 1000
    mark.ingest_us = local_us
    return event


_LIQUIDATION_SIDES: Final = {"BUY": market_pb2.LIQUIDATION_SIDE_BUY, "SELL": market_pb2.LIQUIDATION_SIDE_SELL}


def parse_force_order(data: Mapping[str, Any], local_us: int) -> market_pb2.Liquidation:
    """USD-M ``<symbol>@forceOrder`` (liquidation order snapshot stream, at most one per symbol per second).

    No capture holds one; Binance's documented sample (USD-M "Liquidation Order Streams")::

        {"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC","q":"0.014",
         "p":"9910","ap":"9910","X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}
    """
    order = _field(data, "o")
    if not isinstance(order, Mapping):
        raise BadFrame("missing_field", f"field 'o' is not an object: {order!r}")
    named_side = _field(order, "S")
    side = _LIQUIDATION_SIDES.get(named_side) if type(named_side) is str else None
    if side is None:
        raise BadFrame("invalid_field", f"liquidation side is not BUY or SELL: {order.get('S')!r}")
    qty = _size(_field(order, "q"), "liquidation qty")
    if qty == 0.0:
        raise BadFrame("invalid_size", "liquidation qty is zero")
    avg = _field(order, "ap")
    try:
        avg_price = float(avg)
    except (TypeError, ValueError):
        raise BadFrame("invalid_price", f"liquidation average price is not numeric: {avg!r}") from None
    if not 0.0 <= avg_price < math.inf:
        raise BadFrame("invalid_price", f"liquidation average price is negative or not finite: {avg!r}")
    return market_pb2.Liquidation(
        side=side, price=_price(_field(order, "p"), "liquidation price"), qty=qty, avg_price=avg_price,
        filled_qty=_size(_field(order, "z"), "liquidation filled qty"), trade_time_us=_int(order, "T") * 1000,
        exchange_us=_int(data, "E") * 1000, ingest_us=local_us)


def parse_open_interest(data: Mapping[str, Any], local_us: int) -> tuple[str, market_pb2.OpenInterest]:
    """USD-M REST ``GET /fapi/v1/openInterest?symbol=`` (request weight 1) -> (symbol, sample).

    No capture holds one; Binance's documented sample (USD-M "Open Interest")::

        {"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}
    """
    symbol = _field(data, "symbol")
    if type(symbol) is not str or not symbol:
        raise BadFrame("missing_field", f"field 'symbol' is not a symbol: {symbol!r}")
    value = _size(_field(data, "openInterest"), "open interest")
    return symbol.upper(), market_pb2.OpenInterest(open_interest=value, exchange_us=_int(data, "time") * 1000,
                                                   ingest_us=local_us)


def parse_snapshot(data: Mapping[str, Any]) -> tuple[int, list[Level], list[Level], int]:
    """REST ``GET /api/v3/depth`` (USD-M ``/fapi/v1/depth`` adds E and T) -> (lastUpdateId, bids, asks, µs).

    Spot BTCUSDT, the snapshot line of ``spot/btcusdt_20240808.gz`` (levels shortened)::

        {"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"],["61837.62000000","0.61700000"],...],
         "asks":[["61837.64000000","1.54698000"],["61837.65000000","0.00843000"],...]}

    USD-M BTCUSDT, the snapshot line of ``usdm/btcusdt_20240808.gz`` (levels shortened)::

        {"lastUpdateId":5123107852948,"E":1723161256501,"T":1723161256493,"bids":[["61800.20","2.909"],
         ["61800.10","0.696"],...],"asks":[["61800.30","1.072"],["61800.70","0.002"],...]}
    """
    exchange_us = _int(data, "E") * 1000 if "E" in data else 0
    return _int(data, "lastUpdateId"), _levels(data, "bids"), _levels(data, "asks"), exchange_us


def parse_rest_trade(data: Mapping[str, Any], ingest_us: int) -> market_pb2.MarketEvent:
    """One trade of REST ``GET /api/v3/historicalTrades`` / ``/api/v3/trades`` (USD-M ``/fapi/v1/trades``).

    The captures hold no REST trade answer; this is Binance's documented shape with the values of the captured
    WebSocket trade 3735683259 above (``spot/btcusdt_20240808.gz``), as the loopback exchange serves it::

        {"id":3735683259,"price":"61837.63000000","qty":"0.02000000","quoteQty":"1236.75260000",
         "time":1723161255342,"isBuyerMaker":true,"isBestMatch":true}
    """
    return _checked_trade(data, ingest_us, id_key="id", price_key="price", qty_key="qty", maker_key="isBuyerMaker",
                          time_key="time")


# --- stream names ------------------------------------------------------------------------------------------------


def symbol_of(hint: str) -> str:
    """"btcusdt@depth@100ms" or "BTCUSDT" -> "BTCUSDT"."""
    return hint.split("@", 1)[0].upper()


def sniff_stream(raw: object) -> str:
    """The stream name of an undecodable combined-stream frame, so it can still be attributed; "" if none."""
    if not isinstance(raw, bytes | bytearray):
        return ""
    start = raw.find(b'"stream":"')
    if start < 0:
        return ""
    start += 10
    end = raw.find(b'"', start)
    return bytes(raw[start:end]).decode("ascii", "replace") if end > start else ""


def sniff_event_time_us(payload: bytes) -> int | None:
    """The first ``"E":<ms>`` of a frame in µs, without decoding it (replay times plain JSON lines by it)."""
    at = payload.find(b'"E":')
    if at < 0:
        return None
    at += 4
    end = at
    while end < len(payload) and payload[end:end + 1] in b" 0123456789":
        end += 1
    digits = payload[at:end].strip()
    return int(digits) * 1000 if digits else None


# --- the codec ---------------------------------------------------------------------------------------------------


def _decode_json(raw: Raw) -> Mapping[str, Any]:
    # Exact type checks first: ABC isinstance checks are slow on the hot path.
    if type(raw) is bytes:
        try:
            data: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadFrame("malformed_json", f"undecodable JSON: {exc}") from None
        if type(data) is dict:
            return data
    elif type(raw) is dict:  # the simulator's frames
        return raw
    if isinstance(raw, Mapping):
        data = raw
    elif type(raw) is not bytes:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadFrame("malformed_json", f"undecodable JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise BadFrame("malformed_json", f"expected a JSON object, got {type(data).__name__}")
    return data


def _snapshot(symbol: str, raw: Raw, data: Mapping[str, Any], local_us: int) -> SnapshotEvent | Rejected:
    if not symbol:
        return Rejected(symbol, raw, "missing_field", "snapshot without a symbol hint")
    try:
        last_id, bids, asks, exchange_us = parse_snapshot(data)
    except BadFrame as exc:
        return Rejected(symbol, raw, exc.error_type, exc.reason)
    return SnapshotEvent(symbol, last_id, bids, asks, exchange_us, local_us, raw)


class BinanceCodec:
    """The ``streams.ingest.events.Codec`` of Binance spot and USD-M (and of the simulator)."""

    def decode(self, hint: str, raw: Raw, local_us: int) -> NormalizedEvent:  # noqa: PLR0911 - one return per kind
        """A WebSocket frame (bare or in a combined-stream envelope), or a bare REST snapshot line of a capture."""
        symbol = ""
        stream = hint
        kind: Any = None
        try:
            data = _decode_json(raw)
            if "stream" in data and "data" in data:  # combined-stream envelope
                named_stream = data["stream"]
                if type(named_stream) is str:
                    stream = named_stream
                data = data["data"]
                if type(data) is not dict and not isinstance(data, Mapping):
                    raise BadFrame("malformed_json", "combined-stream 'data' is not an object")
            named = data.get("s")
            if named is None:
                order = data.get("o")  # forceOrder: the symbol is inside the order
                if type(order) is dict:
                    named = order.get("s")
            symbol = named.upper() if type(named) is str and named else symbol_of(stream)
            if "lastUpdateId" in data:
                return _snapshot(symbol, raw, data, local_us)
            if not symbol:
                raise BadFrame("missing_field", "no symbol in the frame or its stream name")
            kind = data.get("e")
            event_ms = data.get("E")
            sent_us = event_ms * 1000 if type(event_ms) is int else 0
            # Most frequent first: bookTicker (spot ones have no "e"), trade, depthUpdate.
            if kind == "bookTicker" or (kind is None and "u" in data and "A" in data):
                return TickerEvent(symbol, parse_book_ticker(data, local_us), local_us, sent_us)
            if kind == "trade":
                return TradeEvent(symbol, parse_trade(data, local_us), local_us, sent_us)
            if kind == "depthUpdate":
                event, update = parse_depth(data, local_us)
                return DepthEvent(symbol, event, update, local_us, sent_us, raw)
            if kind == "markPriceUpdate":
                return MarkPriceEvent(symbol, parse_mark_price(data, local_us), local_us, sent_us)
            if kind == "forceOrder":
                return LiquidationEvent(symbol, parse_force_order(data, local_us), local_us, sent_us)
            raise BadFrame("unknown_event_type", f"unknown event type {kind!r}")
        except BadFrame as exc:
            if not symbol:
                stream = stream or sniff_stream(raw)
                symbol = symbol_of(stream)
            return Rejected(symbol, raw, exc.error_type, exc.reason,
                            depth=kind == "depthUpdate" or "@depth" in stream)

    def decode_snapshot(self, symbol: str, raw: Raw, local_us: int) -> SnapshotEvent | Rejected:
        """The answer of REST ``depth`` for ``symbol`` (raw bytes or decoded)."""
        try:
            data = _decode_json(raw)
        except BadFrame as exc:
            return Rejected(symbol, raw, exc.error_type, exc.reason)
        return _snapshot(symbol, raw, data, local_us)

    def decode_open_interest(self, symbol: str, raw: Raw, local_us: int) -> OpenInterestEvent | Rejected:
        """The answer of REST ``openInterest`` for ``symbol`` (raw bytes or decoded); another symbol's is rejected."""
        try:
            named, sample = parse_open_interest(_decode_json(raw), local_us)
        except BadFrame as exc:
            return Rejected(symbol, raw, exc.error_type, f"open interest: {exc.reason}")
        if named != symbol:
            return Rejected(symbol, raw, "symbol_mismatch", f"open interest of {named} in the answer for {symbol}")
        return OpenInterestEvent(symbol, sample, local_us)

    def decode_trades(self, symbol: str, raw: bytes | Sequence[Any], ingest_us: int) -> list[TradeEvent | Rejected]:
        """The answer of REST ``historicalTrades`` / ``trades`` (raw JSON list or decoded); bad records are
        rejected one by one, the others kept."""
        records: Any = raw
        out: list[TradeEvent | Rejected] = []
        if isinstance(raw, bytes | bytearray):
            try:
                records = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                return [Rejected(symbol, raw, "malformed_json", f"undecodable trades: {exc}")]
        if not isinstance(records, list | tuple):
            return [Rejected(symbol, records, "malformed_json", "REST trades are not a JSON list")]
        for record in records:
            try:
                if not isinstance(record, Mapping):
                    raise BadFrame("malformed_json", "REST trade is not an object")
                out.append(TradeEvent(symbol, parse_rest_trade(record, ingest_us), ingest_us))
            except BadFrame as exc:
                out.append(Rejected(symbol, record, exc.error_type, exc.reason))
        return out


CODEC: Final = BinanceCodec()
