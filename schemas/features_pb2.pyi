from schemas import common_pb2 as _common_pb2
from schemas import market_pb2 as _market_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureVector(_message.Message):
    __slots__ = ("schema_version", "vector_id", "venue", "symbol", "feature_version", "names", "values", "regime", "mid_price", "data_window_id", "ts", "quality_flags", "book_bids", "book_asks", "funding_rate")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REGIME_FIELD_NUMBER: _ClassVar[int]
    MID_PRICE_FIELD_NUMBER: _ClassVar[int]
    DATA_WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLAGS_FIELD_NUMBER: _ClassVar[int]
    BOOK_BIDS_FIELD_NUMBER: _ClassVar[int]
    BOOK_ASKS_FIELD_NUMBER: _ClassVar[int]
    FUNDING_RATE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    vector_id: str
    venue: _common_pb2.Venue
    symbol: str
    feature_version: str
    names: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    regime: str
    mid_price: float
    data_window_id: str
    ts: _common_pb2.Timestamps
    quality_flags: _containers.RepeatedScalarFieldContainer[_common_pb2.QualityFlag]
    book_bids: _containers.RepeatedCompositeFieldContainer[_market_pb2.PriceLevel]
    book_asks: _containers.RepeatedCompositeFieldContainer[_market_pb2.PriceLevel]
    funding_rate: float
    def __init__(self, schema_version: _Optional[int] = ..., vector_id: _Optional[str] = ..., venue: _Optional[_Union[_common_pb2.Venue, str]] = ..., symbol: _Optional[str] = ..., feature_version: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., regime: _Optional[str] = ..., mid_price: _Optional[float] = ..., data_window_id: _Optional[str] = ..., ts: _Optional[_Union[_common_pb2.Timestamps, _Mapping]] = ..., quality_flags: _Optional[_Iterable[_Union[_common_pb2.QualityFlag, str]]] = ..., book_bids: _Optional[_Iterable[_Union[_market_pb2.PriceLevel, _Mapping]]] = ..., book_asks: _Optional[_Iterable[_Union[_market_pb2.PriceLevel, _Mapping]]] = ..., funding_rate: _Optional[float] = ...) -> None: ...
