from schemas import common_pb2 as _common_pb2
from schemas import market_pb2 as _market_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HorizonProbability(_message.Message):
    __slots__ = ("horizon_min", "p_up", "ci_low", "ci_high", "upper_barrier_bps", "lower_barrier_bps", "timeout_counts_as_not_up")
    HORIZON_MIN_FIELD_NUMBER: _ClassVar[int]
    P_UP_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    UPPER_BARRIER_BPS_FIELD_NUMBER: _ClassVar[int]
    LOWER_BARRIER_BPS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_COUNTS_AS_NOT_UP_FIELD_NUMBER: _ClassVar[int]
    horizon_min: int
    p_up: float
    ci_low: float
    ci_high: float
    upper_barrier_bps: float
    lower_barrier_bps: float
    timeout_counts_as_not_up: bool
    def __init__(self, horizon_min: _Optional[int] = ..., p_up: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., upper_barrier_bps: _Optional[float] = ..., lower_barrier_bps: _Optional[float] = ..., timeout_counts_as_not_up: _Optional[bool] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("name", "value", "contribution")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    contribution: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("schema_version", "prediction_id", "venue", "symbol", "model_version", "feature_version", "horizons", "regime", "mid_price", "spread_bps", "top_features", "data_window_id", "canary", "ts", "quality_flags", "book_bids", "book_asks", "funding_rate", "liquidation_notional_1m")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HORIZONS_FIELD_NUMBER: _ClassVar[int]
    REGIME_FIELD_NUMBER: _ClassVar[int]
    MID_PRICE_FIELD_NUMBER: _ClassVar[int]
    SPREAD_BPS_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    DATA_WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLAGS_FIELD_NUMBER: _ClassVar[int]
    BOOK_BIDS_FIELD_NUMBER: _ClassVar[int]
    BOOK_ASKS_FIELD_NUMBER: _ClassVar[int]
    FUNDING_RATE_FIELD_NUMBER: _ClassVar[int]
    LIQUIDATION_NOTIONAL_1M_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    prediction_id: str
    venue: _common_pb2.Venue
    symbol: str
    model_version: str
    feature_version: str
    horizons: _containers.RepeatedCompositeFieldContainer[HorizonProbability]
    regime: str
    mid_price: float
    spread_bps: float
    top_features: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    data_window_id: str
    canary: bool
    ts: _common_pb2.Timestamps
    quality_flags: _containers.RepeatedScalarFieldContainer[_common_pb2.QualityFlag]
    book_bids: _containers.RepeatedCompositeFieldContainer[_market_pb2.PriceLevel]
    book_asks: _containers.RepeatedCompositeFieldContainer[_market_pb2.PriceLevel]
    funding_rate: float
    liquidation_notional_1m: float
    def __init__(self, schema_version: _Optional[int] = ..., prediction_id: _Optional[str] = ..., venue: _Optional[_Union[_common_pb2.Venue, str]] = ..., symbol: _Optional[str] = ..., model_version: _Optional[str] = ..., feature_version: _Optional[str] = ..., horizons: _Optional[_Iterable[_Union[HorizonProbability, _Mapping]]] = ..., regime: _Optional[str] = ..., mid_price: _Optional[float] = ..., spread_bps: _Optional[float] = ..., top_features: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ..., data_window_id: _Optional[str] = ..., canary: _Optional[bool] = ..., ts: _Optional[_Union[_common_pb2.Timestamps, _Mapping]] = ..., quality_flags: _Optional[_Iterable[_Union[_common_pb2.QualityFlag, str]]] = ..., book_bids: _Optional[_Iterable[_Union[_market_pb2.PriceLevel, _Mapping]]] = ..., book_asks: _Optional[_Iterable[_Union[_market_pb2.PriceLevel, _Mapping]]] = ..., funding_rate: _Optional[float] = ..., liquidation_notional_1m: _Optional[float] = ...) -> None: ...
