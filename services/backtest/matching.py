"""The matching engine: market orders walk the recorded book, resting limit orders keep their place in the queue,
and a documented bar fill model for 1-minute klines.

**Book** (tick/depth captures). The book is the ingest stage's ``BookSnapshot`` of each TickBatch (top 20 levels
per side, after the batch's diffs) and the batch's bookTickers. A market order (IOC) takes the levels best first,
at most ``Mode.max_levels`` of them; what those levels do not hold is not filled (a partial fill; the rest is
cancelled and counted in the fill rate). Liquidity taken stays taken until the next snapshot replaces the book.
Every fill of a market order is then made no better than the touch moved by the mode's slippage quantile (one
side of the cost model's round-trip beyond-touch slippage), the same "walked, or the quantile when it is worse"
rule the cost model applies above the median. A resting limit order (the take-profit) is price-time: it joins
the back of its price level (the visible quantity there is ahead of it), trades at its price eat the queue
ahead first, and a trade through its price fills it; fills pay the maker fee.

**Bars** (klines). A bar has no book, so the bar fill model is:

* a market order that reaches the exchange during bar k fills at bar k's **open**, moved against the order by
  the assumed half spread plus the mode's slippage quantile: a signal made on bar k-1's close (its features are
  those at the close) therefore fills at the next bar's open or worse, never at a price it could not know;
* at most ``Mode.bar_participation`` of bar k's volume is filled (the rest is unfilled: a partial fill);
* a stop (LONG: price x (1 - D)) triggers when a bar's low reaches it and fills at the stop or, if the bar
  opened beyond it, at the open, then moved by the slippage; a target (LONG: price x (1 + U)) is a resting limit
  that fills at its price when the bar trades through it (aggressive: touches it), with the maker fee;
* a bar that reaches both the stop and the target is a stop (the label's own rule: "both is DOWN").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

Level = tuple[float, float]  # (price, quantity in base units)

BUY: Final = 1
SELL: Final = -1


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    max_levels: int | None        # book levels a market order may take (None: all recorded)
    slippage_quantile: str        # cost-table quantile a fill is made no better than
    bar_participation: float      # klines: share of a bar's volume an order may take
    touch_fills_limit: bool       # bars: a limit fills when the bar touches its price (else: trades through)


MODE_NAMES: Final = ("conservative", "neutral", "aggressive")


def mode_of(name: str, *, quantile: str = "p50", stressed_quantile: str = "p97.5") -> Mode:
    """conservative: 2 levels and the stricter (stressed) quantile; neutral: 5 levels and the normal quantile;
    aggressive: every recorded level and the p25 quantile."""
    if name == "conservative":
        return Mode(name, 2, stressed_quantile, 0.01, False)
    if name == "neutral":
        return Mode(name, 5, quantile, 0.05, False)
    if name == "aggressive":
        return Mode(name, None, "p25", 1.0, True)
    raise ValueError(f"unknown mode {name!r}; choose one of {', '.join(MODE_NAMES)}")


@dataclass(frozen=True, slots=True)
class Fees:
    taker_bps: float
    maker_bps: float


@dataclass(slots=True)
class Fill:
    t_us: int
    price: float
    qty: float
    fee: float          # quote currency
    maker: bool
    levels: int = 1     # book levels the order took (1 for bars and limits)


def fee_of(price: float, qty: float, maker: bool, fees: Fees) -> float:
    return price * qty * (fees.maker_bps if maker else fees.taker_bps) / 1e4


def worse(price: float, side: int, bps: float) -> float:
    """``price`` moved ``bps`` against an order of ``side``."""
    return price * (1.0 + side * bps / 1e4)


# --- the book ----------------------------------------------------------------------------------------------------


class PriceLevelLike(Protocol):
    """A recorded level as the capture carries it (``market_pb2.PriceLevel``)."""

    @property
    def price(self) -> float: ...

    @property
    def qty(self) -> float: ...


@dataclass(slots=True)
class Book:
    """The recorded book of one instrument: levels best first, and what this backtest took from them.

    Most snapshots are replaced before any order meets them, so ``replace_recorded`` keeps the capture's levels
    as they are and they become (price, qty) tuples only when an order, a limit or a touch needs them."""

    _bids: list[Level] = field(default_factory=list)
    _asks: list[Level] = field(default_factory=list)
    taken: dict[tuple[int, float], float] = field(default_factory=dict)  # (side taken from, price) -> qty
    t_us: int = 0
    _recorded: tuple[Sequence[PriceLevelLike], Sequence[PriceLevelLike]] | None = None

    def replace(self, bids: Sequence[Level], asks: Sequence[Level], t_us: int) -> None:
        self._bids, self._asks, self.t_us, self._recorded = list(bids), list(asks), t_us, None
        self.taken.clear()

    def replace_recorded(self, bids: Sequence[PriceLevelLike], asks: Sequence[PriceLevelLike], t_us: int) -> None:
        """A snapshot from the capture, converted when first read (the sequences must not change meanwhile)."""
        self._recorded, self.t_us = (bids, asks), t_us
        self.taken.clear()

    def _materialize(self) -> None:
        assert self._recorded is not None
        bids, asks = self._recorded
        self._bids = [(lv.price, lv.qty) for lv in bids]
        self._asks = [(lv.price, lv.qty) for lv in asks]
        self._recorded = None

    @property
    def bids(self) -> list[Level]:
        if self._recorded is not None:
            self._materialize()
        return self._bids

    @property
    def asks(self) -> list[Level]:
        if self._recorded is not None:
            self._materialize()
        return self._asks

    def empty(self) -> bool:
        """No bid recorded yet (a bookTicker then stands in for the book)."""
        return not (self._recorded[0] if self._recorded is not None else self._bids)

    def touch(self, side: int) -> float:
        """The best price an order of ``side`` meets (ask for a buy); 0 when that side is empty."""
        levels = self.asks if side == BUY else self.bids
        return levels[0][0] if levels else 0.0

    def mid(self) -> float:
        bids, asks = self.bids, self.asks
        if not bids or not asks:
            return 0.0
        return (bids[0][0] + asks[0][0]) / 2.0

    def qty_at(self, side: int, price: float) -> float:
        """Resting quantity at ``price`` on the side a limit order of ``side`` joins (bids for a buy)."""
        levels = self.bids if side == BUY else self.asks
        for p, q in levels:
            if p == price:
                return q
        return 0.0


def walk(book: Book, side: int, qty: float, max_levels: int | None) -> list[Level]:
    """Take up to ``qty`` from the side a ``side`` order meets, best first, at most ``max_levels`` levels;
    (price, qty) per level taken. The book remembers what was taken."""
    levels = book.asks if side == BUY else book.bids
    out: list[Level] = []
    left = qty
    for i, (price, size) in enumerate(levels):
        if left <= 0.0 or (max_levels is not None and i >= max_levels):
            break
        key = (side, price)
        avail = size - book.taken.get(key, 0.0)
        if avail <= 0.0:
            continue
        take = min(avail, left)
        book.taken[key] = book.taken.get(key, 0.0) + take
        out.append((price, take))
        left -= take
    return out


def market_fill(book: Book, side: int, qty: float, t_us: int, mode: Mode, slippage_bps: float,
                fees: Fees) -> Fill | None:
    """An IOC market order against the book (see the module doc); None when nothing could be taken."""
    taken = walk(book, side, qty, mode.max_levels)
    filled = sum(q for _, q in taken)
    if filled <= 0.0:
        return None
    vwap = sum(p * q for p, q in taken) / filled
    floor = worse(taken[0][0], side, slippage_bps)  # the touch it met, moved by the quantile
    price = max(vwap, floor) if side == BUY else min(vwap, floor)
    return Fill(t_us, price, filled, fee_of(price, filled, False, fees), False, len(taken))


@dataclass(slots=True)
class RestingLimit:
    """A limit order in the book's queue (price-time): ``ahead`` is the quantity queued before it."""

    side: int
    price: float
    qty: float
    ahead: float
    filled: float = 0.0

    def on_trade(self, price: float, qty: float) -> float:
        """A trade printed at ``price`` for ``qty``; returns what of it fills this order."""
        left = self.qty - self.filled
        if left <= 0.0:
            return 0.0
        if (price > self.price) if self.side == SELL else (price < self.price):
            # The market traded beyond our price: every order at our level, ours included, was filled.
            got = left
        elif price == self.price:
            eat = min(self.ahead, qty)
            self.ahead -= eat
            got = min(left, qty - eat)
        else:
            got = 0.0
        self.filled += got
        return got


# --- bars -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    open_us: int
    open: float
    high: float
    low: float
    close: float
    volume: float


def bar_market_fill(bar: Bar, side: int, qty: float, t_us: int, mode: Mode, cost_bps: float,
                    fees: Fees, reference: float | None = None) -> Fill | None:
    """A market order reaching the exchange during ``bar``: its open (or ``reference`` when that is worse, e.g.
    a stop below the open), moved against the order by ``cost_bps`` (half spread + slippage quantile), at most
    ``mode.bar_participation`` of the bar's volume."""
    cap = mode.bar_participation * bar.volume
    filled = min(qty, cap) if cap > 0 else 0.0
    if filled <= 0.0:
        return None
    base = bar.open if reference is None else (max(bar.open, reference) if side == BUY
                                               else min(bar.open, reference))
    price = worse(base, side, cost_bps)
    return Fill(t_us, price, filled, fee_of(price, filled, False, fees), False, 1)


def bar_limit_reached(bar: Bar, side: int, price: float, mode: Mode) -> bool:
    """Does ``bar`` fill a resting limit of ``side`` at ``price`` (a SELL above the market: the high)?"""
    if side == SELL:
        return bar.high >= price if mode.touch_fills_limit else bar.high > price
    return bar.low <= price if mode.touch_fills_limit else bar.low < price


def bar_stop_reached(bar: Bar, side: int, stop: float) -> bool:
    """Does ``bar`` trigger a stop of an order of ``side`` (a SELL stop below the market: the low)?"""
    return bar.low <= stop if side == SELL else bar.high >= stop
