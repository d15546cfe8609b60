from schemas import common_pb2 as _common_pb2
from schemas import signal_pb2 as _signal_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutcomeLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_LABEL_UNSPECIFIED: _ClassVar[OutcomeLabel]
    HIT_TARGET: _ClassVar[OutcomeLabel]
    HIT_STOP: _ClassVar[OutcomeLabel]
    TIMEOUT: _ClassVar[OutcomeLabel]
OUTCOME_LABEL_UNSPECIFIED: OutcomeLabel
HIT_TARGET: OutcomeLabel
HIT_STOP: OutcomeLabel
TIMEOUT: OutcomeLabel

class Outcome(_message.Message):
    __slots__ = ("schema_version", "outcome_id", "signal_id", "venue", "symbol", "decision", "tier", "horizon_min", "label", "entry_price", "exit_price", "realized_return_bps", "net_return_bps", "max_favourable_bps", "max_adverse_bps", "entry_us", "exit_us", "ts", "time_to_barrier_us", "estimated_cost_bps", "realized_cost_bps", "upper_barrier_bps", "lower_barrier_bps", "paper_equity", "risk_state")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_ID_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    HORIZON_MIN_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ENTRY_PRICE_FIELD_NUMBER: _ClassVar[int]
    EXIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    REALIZED_RETURN_BPS_FIELD_NUMBER: _ClassVar[int]
    NET_RETURN_BPS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAVOURABLE_BPS_FIELD_NUMBER: _ClassVar[int]
    MAX_ADVERSE_BPS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_US_FIELD_NUMBER: _ClassVar[int]
    EXIT_US_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_BARRIER_US_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_BPS_FIELD_NUMBER: _ClassVar[int]
    REALIZED_COST_BPS_FIELD_NUMBER: _ClassVar[int]
    UPPER_BARRIER_BPS_FIELD_NUMBER: _ClassVar[int]
    LOWER_BARRIER_BPS_FIELD_NUMBER: _ClassVar[int]
    PAPER_EQUITY_FIELD_NUMBER: _ClassVar[int]
    RISK_STATE_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    outcome_id: str
    signal_id: str
    venue: _common_pb2.Venue
    symbol: str
    decision: _signal_pb2.Decision
    tier: _signal_pb2.Tier
    horizon_min: int
    label: OutcomeLabel
    entry_price: float
    exit_price: float
    realized_return_bps: float
    net_return_bps: float
    max_favourable_bps: float
    max_adverse_bps: float
    entry_us: int
    exit_us: int
    ts: _common_pb2.Timestamps
    time_to_barrier_us: int
    estimated_cost_bps: float
    realized_cost_bps: float
    upper_barrier_bps: float
    lower_barrier_bps: float
    paper_equity: float
    risk_state: str
    def __init__(self, schema_version: _Optional[int] = ..., outcome_id: _Optional[str] = ..., signal_id: _Optional[str] = ..., venue: _Optional[_Union[_common_pb2.Venue, str]] = ..., symbol: _Optional[str] = ..., decision: _Optional[_Union[_signal_pb2.Decision, str]] = ..., tier: _Optional[_Union[_signal_pb2.Tier, str]] = ..., horizon_min: _Optional[int] = ..., label: _Optional[_Union[OutcomeLabel, str]] = ..., entry_price: _Optional[float] = ..., exit_price: _Optional[float] = ..., realized_return_bps: _Optional[float] = ..., net_return_bps: _Optional[float] = ..., max_favourable_bps: _Optional[float] = ..., max_adverse_bps: _Optional[float] = ..., entry_us: _Optional[int] = ..., exit_us: _Optional[int] = ..., ts: _Optional[_Union[_common_pb2.Timestamps, _Mapping]] = ..., time_to_barrier_us: _Optional[int] = ..., estimated_cost_bps: _Optional[float] = ..., realized_cost_bps: _Optional[float] = ..., upper_barrier_bps: _Optional[float] = ..., lower_barrier_bps: _Optional[float] = ..., paper_equity: _Optional[float] = ..., risk_state: _Optional[str] = ...) -> None: ...
