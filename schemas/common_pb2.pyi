from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class QualityFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUALITY_FLAG_UNSPECIFIED: _ClassVar[QualityFlag]
    DEGRADED_TIME_SYNC: _ClassVar[QualityFlag]
    BOOK_RESYNCING: _ClassVar[QualityFlag]
    SEQUENCE_GAP: _ClassVar[QualityFlag]
    WINDOW_INSUFFICIENT: _ClassVar[QualityFlag]
    TIERS_DROPPED: _ClassVar[QualityFlag]
    STALE_INPUT: _ClassVar[QualityFlag]
    QUARANTINED: _ClassVar[QualityFlag]
    BOOK_TICKER_DIVERGENCE: _ClassVar[QualityFlag]
    SIMULATED: _ClassVar[QualityFlag]

class Venue(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VENUE_UNSPECIFIED: _ClassVar[Venue]
    BINANCE_SPOT: _ClassVar[Venue]
    BINANCE_USDM: _ClassVar[Venue]
    SIMULATOR: _ClassVar[Venue]
QUALITY_FLAG_UNSPECIFIED: QualityFlag
DEGRADED_TIME_SYNC: QualityFlag
BOOK_RESYNCING: QualityFlag
SEQUENCE_GAP: QualityFlag
WINDOW_INSUFFICIENT: QualityFlag
TIERS_DROPPED: QualityFlag
STALE_INPUT: QualityFlag
QUARANTINED: QualityFlag
BOOK_TICKER_DIVERGENCE: QualityFlag
SIMULATED: QualityFlag
VENUE_UNSPECIFIED: Venue
BINANCE_SPOT: Venue
BINANCE_USDM: Venue
SIMULATOR: Venue

class Timestamps(_message.Message):
    __slots__ = ("exchange_us", "ingest_us", "features_us", "infer_us", "decision_us")
    EXCHANGE_US_FIELD_NUMBER: _ClassVar[int]
    INGEST_US_FIELD_NUMBER: _ClassVar[int]
    FEATURES_US_FIELD_NUMBER: _ClassVar[int]
    INFER_US_FIELD_NUMBER: _ClassVar[int]
    DECISION_US_FIELD_NUMBER: _ClassVar[int]
    exchange_us: int
    ingest_us: int
    features_us: int
    infer_us: int
    decision_us: int
    def __init__(self, exchange_us: _Optional[int] = ..., ingest_us: _Optional[int] = ..., features_us: _Optional[int] = ..., infer_us: _Optional[int] = ..., decision_us: _Optional[int] = ...) -> None: ...
