"""Inputs -> kernel rows: TickBatches (validated here) and 1-minute klines. Part of the feature_version hash.

A TickBatch becomes one row per mark-price update, open-interest sample, liquidation and trade, in event order,
then one batch row with the book after the batch (the last BookSnapshot of the batch). A kline becomes one bar
row at its close. The kernel (``definitions.fold``) is the only consumer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from schemas import market_pb2
from streams.features import definitions as d

Level = tuple[float, float]


class InvalidBatch(Exception):
    """A TickBatch the features stage refuses; becomes a Reject with this error type."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Book:
    """The top BOOK_LEVELS levels per side of one validated BookSnapshot, best first."""

    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    exchange_us: int


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """What the features read from one TickBatch, validated."""

    t_us: int  # event time of the batch (ts.exchange_us, else the newest event's)
    sequence: int
    book: Book | None  # None: no snapshot, or a one-sided book
    trades: tuple[tuple[int, float, float, bool], ...]  # (time µs, price, qty, aggressor sold)
    marks: tuple[tuple[int, float, float, float, int], ...]  # (time µs, mark, index, funding, next funding µs)
    # (trade time µs, price, qty, avg price, filled qty, sold); (time µs, open interest)
    liquidations: tuple[tuple[int, float, float, float, float, bool], ...] = ()
    open_interest: tuple[tuple[int, float], ...] = ()


def _levels(side: str, levels: Iterable[market_pb2.PriceLevel], descending: bool) -> list[Level]:
    """(price, qty) pairs; raises InvalidBatch unless finite, positive and strictly sorted best first."""
    out = [(lvl.price, lvl.qty) for lvl in levels]
    prev = math.inf if descending else 0.0
    for i, (price, qty) in enumerate(out):
        # Plain comparisons (False for NaN) are several times cheaper here than numpy on 20 levels.
        if not 0.0 < price < math.inf:
            raise InvalidBatch("invalid_price", f"book {side}[{i}] price {price!r}")
        if not 0.0 < qty < math.inf:
            raise InvalidBatch("invalid_qty", f"book {side}[{i}] qty {qty!r}")
        if (price >= prev) if descending else (price <= prev):
            order = "descending" if descending else "ascending"
            raise InvalidBatch("invalid_book", f"book {side} not strictly {order} at level {i}")
        prev = price
    return out


def parse_book(snap: market_pb2.BookSnapshot) -> Book | None:
    """Validate a snapshot (finite positive levels, sorted, not crossed); None for a one-sided book."""
    bids = _levels("bids", snap.bids, descending=True)
    asks = _levels("asks", snap.asks, descending=False)
    if not bids or not asks:
        return None  # a one-sided book has no mid: book features are NaN, not an error
    if bids[0][0] >= asks[0][0]:
        raise InvalidBatch("crossed_book", f"best bid {bids[0][0]!r} >= best ask {asks[0][0]!r}")
    return Book(tuple(bids[:d.BOOK_LEVELS]), tuple(asks[:d.BOOK_LEVELS]), snap.exchange_us)


def parse_batch(tb: market_pb2.TickBatch) -> ParsedBatch:
    """Validate what the features read from a batch; raises InvalidBatch."""
    if not tb.symbol:
        raise InvalidBatch("missing_symbol", "TickBatch.symbol is empty")
    snap: market_pb2.BookSnapshot | None = None
    trades: list[tuple[int, float, float, bool]] = []
    marks: list[tuple[int, float, float, float, int]] = []
    newest_us = 0
    for ev in tb.events:
        kind = ev.WhichOneof("event")
        if kind == "trade":
            tr = ev.trade
            if not (math.isfinite(tr.price) and tr.price > 0.0):
                raise InvalidBatch("invalid_price", f"trade {tr.trade_id} price {tr.price!r}")
            if not (math.isfinite(tr.qty) and tr.qty > 0.0):
                raise InvalidBatch("invalid_qty", f"trade {tr.trade_id} qty {tr.qty!r}")
            trades.append((tr.exchange_us, tr.price, tr.qty, tr.buyer_is_maker))
            newest_us = max(newest_us, tr.exchange_us)
        elif kind == "book":
            snap = ev.book  # the last snapshot of the batch is the book after all its diffs
            newest_us = max(newest_us, snap.exchange_us)
        elif kind == "mark_price":
            mp = ev.mark_price
            if not (0.0 < mp.mark_price < math.inf and 0.0 < mp.index_price < math.inf):
                raise InvalidBatch("invalid_price", f"mark {mp.mark_price!r} / index {mp.index_price!r}")
            if not math.isfinite(mp.funding_rate):
                raise InvalidBatch("invalid_field", f"funding rate {mp.funding_rate!r}")
            marks.append((mp.exchange_us, mp.mark_price, mp.index_price, mp.funding_rate, mp.next_funding_us))
            newest_us = max(newest_us, mp.exchange_us)
        elif kind == "depth":
            newest_us = max(newest_us, ev.depth.exchange_us)
        elif kind == "book_ticker":
            newest_us = max(newest_us, ev.book_ticker.exchange_us)
    liquidations: list[tuple[int, float, float, float, float, bool]] = []
    for i, liq in enumerate(tb.liquidations):
        if not (0.0 < liq.price < math.inf and 0.0 <= liq.avg_price < math.inf):
            raise InvalidBatch("invalid_price", f"liquidation[{i}] price {liq.price!r} / avg {liq.avg_price!r}")
        if not (0.0 < liq.qty < math.inf and 0.0 <= liq.filled_qty < math.inf):
            raise InvalidBatch("invalid_qty", f"liquidation[{i}] qty {liq.qty!r} / filled {liq.filled_qty!r}")
        if liq.side not in (market_pb2.LIQUIDATION_SIDE_BUY, market_pb2.LIQUIDATION_SIDE_SELL):
            raise InvalidBatch("invalid_field", f"liquidation[{i}] side {liq.side!r}")
        at = liq.trade_time_us or liq.exchange_us
        liquidations.append((at, liq.price, liq.qty, liq.avg_price, liq.filled_qty,
                             liq.side == market_pb2.LIQUIDATION_SIDE_SELL))
        newest_us = max(newest_us, at, liq.exchange_us)
    open_interest: list[tuple[int, float]] = []
    for i, oi in enumerate(tb.open_interest):
        if not 0.0 <= oi.open_interest < math.inf:
            raise InvalidBatch("invalid_qty", f"open_interest[{i}] {oi.open_interest!r}")
        open_interest.append((oi.exchange_us, oi.open_interest))
        newest_us = max(newest_us, oi.exchange_us)
    t_us = tb.ts.exchange_us or newest_us
    if t_us <= 0:
        raise InvalidBatch("missing_event_time", "TickBatch has no exchange time")
    book = parse_book(snap) if snap is not None else None
    # An event without its own time happened within this batch.
    trades = [(at if at > 0 else t_us, p, q, s) for at, p, q, s in trades]
    marks = [(at if at > 0 else t_us, m, i, f, n) for at, m, i, f, n in marks]
    liquidations = [(at if at > 0 else t_us, price, qty, avg, filled, sold)
                    for at, price, qty, avg, filled, sold in liquidations]
    open_interest = [(at if at > 0 else t_us, value) for at, value in open_interest]
    return ParsedBatch(t_us, tb.sequence, book, tuple(trades), tuple(marks), tuple(liquidations),
                       tuple(open_interest))


@dataclass(frozen=True, slots=True)
class Rows:
    """Kernel input: kinds [n], times [n] (µs), aux [n, 2] (int64), x [n, N_X] (float64)."""

    kinds: d.IntArray
    times: d.IntArray
    aux: d.IntArray
    x: d.FloatArray

    @property
    def n_vectors(self) -> int:
        return int(np.count_nonzero((self.kinds == d.KIND_BATCH) | (self.kinds == d.KIND_BAR)))


def encode_batches(batches: Sequence[ParsedBatch]) -> Rows:
    """Mark prices, open interest, liquidations and trades in event order, then the batch row with the book, per
    batch."""
    n = sum(len(p.trades) + len(p.marks) + len(p.liquidations) + len(p.open_interest) + 1 for p in batches)
    kinds = np.zeros(n, np.int64)
    times = np.zeros(n, np.int64)
    aux = np.zeros((n, 2), np.int64)
    x = np.zeros((n, d.N_X), np.float64)
    r = 0
    for p in batches:
        # Marks and trades are independent streams; folding marks first keeps a batch's order deterministic.
        for at, mark, index, funding, next_funding in p.marks:
            kinds[r], times[r], aux[r, 0] = d.KIND_MARK, at, next_funding
            x[r, d.X_MARK], x[r, d.X_INDEX], x[r, d.X_FUNDING] = mark, index, funding
            r += 1
        for at, value in p.open_interest:
            kinds[r], times[r], x[r, d.X_OI] = d.KIND_OI, at, value
            r += 1
        for at, price, qty, avg, filled, sold in p.liquidations:
            kinds[r], times[r] = d.KIND_LIQ, at
            x[r, d.X_LIQ_PRICE], x[r, d.X_LIQ_QTY], x[r, d.X_LIQ_AVG] = price, qty, avg
            x[r, d.X_LIQ_FILLED], x[r, d.X_LIQ_SELL] = filled, 1.0 if sold else 0.0
            r += 1
        for at, price, qty, sold in p.trades:
            kinds[r], times[r] = d.KIND_TRADE, at
            x[r, d.X_PRICE], x[r, d.X_QTY], x[r, d.X_SELL] = price, qty, 1.0 if sold else 0.0
            r += 1
        kinds[r], times[r], aux[r, 0] = d.KIND_BATCH, p.t_us, p.sequence
        book = p.book
        if book is not None:
            aux[r, 1] = book.exchange_us
            nb, na = len(book.bids), len(book.asks)
            x[r, d.X_HAS_BOOK], x[r, d.X_NBID], x[r, d.X_NASK] = 1.0, nb, na
            x[r, d.X_BID_PX:d.X_BID_PX + nb] = [lvl[0] for lvl in book.bids]
            x[r, d.X_BID_QTY:d.X_BID_QTY + nb] = [lvl[1] for lvl in book.bids]
            x[r, d.X_ASK_PX:d.X_ASK_PX + na] = [lvl[0] for lvl in book.asks]
            x[r, d.X_ASK_QTY:d.X_ASK_QTY + na] = [lvl[1] for lvl in book.asks]
        r += 1
    return Rows(kinds, times, aux, x)


def encode_bars(open_us: d.IntArray, o: d.FloatArray, h: d.FloatArray, lo: d.FloatArray, c: d.FloatArray,
                volume: d.FloatArray, quote: d.FloatArray, count: d.FloatArray, taker_base: d.FloatArray,
                taker_quote: d.FloatArray) -> Rows:
    """One bar row per kline at its close (open + BAR_US); NaN marks a column the file does not have."""
    n = open_us.shape[0]
    x = np.zeros((n, d.N_X), np.float64)
    for col, values in ((d.X_OPEN, o), (d.X_HIGH, h), (d.X_LOW, lo), (d.X_CLOSE, c), (d.X_VOLUME, volume),
                        (d.X_QUOTE, quote), (d.X_COUNT, count), (d.X_TAKER_BASE, taker_base),
                        (d.X_TAKER_QUOTE, taker_quote)):
        x[:, col] = values
    return Rows(np.full(n, d.KIND_BAR, np.int64), open_us.astype(np.int64) + d.BAR_US, np.zeros((n, 2), np.int64), x)
