from schemas import common_pb2 as _common_pb2
from schemas import prediction_pb2 as _prediction_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    LONG: _ClassVar[Decision]
    SHORT: _ClassVar[Decision]
    WAIT: _ClassVar[Decision]

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_NONE: _ClassVar[Tier]
    TIER_A: _ClassVar[Tier]
    TIER_B: _ClassVar[Tier]
DECISION_UNSPECIFIED: Decision
LONG: Decision
SHORT: Decision
WAIT: Decision
TIER_NONE: Tier
TIER_A: Tier
TIER_B: Tier

class Signal(_message.Message):
    __slots__ = ("schema_version", "signal_id", "venue", "symbol", "decision", "tier", "p_up", "horizon_min", "expected_return_bps", "estimated_cost_bps", "net_utility_bps", "regime", "top_features", "model_version", "feature_version", "cost_model_version", "data_window_id", "quality_flags", "ts", "cooldown_until_us", "price", "upper_barrier_bps", "lower_barrier_bps")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    P_UP_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MIN_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_RETURN_BPS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_BPS_FIELD_NUMBER: _ClassVar[int]
    NET_UTILITY_BPS_FIELD_NUMBER: _ClassVar[int]
    REGIME_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COST_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FLAGS_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_UNTIL_US_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    UPPER_BARRIER_BPS_FIELD_NUMBER: _ClassVar[int]
    LOWER_BARRIER_BPS_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    signal_id: str
    venue: _common_pb2.Venue
    symbol: str
    decision: Decision
    tier: Tier
    p_up: float
    horizon_min: int
    expected_return_bps: float
    estimated_cost_bps: float
    net_utility_bps: float
    regime: str
    top_features: _containers.RepeatedCompositeFieldContainer[_prediction_pb2.FeatureContribution]
    model_version: str
    feature_version: str
    cost_model_version: str
    data_window_id: str
    quality_flags: _containers.RepeatedScalarFieldContainer[_common_pb2.QualityFlag]
    ts: _common_pb2.Timestamps
    cooldown_until_us: int
    price: float
    upper_barrier_bps: float
    lower_barrier_bps: float
    def __init__(self, schema_version: _Optional[int] = ..., signal_id: _Optional[str] = ..., venue: _Optional[_Union[_common_pb2.Venue, str]] = ..., symbol: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., tier: _Optional[_Union[Tier, str]] = ..., p_up: _Optional[float] = ..., horizon_min: _Optional[int] = ..., expected_return_bps: _Optional[float] = ..., estimated_cost_bps: _Optional[float] = ..., net_utility_bps: _Optional[float] = ..., regime: _Optional[str] = ..., top_features: _Optional[_Iterable[_Union[_prediction_pb2.FeatureContribution, _Mapping]]] = ..., model_version: _Optional[str] = ..., feature_version: _Optional[str] = ..., cost_model_version: _Optional[str] = ..., data_window_id: _Optional[str] = ..., quality_flags: _Optional[_Iterable[_Union[_common_pb2.QualityFlag, str]]] = ..., ts: _Optional[_Union[_common_pb2.Timestamps, _Mapping]] = ..., cooldown_until_us: _Optional[int] = ..., price: _Optional[float] = ..., upper_barrier_bps: _Optional[float] = ..., lower_barrier_bps: _Optional[float] = ...) -> None: ...
