"""Value checks every stage applies to its input before using it: one set of rules and reasons for the pipeline.

Decoding (``topics.decode``) bounds the *shape* of a record (field sizes, the symbol's alphabet); these checks
bound its *values*. Each returns ``None`` when the value is fine, else a ``Problem``, ``(error_type, reason)``,
that the core turns into a ``Reject`` (``Reject(record, *problem)``): the record is dead-lettered with a
reason that names the field and the offending value, e.g. ``mid_price is -100.0: must be finite and > 0``.

Prices and sizes must be finite, > 0 and at most ``MAX_PRICE`` / ``MAX_QTY``: no instrument is quoted, and no
trade is sized, anywhere near those, and below them every product and sum the stages form stays finite.

Time is judged against the stage's injected clock, never the wall clock: an event time may be at most
``max_future_us`` ahead of it (clock skew between the venue and this host; ``SURGE_MAX_CLOCK_SKEW_S``) and at
most ``max_age_us`` behind it (``SURGE_MAX_EVENT_AGE_S``, years by default, so replays and backtests of old
captures, whose stages run on the live clock, pass). ``TimeBounds()`` has no bound at all: it is what a state
built directly (unit tests on a ``ManualClock`` at 0, batch tools) gets; the stages wire the settings in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from schemas import common_pb2
    from streams.runtime.settings import Settings

Problem: TypeAlias = tuple[str, str]  # (error_type, reason) for a Reject / dead letter

MAX_PRICE: Final = 1e12  # quote units per unit; BTC in IDR is ~2e9, float overflow is 1.8e308
MAX_QTY: Final = 1e18  # base units per trade/level; more than the supply of any token, and price x qty stays finite
MAX_BARRIER_BPS: Final = 10_000.0  # a label barrier of a 100% move; a price cannot fall further than that
MAX_SPREAD_BPS: Final = 20_000.0  # (ask - bid) / mid x 1e4 < 2e4 for any bid > 0

INVALID_PRICE: Final = "invalid_price"
INVALID_QTY: Final = "invalid_qty"
INVALID_VALUE: Final = "invalid_value"
INVALID_PROBABILITY: Final = "invalid_probability"
MISSING_EVENT_TIME: Final = "missing_event_time"
EVENT_TIME_IN_FUTURE: Final = "event_time_in_future"
EVENT_TIME_TOO_OLD: Final = "event_time_too_old"
INVALID_TIMESTAMPS: Final = "invalid_timestamps"

_US_PER_S: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """How far an event time may be from the stage's clock: ahead by ``max_future_us``, behind by
    ``max_age_us``; 0 is no bound on that side."""

    max_future_us: int = 0
    max_age_us: int = 0

    @classmethod
    def from_seconds(cls, max_future_s: float, max_age_s: float) -> TimeBounds:
        return cls(round(max_future_s * _US_PER_S), round(max_age_s * _US_PER_S))

    @classmethod
    def from_settings(cls, settings: Settings) -> TimeBounds:
        return cls.from_seconds(settings.max_clock_skew_s, settings.max_event_age_s)


UNBOUNDED: Final = TimeBounds()


def finite_positive_price(name: str, value: float) -> Problem | None:
    """A price: finite, > 0 and at most MAX_PRICE."""
    if 0.0 < value <= MAX_PRICE:  # False for NaN
        return None
    if value > MAX_PRICE and not math.isinf(value):
        return INVALID_PRICE, f"{name} is {value!r}: must be finite and at most {MAX_PRICE:g}"
    return INVALID_PRICE, f"{name} is {value!r}: must be finite and > 0"


def finite_positive_qty(name: str, value: float) -> Problem | None:
    """A size: finite, > 0 and at most MAX_QTY."""
    if 0.0 < value <= MAX_QTY:
        return None
    if value > MAX_QTY and not math.isinf(value):
        return INVALID_QTY, f"{name} is {value!r}: must be finite and at most {MAX_QTY:g}"
    return INVALID_QTY, f"{name} is {value!r}: must be finite and > 0"


def finite_in_range(name: str, value: float, low: float, high: float, error_type: str = INVALID_VALUE,
                    ) -> Problem | None:
    """A number in [low, high] (so never NaN or infinite)."""
    if low <= value <= high:
        return None
    return error_type, f"{name} is {value!r}: must be finite and in [{low:g}, {high:g}]"


def probability(name: str, value: float) -> Problem | None:
    return finite_in_range(name, value, 0.0, 1.0, INVALID_PROBABILITY)


def event_time_within(name: str, t_us: int, now_us: int, bounds: TimeBounds) -> Problem | None:
    """An event time: set (> 0) and within ``bounds`` of the clock's ``now_us``."""
    if t_us <= 0:
        return MISSING_EVENT_TIME, f"{name} is {t_us}: no event time"
    if bounds.max_future_us and t_us - now_us > bounds.max_future_us:
        return EVENT_TIME_IN_FUTURE, (f"{name} {t_us} is {(t_us - now_us) / _US_PER_S:.6g} s ahead of the clock "
                                      f"({now_us}), limit {bounds.max_future_us / _US_PER_S:g} s")
    if bounds.max_age_us and now_us - t_us > bounds.max_age_us:
        return EVENT_TIME_TOO_OLD, (f"{name} {t_us} is {(now_us - t_us) / _US_PER_S:.6g} s behind the clock "
                                    f"({now_us}), limit {bounds.max_age_us / _US_PER_S:g} s")
    return None


STAGE_STAMPS: Final = ("ingest_us", "features_us", "infer_us", "decision_us")


def timestamps_within(ts: common_pb2.Timestamps, now_us: int, bounds: TimeBounds,
                      stamps: Iterable[str] = STAGE_STAMPS) -> Problem | None:
    """A message's Timestamps: ``exchange_us`` within bounds of the clock, and every stage stamp that is set
    neither earlier than ``exchange_us`` by more than the skew (a negative latency) nor ahead of the clock."""
    problem = event_time_within("ts.exchange_us", ts.exchange_us, now_us, bounds)
    if problem is not None:
        return problem
    skew = bounds.max_future_us
    if not skew:
        return None
    for stamp in stamps:
        at = getattr(ts, stamp)
        if not at:
            continue  # 0: not stamped (proto3 default)
        if ts.exchange_us - at > skew:
            return INVALID_TIMESTAMPS, (f"ts.{stamp} {at} is {(ts.exchange_us - at) / _US_PER_S:.6g} s before "
                                        f"ts.exchange_us {ts.exchange_us}, limit {skew / _US_PER_S:g} s")
        if at - now_us > skew:
            return INVALID_TIMESTAMPS, (f"ts.{stamp} {at} is {(at - now_us) / _US_PER_S:.6g} s ahead of the clock "
                                        f"({now_us}), limit {skew / _US_PER_S:g} s")
    return None
