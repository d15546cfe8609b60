"""The instrument key: one definition of "which market" for Kafka keys, every stage's state and Redis.

A symbol alone is ambiguous: spot BTCUSDT and USD-M BTCUSDT are different instruments with different prices,
books and funding, and must not share a cooldown, a feature window or a "latest signal" slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

from schemas import common_pb2


class HasInstrument(Protocol):
    @property
    def venue(self) -> int: ...

    @property
    def symbol(self) -> str: ...


@cache
def venue_name(venue: int) -> str:
    """The Venue enum's name; an unknown number (a newer producer) keeps its digits rather than failing."""
    try:
        return str(common_pb2.Venue.Name(venue))
    except ValueError:
        return str(venue)


@dataclass(frozen=True, slots=True)
class Instrument:
    venue: int
    symbol: str

    @property
    def key(self) -> str:
        """``BINANCE_SPOT:BTCUSDT``: the Kafka record key of every message about this instrument."""
        return f"{venue_name(self.venue)}:{self.symbol}"

    @classmethod
    def of(cls, message: HasInstrument) -> Instrument:
        return cls(int(message.venue), message.symbol)


def key_of(message: HasInstrument) -> str:
    return Instrument.of(message).key
