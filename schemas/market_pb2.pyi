from schemas import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LiquidationSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIQUIDATION_SIDE_UNSPECIFIED: _ClassVar[LiquidationSide]
    LIQUIDATION_SIDE_BUY: _ClassVar[LiquidationSide]
    LIQUIDATION_SIDE_SELL: _ClassVar[LiquidationSide]
LIQUIDATION_SIDE_UNSPECIFIED: LiquidationSide
LIQUIDATION_SIDE_BUY: LiquidationSide
LIQUIDATION_SIDE_SELL: LiquidationSide

class PriceLevel(_message.Message):
    __slots__ = ("price", "qty")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    price: float
    qty: float
    def __init__(self, price: _Optional[float] = ..., qty: _Optional[float] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("trade_id", "price", "qty", "buyer_is_maker", "exchange_us", "ingest_us")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    BUYER_IS_MAKER_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    trade_id: int
    price: float
    qty: float
    buyer_is_maker: bool
    exchange_us: int
    ingest_us: int
    def __init__(self, trade_id: _Optional[int] = ..., price: _Optional[float] = ..., qty: _Optional[float] = ..., buyer_is_maker: _Optional[bool] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class DepthDiff(_message.Message):
    __slots__ = ("first_update_id", "final_update_id", "prev_final_update_id", "bids", "asks", "exchange_us", "ingest_us")
    FIRST_UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    FINAL_UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    PREV_FINAL_UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    first_update_id: int
    final_update_id: int
    prev_final_update_id: int
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    exchange_us: int
    ingest_us: int
    def __init__(self, first_update_id: _Optional[int] = ..., final_update_id: _Optional[int] = ..., prev_final_update_id: _Optional[int] = ..., bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class BookTicker(_message.Message):
    __slots__ = ("update_id", "bid_price", "bid_qty", "ask_price", "ask_qty", "exchange_us", "ingest_us")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_QTY_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_QTY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    update_id: int
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    exchange_us: int
    ingest_us: int
    def __init__(self, update_id: _Optional[int] = ..., bid_price: _Optional[float] = ..., bid_qty: _Optional[float] = ..., ask_price: _Optional[float] = ..., ask_qty: _Optional[float] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class MarkPrice(_message.Message):
    __slots__ = ("mark_price", "index_price", "funding_rate", "next_funding_us", "exchange_us", "ingest_us")
    MARK_PRICE_FIELD_NUMBER: _ClassVar[int]
    INDEX_PRICE_FIELD_NUMBER: _ClassVar[int]
    FUNDING_RATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_FUNDING_US_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    mark_price: float
    index_price: float
    funding_rate: float
    next_funding_us: int
    exchange_us: int
    ingest_us: int
    def __init__(self, mark_price: _Optional[float] = ..., index_price: _Optional[float] = ..., funding_rate: _Optional[float] = ..., next_funding_us: _Optional[int] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class Liquidation(_message.Message):
    __slots__ = ("side", "price", "qty", "avg_price", "filled_qty", "trade_time_us", "exchange_us", "ingest_us")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    AVG_PRICE_FIELD_NUMBER: _ClassVar[int]
    FILLED_QTY_FIELD_NUMBER: _ClassVar[int]
    TRADE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    side: LiquidationSide
    price: float
    qty: float
    avg_price: float
    filled_qty: float
    trade_time_us: int
    exchange_us: int
    ingest_us: int
    def __init__(self, side: _Optional[_Union[LiquidationSide, str]] = ..., price: _Optional[float] = ..., qty: _Optional[float] = ..., avg_price: _Optional[float] = ..., filled_qty: _Optional[float] = ..., trade_time_us: _Optional[int] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class OpenInterest(_message.Message):
    __slots__ = ("open_interest", "exchange_us", "ingest_us")
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    open_interest: float
    exchange_us: int
    ingest_us: int
    def __init__(self, open_interest: _Optional[float] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class BookSnapshot(_message.Message):
    __slots__ = ("last_update_id", "bids", "asks", "exchange_us", "ingest_us")
    LAST_UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    last_update_id: int
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    exchange_us: int
    ingest_us: int
    def __init__(self, last_update_id: _Optional[int] = ..., bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ...) -> None: ...

class MarketEvent(_message.Message):
    __slots__ = ("trade", "depth", "book_ticker", "mark_price", "book")
    TRADE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    BOOK_TICKER_FIELD_NUMBER: _ClassVar[int]
    MARK_PRICE_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    trade: Trade
    depth: DepthDiff
    book_ticker: BookTicker
    mark_price: MarkPrice
    book: BookSnapshot
    def __init__(self, trade: _Optional[_Union[Trade, _Mapping]] = ..., depth: _Optional[_Union[DepthDiff, _Mapping]] = ..., book_ticker: _Optional[_Union[BookTicker, _Mapping]] = ..., mark_price: _Optional[_Union[MarkPrice, _Mapping]] = ..., book: _Optional[_Union[BookSnapshot, _Mapping]] = ...) -> None: ...

class TickBatch(_message.Message):
    __slots__ = ("schema_version", "batch_id", "venue", "symbol", "sequence", "events", "ts", "quality_flags", "liquidations", "open_interest")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLAGS_FIELD_NUMBER: _ClassVar[int]
    LIQUIDATIONS_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    batch_id: str
    venue: _common_pb2.Venue
    symbol: str
    sequence: int
    events: _containers.RepeatedCompositeFieldContainer[MarketEvent]
    ts: _common_pb2.Timestamps
    quality_flags: _containers.RepeatedScalarFieldContainer[_common_pb2.QualityFlag]
    liquidations: _containers.RepeatedCompositeFieldContainer[Liquidation]
    open_interest: _containers.RepeatedCompositeFieldContainer[OpenInterest]
    def __init__(self, schema_version: _Optional[int] = ..., batch_id: _Optional[str] = ..., venue: _Optional[_Union[_common_pb2.Venue, str]] = ..., symbol: _Optional[str] = ..., sequence: _Optional[int] = ..., events: _Optional[_Iterable[_Union[MarketEvent, _Mapping]]] = ..., ts: _Optional[_Union[_common_pb2.Timestamps, _Mapping]] = ..., quality_flags: _Optional[_Iterable[_Union[_common_pb2.QualityFlag, str]]] = ..., liquidations: _Optional[_Iterable[_Union[Liquidation, _Mapping]]] = ..., open_interest: _Optional[_Iterable[_Union[OpenInterest, _Mapping]]] = ...) -> None: ...
