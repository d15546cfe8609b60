"""Binance venue specs: everything venue-specific about spot and USD-M futures, as data.

Stream names and on which routed WebSocket path each lives (USD-M serves depth and bookTicker on ``/public`` and
trade, markPrice and forceOrder on ``/market``; unrouted connections only get ``/public`` streams), the REST prefix
and the paths under it (ping included: ``surge run`` and ``--source auto`` probe it), request weights and the per-minute
weight limit, the depth continuity rule (``futures``: spot ``U == previous u + 1``, USD-M ``pu == previous u``),
the allowed snapshot limits and the per-connection stream limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from schemas import common_pb2
from streams.runtime.settings import Settings

VenueName = Literal["spot", "usdm"]


@dataclass(frozen=True, slots=True)
class StreamKind:
    """One per-symbol stream: ``<symbol><suffix>``, served on WebSocket path ``route``."""

    name: str       # "trade" | "depth" | "bookTicker" | "markPrice" | "forceOrder"
    suffix: str     # "@trade", "@depth@100ms", ...
    route: str      # "" (spot) or "/public" | "/market" (USD-M routed paths)


@dataclass(frozen=True, slots=True)
class VenueSpec:
    name: VenueName
    venue: common_pb2.Venue
    futures: bool                          # depth continuity: pu == previous u (futures) or U == previous u + 1
    streams: tuple[StreamKind, ...]
    api: str                               # REST prefix: "/api/v3" or "/fapi/v1"
    depth_limits: tuple[int, ...] | None   # allowed snapshot limits; None: any up to 5000
    weight_limit_per_min: int              # Binance's REST request-weight limit per IP and minute
    max_streams_per_connection: int
    exchange_info_weight: int
    ticker_24hr_weight: int                # all symbols at once
    trades_weight: int                     # one page of historicalTrades / trades
    historical_trades_public: bool         # historicalTrades?fromId= without an API key
    open_interest_weight: int = 0          # REST openInterest of one symbol; 0: the venue has none (spot)

    # REST paths, all under the venue's prefix.
    @property
    def ping_path(self) -> str:
        return f"{self.api}/ping"

    @property
    def depth_path(self) -> str:
        return f"{self.api}/depth"

    @property
    def exchange_info_path(self) -> str:
        return f"{self.api}/exchangeInfo"

    @property
    def ticker_24hr_path(self) -> str:
        return f"{self.api}/ticker/24hr"

    @property
    def trades_path(self) -> str:
        return f"{self.api}/trades"

    @property
    def historical_trades_path(self) -> str:
        return f"{self.api}/historicalTrades"

    @property
    def open_interest_path(self) -> str:
        return f"{self.api}/openInterest"

    def depth_weight(self, limit: int) -> int:
        if self.futures:
            return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250

    def check_limit(self, limit: int) -> int:
        if self.depth_limits is not None and limit not in self.depth_limits:
            raise ValueError(f"{self.name} depth snapshots allow limit in {self.depth_limits}, not {limit}")
        if not 1 <= limit <= 5000:
            raise ValueError(f"depth snapshot limit {limit} outside 1..5000")
        return limit


SPOT: Final = VenueSpec(
    name="spot", venue=common_pb2.BINANCE_SPOT, futures=False,
    streams=(StreamKind("trade", "@trade", ""), StreamKind("depth", "@depth@100ms", ""),
             StreamKind("bookTicker", "@bookTicker", "")),
    api="/api/v3", depth_limits=None, weight_limit_per_min=6000, max_streams_per_connection=1024,
    exchange_info_weight=20, ticker_24hr_weight=80, trades_weight=25, historical_trades_public=True)

USDM: Final = VenueSpec(
    name="usdm", venue=common_pb2.BINANCE_USDM, futures=True,
    streams=(StreamKind("depth", "@depth@100ms", "/public"), StreamKind("bookTicker", "@bookTicker", "/public"),
             StreamKind("trade", "@trade", "/market"), StreamKind("markPrice", "@markPrice@1s", "/market"),
             StreamKind("forceOrder", "@forceOrder", "/market")),
    api="/fapi/v1", depth_limits=(5, 10, 20, 50, 100, 500, 1000), weight_limit_per_min=2400,
    max_streams_per_connection=200, exchange_info_weight=1, ticker_24hr_weight=40, trades_weight=5,
    historical_trades_public=False, open_interest_weight=1)

VENUES: Final[Mapping[str, VenueSpec]] = {"spot": SPOT, "usdm": USDM}


def venue_spec(name: str) -> VenueSpec:
    """The declarative description of one Binance venue (``SURGE_VENUE``)."""
    try:
        return VENUES[name]
    except KeyError:
        raise ValueError(f"unknown Binance venue {name!r}; choose spot or usdm") from None


def base_urls(settings: Settings, spec: VenueSpec) -> tuple[str, str]:
    """(WebSocket base, REST base) of the venue, from the SURGE_BINANCE_* settings."""
    if spec.futures:
        return settings.binance_futures_ws_url.rstrip("/"), settings.binance_futures_rest_url.rstrip("/")
    return settings.binance_ws_url.rstrip("/"), settings.binance_rest_url.rstrip("/")


def ping_url(settings: Settings) -> str:
    """The REST ping of ``settings.venue``: whether live Binance is reachable (``--source auto``, ``surge run``)."""
    spec = venue_spec(settings.venue)
    return base_urls(settings, spec)[1] + spec.ping_path
