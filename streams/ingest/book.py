"""Local order book per symbol, kept in sync with Binance diff-depth streams.

Sync procedure (Binance "how to manage a local order book correctly"), as a small state machine:

* ``AWAITING_SNAPSHOT``: diffs are buffered until a REST snapshot is applied.
* After the snapshot, diffs with ``u <= lastUpdateId`` (futures: ``u < lastUpdateId``) are stale and dropped;
  the first applied diff must straddle the snapshot: spot ``U <= lastUpdateId + 1 <= u``, futures
  ``U <= lastUpdateId <= u``.
* ``LIVE``: spot requires ``U == previous u + 1``, futures ``pu == previous u``.
* A gap or a crossed book (best bid >= best ask) moves the book to ``RESYNCING``: it buffers again and
  reports the problem once, so the caller asks for one new snapshot instead of a storm of them.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

Level = tuple[float, float]  # (price, qty)


class BookState(Enum):
    AWAITING_SNAPSHOT = "awaiting_snapshot"   # never synced: buffering
    AWAITING_FIRST = "awaiting_first"         # snapshot applied, no diff applied on top yet
    LIVE = "live"
    RESYNCING = "resyncing"                   # lost sync after a gap or a crossed book: buffering


class SyncStatus(Enum):
    APPLIED = "applied"
    BUFFERED = "buffered"   # waiting for a snapshot
    STALE = "stale"         # older than the book; dropped
    GAP = "gap"             # update ids do not connect; the book now waits for a new snapshot
    CROSSED = "crossed"     # the update left best bid >= best ask; the book now waits for a new snapshot


@dataclass(frozen=True, slots=True)
class DepthUpdate:
    """One diff-depth event as the book needs it; qty 0 removes a level."""

    first_update_id: int        # U
    final_update_id: int        # u
    prev_final_update_id: int   # pu (futures); 0 on spot
    bids: Sequence[Level]
    asks: Sequence[Level]
    exchange_us: int = 0
    local_us: int = 0


class _Side:
    """Price levels of one side: a dict for O(1) updates plus an ascending price list for ordered access."""

    __slots__ = ("levels", "prices")

    def __init__(self) -> None:
        self.levels: dict[float, float] = {}
        self.prices: list[float] = []

    def clear(self) -> None:
        self.levels.clear()
        self.prices.clear()

    def set(self, price: float, qty: float) -> None:
        if qty == 0.0:
            # Removing a level we never had is normal on Binance (it was outside our snapshot depth).
            if self.levels.pop(price, None) is not None:
                del self.prices[bisect.bisect_left(self.prices, price)]
            return
        if price not in self.levels:
            bisect.insort(self.prices, price)
        self.levels[price] = qty

    def __len__(self) -> int:
        return len(self.prices)


def _update(side: _Side, updates: Sequence[Level]) -> None:
    """``side.set`` for many levels, inlined: the hot loop of every diff."""
    levels, prices = side.levels, side.prices
    for price, qty in updates:
        if qty == 0.0:
            if levels.pop(price, None) is not None:
                del prices[bisect.bisect_left(prices, price)]
        else:
            if price not in levels:
                bisect.insort(prices, price)
            levels[price] = qty


class OrderBook:
    """The local book of one symbol. ``futures`` selects the USD-M continuity rule (``pu``)."""

    def __init__(self, symbol: str, *, futures: bool = False, max_buffer: int = 10_000) -> None:
        self.symbol = symbol
        self.futures = futures
        self.state = BookState.AWAITING_SNAPSHOT
        self.last_update_id = 0
        self.last_exchange_us = 0   # exchange time of the newest applied diff (or the snapshot, if known)
        self.last_local_us = 0      # local receive time of the same
        self._bids = _Side()
        self._asks = _Side()
        # Bounded: if the snapshot takes too long the oldest diffs fall out and the straddle check fails.
        self._buffer: deque[DepthUpdate] = deque(maxlen=max_buffer)

    # --- sync -------------------------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True while the levels are a valid picture of the venue's book at ``last_update_id``."""
        return self.state in (BookState.AWAITING_FIRST, BookState.LIVE)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def apply_snapshot(
        self,
        last_update_id: int,
        bids: Iterable[Level],
        asks: Iterable[Level],
        *,
        exchange_us: int = 0,
        local_us: int = 0,
    ) -> SyncStatus:
        """Reset to a REST snapshot, then replay the buffered diffs on top of it.

        Returns APPLIED when the book is synced, GAP when the buffer does not connect to the snapshot
        (e.g. the snapshot is older than the first buffered diff: fetch another), or CROSSED.
        """
        self._bids.clear()
        self._asks.clear()
        for price, qty in bids:
            self._bids.set(price, qty)
        for price, qty in asks:
            self._asks.set(price, qty)
        self.last_update_id = last_update_id
        self.last_exchange_us = exchange_us
        self.last_local_us = local_us
        self.state = BookState.AWAITING_FIRST
        if self.is_crossed():
            self.state = BookState.RESYNCING
            return SyncStatus.CROSSED
        pending = list(self._buffer)
        self._buffer.clear()
        for i, diff in enumerate(pending):
            status = self._apply_synced(diff)
            if status in (SyncStatus.GAP, SyncStatus.CROSSED):
                # Keep what follows the failure for the next snapshot; the culprit itself too on a gap.
                keep = pending[i:] if status is SyncStatus.GAP else pending[i + 1:]
                self._buffer.extend(keep)
                return status
        return SyncStatus.APPLIED

    def apply(self, diff: DepthUpdate) -> SyncStatus:
        """Apply one diff according to the sync procedure."""
        if self.state in (BookState.AWAITING_SNAPSHOT, BookState.RESYNCING):
            self._buffer.append(diff)
            return SyncStatus.BUFFERED
        status = self._apply_synced(diff)
        if status is SyncStatus.GAP:
            self._buffer.append(diff)  # it may still straddle the next snapshot
        return status

    def mark_resyncing(self) -> None:
        """Give up on the current levels (e.g. after a reconnect) and buffer until the next snapshot."""
        if self.state is not BookState.AWAITING_SNAPSHOT:
            self.state = BookState.RESYNCING

    def _apply_synced(self, diff: DepthUpdate) -> SyncStatus:
        last = self.last_update_id
        first, final = diff.first_update_id, diff.final_update_id
        if self.state is BookState.AWAITING_FIRST:
            if self.futures:
                if final < last:
                    return SyncStatus.STALE
                connects = first <= last <= final
            else:
                if final <= last:
                    return SyncStatus.STALE
                connects = first <= last + 1 <= final
        else:
            if final <= last:
                return SyncStatus.STALE  # a duplicate, e.g. overlapping replay after a reconnect
            connects = diff.prev_final_update_id == last if self.futures else first == last + 1
        if not connects:
            self.state = BookState.RESYNCING
            return SyncStatus.GAP
        _update(self._bids, diff.bids)
        _update(self._asks, diff.asks)
        self.last_update_id = final
        self.last_exchange_us = diff.exchange_us
        self.last_local_us = diff.local_us
        if self.is_crossed():
            self.state = BookState.RESYNCING
            return SyncStatus.CROSSED
        self.state = BookState.LIVE
        return SyncStatus.APPLIED

    # --- reads ------------------------------------------------------------------------------------------------

    def best_bid(self) -> Level | None:
        if not self._bids.prices:
            return None
        price = self._bids.prices[-1]
        return price, self._bids.levels[price]

    def best_ask(self) -> Level | None:
        if not self._asks.prices:
            return None
        price = self._asks.prices[0]
        return price, self._asks.levels[price]

    def is_crossed(self) -> bool:
        bids, asks = self._bids.prices, self._asks.prices
        return bool(bids and asks and bids[-1] >= asks[0])

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """The best ``n`` levels per side, best first: (bids descending, asks ascending)."""
        bid_levels, ask_levels = self._bids.levels, self._asks.levels
        bid_prices = self._bids.prices[-n:] if n > 0 else []
        bids = [(p, bid_levels[p]) for p in reversed(bid_prices)]
        asks = [(p, ask_levels[p]) for p in self._asks.prices[:n]] if n > 0 else []
        return bids, asks

    def depth(self) -> tuple[int, int]:
        """Number of (bid, ask) levels held."""
        return len(self._bids), len(self._asks)
