"""Features core: one FeatureVector per TickBatch from fixed-memory, O(1)-per-batch streaming state per symbol.

Per symbol, every accepted batch becomes one sample row in a numpy ring buffer (time, sequence, mid and the
summable columns below). Each time window keeps a head index into the ring and running sums of the columns,
so a batch costs one add per window plus the evictions of samples that left it; nothing is recomputed over a
whole window per event (the sums are re-added from the ring every RESUM_EVERY batches only to bound float
drift). ``rv_1m`` keeps a 64-slot ring of 1 s returns with a running sum of squares. The formulas live in
``definitions.py``; this module only feeds them. See the module docstring there for the windowing policy.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, market_pb2
from streams.features import definitions as d
from streams.runtime.clock import Clock, ManualClock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.topics import Topic

if TYPE_CHECKING:
    import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RING_CAPACITY = 8192  # power of two; > 60 s of 10 ms batches, the finest ingest micro-batch
RESUM_EVERY = 4096
GRID_SLOTS = 64  # >= RV_WINDOW_SECONDS + 1
DEDUP_CACHE = 256  # recent vectors per symbol, re-emitted verbatim when a batch is redelivered

# Summable columns of a sample row.
C_COV = 0  # µs of window time this sample vouches for (0 without a valid book or after an outage)
C_BOOK = 1  # 1 if the batch had a valid BookSnapshot
C_OFI = 2  # OFI increment from the previous top of book
C_TOP_DEPTH = 3  # (bid_qty + ask_qty) / 2 at the best level
C_BUY = 4  # aggressor-buy volume
C_SELL = 5  # aggressor-sell volume
C_TRADES = 6  # trade count
C_NOTIONAL = 7  # sum(price * qty)
C_VOLUME = 8  # sum(qty)
N_COLS = 9

US = 1_000_000
WINDOWS_S: tuple[int, ...] = (1, 5, 10, 30, 60)

WINDOW_INSUFFICIENT = common_pb2.WINDOW_INSUFFICIENT


class InvalidBatch(Exception):
    """A TickBatch the features stage refuses; becomes a Reject with this error type."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BookTop:
    """What the features need from one BookSnapshot."""

    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    bid_qty_l5: float
    ask_qty_l5: float
    qty_l10: float


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    t_us: int  # event time of the batch (ts.exchange_us, else the newest event's)
    book: BookTop | None  # None: no snapshot, or a one-sided book
    buy_volume: float
    sell_volume: float
    n_trades: int
    notional: float
    volume: float
    last_trade_us: int  # 0: no trade in the batch


@dataclass(frozen=True, slots=True)
class RegimeThresholds:
    """Tercile cut points (q1, q2) of rv_1m and depth_l10_log for one symbol."""

    vol: tuple[float, float]
    depth: tuple[float, float]


def _levels(side: str, levels: Iterable[market_pb2.PriceLevel], descending: bool) -> list[tuple[float, float]]:
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


def _qty_sum(levels: list[tuple[float, float]], n: int) -> float:
    return math.fsum(q for _, q in levels[:n])


def parse_book(snap: market_pb2.BookSnapshot) -> BookTop | None:
    """Validate a snapshot (finite positive levels, sorted, not crossed) and extract the top-of-book numbers."""
    bids = _levels("bids", snap.bids, descending=True)
    asks = _levels("asks", snap.asks, descending=False)
    if not bids or not asks:
        return None  # a one-sided book has no mid: book features are NaN, not an error
    (bid, bid_qty), (ask, ask_qty) = bids[0], asks[0]
    if bid >= ask:
        raise InvalidBatch("crossed_book", f"best bid {bid!r} >= best ask {ask!r}")
    return BookTop(
        bid=bid,
        bid_qty=bid_qty,
        ask=ask,
        ask_qty=ask_qty,
        bid_qty_l5=_qty_sum(bids, d.QI_LEVELS),
        ask_qty_l5=_qty_sum(asks, d.QI_LEVELS),
        qty_l10=_qty_sum(bids, d.DEPTH_LEVELS) + _qty_sum(asks, d.DEPTH_LEVELS),
    )


def parse_batch(tb: market_pb2.TickBatch) -> ParsedBatch:
    """Validate what the features read from a batch; raises InvalidBatch."""
    if not tb.symbol:
        raise InvalidBatch("missing_symbol", "TickBatch.symbol is empty")
    snap: market_pb2.BookSnapshot | None = None
    buy = sell = notional = volume = 0.0
    n_trades = 0
    last_trade_us = 0
    newest_us = 0
    for ev in tb.events:
        kind = ev.WhichOneof("event")
        if kind == "trade":
            tr = ev.trade
            if not (math.isfinite(tr.price) and tr.price > 0.0):
                raise InvalidBatch("invalid_price", f"trade {tr.trade_id} price {tr.price!r}")
            if not (math.isfinite(tr.qty) and tr.qty > 0.0):
                raise InvalidBatch("invalid_qty", f"trade {tr.trade_id} qty {tr.qty!r}")
            if tr.buyer_is_maker:
                sell += tr.qty
            else:
                buy += tr.qty
            n_trades += 1
            notional += tr.price * tr.qty
            volume += tr.qty
            last_trade_us = max(last_trade_us, tr.exchange_us)
            newest_us = max(newest_us, tr.exchange_us)
        elif kind == "book":
            snap = ev.book  # the last snapshot of the batch is the book after all its diffs
            newest_us = max(newest_us, snap.exchange_us)
        elif kind == "depth":
            newest_us = max(newest_us, ev.depth.exchange_us)
        elif kind == "book_ticker":
            newest_us = max(newest_us, ev.book_ticker.exchange_us)
        elif kind == "mark_price":
            newest_us = max(newest_us, ev.mark_price.exchange_us)
    t_us = tb.ts.exchange_us or newest_us
    if t_us <= 0:
        raise InvalidBatch("missing_event_time", "TickBatch has no exchange time")
    book = parse_book(snap) if snap is not None else None
    if n_trades and last_trade_us <= 0:
        last_trade_us = t_us  # a trade without its own time happened within this batch
    return ParsedBatch(t_us, book, buy, sell, n_trades, notional, volume, last_trade_us)


class _Ring:
    """Fixed-capacity sample ring addressed by absolute, ever-increasing indices (slot = index & mask)."""

    __slots__ = ("end", "mask", "mid", "seq", "start", "t", "x")

    def __init__(self, capacity: int) -> None:
        if capacity & (capacity - 1):
            raise ValueError("ring capacity must be a power of two")
        self.mask = capacity - 1
        self.t: IntArray = np.zeros(capacity, np.int64)
        self.seq: IntArray = np.zeros(capacity, np.int64)
        self.mid: FloatArray = np.full(capacity, np.nan)
        self.x: FloatArray = np.zeros((capacity, N_COLS), np.float64)
        self.start = 0  # oldest retained
        self.end = 0  # next to write

    @property
    def full(self) -> bool:
        return self.end - self.start > self.mask

    def append(self, t_us: int, seq: int, mid: float, row: FloatArray) -> None:
        slot = self.end & self.mask
        self.t[slot] = t_us
        self.seq[slot] = seq
        self.mid[slot] = mid
        self.x[slot] = row
        self.end += 1


class _Window:
    """Running column sums over the samples with event time in (t - width, t]."""

    __slots__ = ("head", "sums", "width_us")

    def __init__(self, width_us: int) -> None:
        self.width_us = width_us
        self.head = 0
        self.sums: FloatArray = np.zeros(N_COLS, np.float64)

    def evict_before(self, ring: _Ring, cutoff_us: int) -> None:
        while self.head < ring.end and int(ring.t[self.head & ring.mask]) <= cutoff_us:
            self.sums -= ring.x[self.head & ring.mask]
            self.head += 1
        if self.head == ring.end:
            self.sums[:] = 0.0  # empty: exactly zero, whatever the drift

    def drop_oldest(self, ring: _Ring) -> None:
        """The ring is about to overwrite its oldest sample: leave it first if it is still inside."""
        if self.head == ring.start:
            self.sums -= ring.x[self.head & ring.mask]
            self.head += 1

    def resum(self, ring: _Ring) -> None:
        idx = np.arange(self.head, ring.end, dtype=np.int64) & ring.mask
        self.sums = ring.x[idx].sum(axis=0)

    def covered_us(self, ring: _Ring, now_us: int) -> float:
        """Vouched time inside (now - width, now]; the first vouching sample is clipped at the window start."""
        i = self.head
        while i < ring.end and ring.x[i & ring.mask, C_COV] == 0.0:
            i += 1  # samples without a book vouch for nothing
        if i == ring.end:
            return 0.0
        slot = i & ring.mask
        c = float(ring.x[slot, C_COV])
        inside = float(ring.t[slot]) - (now_us - self.width_us)
        return float(self.sums[C_COV]) - c + min(c, inside)

    def reference(self, ring: _Ring, now_us: int) -> float:
        """Mid of the last sample at or before the window start, if it is recent enough; else NaN."""
        i = self.head - 1
        if i < ring.start:
            return math.nan
        slot = i & ring.mask
        if int(ring.t[slot]) < now_us - self.width_us - d.MAX_SAMPLE_GAP_US:
            return math.nan
        return float(ring.mid[slot])


class _SecondGrid:
    """Last mid per completed exchange-time second and a rolling sum of squared 1 s log returns."""

    __slots__ = ("cur_depth", "cur_mid", "cur_sec", "n_valid", "prev_mid", "prev_sec", "r2", "secs", "sum_r2")

    def __init__(self) -> None:
        self.secs: IntArray = np.full(GRID_SLOTS, -1, np.int64)
        self.r2: FloatArray = np.zeros(GRID_SLOTS, np.float64)
        self.sum_r2 = 0.0
        self.n_valid = 0
        self.cur_sec = -1
        self.cur_mid = math.nan
        self.cur_depth = math.nan
        self.prev_sec = -1
        self.prev_mid = math.nan

    def _reset(self) -> None:
        self.secs[:] = -1
        self.sum_r2 = 0.0
        self.n_valid = 0

    def _push(self, sec: int, r2: float | None) -> None:
        old = sec - d.RV_WINDOW_SECONDS
        old_slot = old % GRID_SLOTS
        if self.secs[old_slot] == old:
            self.sum_r2 -= float(self.r2[old_slot])
            self.n_valid -= 1
            self.secs[old_slot] = -1
        if r2 is not None:
            slot = sec % GRID_SLOTS
            self.secs[slot] = sec
            self.r2[slot] = r2
            self.sum_r2 += r2
            self.n_valid += 1
        if self.n_valid == 0:
            self.sum_r2 = 0.0

    def observe(self, t_us: int, mid: float, depth: float) -> list[float]:
        """Advance to t_us with a mid (NaN: none, e.g. no book); returns the depth closes of completed seconds."""
        sec = t_us // US
        closed: list[float] = []
        if self.cur_sec >= 0 and sec > self.cur_sec:
            s = self.cur_sec
            has_close = not math.isnan(self.cur_mid)
            r2 = None
            if has_close and self.prev_sec == s - 1:
                r = d.log_return(self.cur_mid, self.prev_mid)
                r2 = r * r
            self._push(s, r2)
            if has_close:
                self.prev_sec, self.prev_mid = s, self.cur_mid
                closed.append(self.cur_depth)
            if sec - s - 1 >= d.RV_WINDOW_SECONDS:
                self._reset()  # a gap longer than the window: nothing inside survives
            else:
                for empty in range(s + 1, sec):
                    self._push(empty, None)
            self.cur_mid = self.cur_depth = math.nan
        self.cur_sec = sec
        if not math.isnan(mid):
            self.cur_mid, self.cur_depth = mid, depth
        return closed

    def rv(self) -> float:
        if self.n_valid < d.MIN_WINDOW_COVERAGE * d.RV_WINDOW_SECONDS:
            return math.nan
        return d.realized_vol(self.sum_r2, self.n_valid, d.RV_WINDOW_SECONDS)


class SymbolState:
    """All streaming state of one symbol: fixed memory."""

    def __init__(self, thresholds: RegimeThresholds | None = None) -> None:
        self.ring = _Ring(RING_CAPACITY)
        self.windows: dict[int, _Window] = {w: _Window(w * US) for w in WINDOWS_S}
        self.grid = _SecondGrid()
        self.last_t = 0
        self.last_valid_t = -1  # event time of the last batch with a valid book; -1: none since a gap
        self.prev_top: d.TopOfBook | None = None
        self.last_trade_us = 0
        self.appends = 0
        self.thresholds = thresholds
        self.warm_vol: FloatArray = np.zeros(d.REGIME_WARMUP_SECONDS, np.float64)
        self.warm_depth: FloatArray = np.zeros(d.REGIME_WARMUP_SECONDS, np.float64)
        self.n_warm = 0
        self.recent: OrderedDict[str, tuple[int, features_pb2.FeatureVector]] = OrderedDict()

    def cached(self, batch_id: str, t_us: int) -> features_pb2.FeatureVector | None:
        hit = self.recent.get(batch_id)
        return hit[1] if hit is not None and hit[0] == t_us else None

    def remember(self, batch_id: str, t_us: int, vector: features_pb2.FeatureVector) -> None:
        self.recent[batch_id] = (t_us, vector)
        if len(self.recent) > DEDUP_CACHE:
            self.recent.popitem(last=False)

    def _append(self, t: int, seq: int, mid: float, row: FloatArray) -> None:
        ring = self.ring
        if ring.full:
            for w in self.windows.values():
                w.drop_oldest(ring)
            ring.start += 1
        ring.append(t, seq, mid, row)
        for w in self.windows.values():
            w.sums += row
            w.evict_before(ring, t - w.width_us)
        self.appends += 1
        if self.appends % RESUM_EVERY == 0:
            for w in self.windows.values():
                w.resum(ring)

    def _warm_up(self, depth_closes: list[float]) -> None:
        rv = self.grid.rv()
        for depth in depth_closes:
            if self.thresholds is not None or math.isnan(rv) or math.isnan(depth):
                return
            self.warm_vol[self.n_warm] = rv
            self.warm_depth[self.n_warm] = depth
            self.n_warm += 1
            if self.n_warm == d.REGIME_WARMUP_SECONDS:
                vq = np.quantile(self.warm_vol, [1 / 3, 2 / 3])
                dq = np.quantile(self.warm_depth, [1 / 3, 2 / 3])
                self.thresholds = RegimeThresholds((float(vq[0]), float(vq[1])), (float(dq[0]), float(dq[1])))

    def update(self, seq: int, p: ParsedBatch) -> tuple[dict[str, float], float, str, int]:
        """Fold one batch in; returns (features by name, mid, regime, first sequence of the longest window)."""
        t = max(p.t_us, self.last_t)  # event time never goes backwards inside the state
        self.last_t = t
        row = np.zeros(N_COLS, np.float64)
        book = p.book
        f: dict[str, float] = {}
        if book is not None:
            mid = d.mid_price(book.bid, book.ask)
            gap = t - self.last_valid_t if self.last_valid_t >= 0 else d.MAX_SAMPLE_GAP_US + 1
            in_stream = gap <= d.MAX_SAMPLE_GAP_US  # a longer gap is an outage: it covers nothing
            row[C_COV] = gap if in_stream else 0.0
            row[C_BOOK] = 1.0
            row[C_TOP_DEPTH] = (book.bid_qty + book.ask_qty) / 2.0
            top = (book.bid, book.bid_qty, book.ask, book.ask_qty)
            if self.prev_top is not None and in_stream:
                row[C_OFI] = d.ofi_increment(self.prev_top, top)
            self.prev_top = top
            self.last_valid_t = t
            f["spread_bps"] = d.spread_bps(book.bid, book.ask)
            f["qi_l1"] = d.queue_imbalance(book.bid_qty, book.ask_qty)
            f["qi_l5"] = d.queue_imbalance(book.bid_qty_l5, book.ask_qty_l5)
            f["microprice_dev"] = d.microprice_dev(book.bid, book.bid_qty, book.ask, book.ask_qty)
            f["depth_l10_log"] = d.depth_log(book.qty_l10)
        else:
            mid = math.nan
            self.prev_top = None  # the book is unknown: OFI restarts from the next valid top
            self.last_valid_t = -1
            for name in ("spread_bps", "qi_l1", "qi_l5", "microprice_dev", "depth_l10_log"):
                f[name] = math.nan
        row[C_BUY], row[C_SELL], row[C_TRADES] = p.buy_volume, p.sell_volume, float(p.n_trades)
        row[C_NOTIONAL], row[C_VOLUME] = p.notional, p.volume
        if p.last_trade_us:
            self.last_trade_us = max(self.last_trade_us, p.last_trade_us)
        self._append(t, seq, mid, row)

        ring, w = self.ring, self.windows
        covered = {s: w[s].covered_us(ring, t) for s in WINDOWS_S}
        ok = {s: covered[s] >= d.MIN_WINDOW_COVERAGE * s * US for s in WINDOWS_S}
        nan = math.nan
        s1, s5, s30 = w[1].sums, w[5].sums, w[30].sums
        f["ofi_1s"] = d.ofi_normalised(s1[C_OFI], s1[C_TOP_DEPTH], s1[C_BOOK]) if ok[1] else nan
        f["ofi_5s"] = d.ofi_normalised(s5[C_OFI], s5[C_TOP_DEPTH], s5[C_BOOK]) if ok[5] else nan
        f["trade_imbalance_5s"] = d.trade_imbalance(s5[C_BUY], s5[C_SELL], s5[C_TRADES]) if ok[5] else nan
        f["trade_intensity_5s"] = d.trade_intensity(s5[C_TRADES], covered[5] / US) if ok[5] else nan
        for s in (1, 10, 60):
            ref = w[s].reference(ring, t)
            valid = ok[s] and not math.isnan(mid) and not math.isnan(ref)
            f[f"ret_{s}s"] = d.log_return(mid, ref) if valid else nan
        depth = f["depth_l10_log"]
        closed = self.grid.observe(t, mid, depth)  # also without a mid: time passes, old returns leave
        if closed:
            self._warm_up(closed)
        rv = self.grid.rv()
        f["rv_1m"] = rv
        vwap_ok = ok[30] and not math.isnan(mid)
        f["vwap_gap_bps_30s"] = d.vwap_gap_bps(mid, s30[C_NOTIONAL], s30[C_VOLUME], s30[C_TRADES]) if vwap_ok else nan
        f["time_since_trade_s"] = d.seconds_since(t, self.last_trade_us) if self.last_trade_us else nan
        th = self.thresholds
        regime = d.regime_label(rv, depth, th.vol, th.depth) if th is not None else ""
        longest = w[int(d.LONGEST_WINDOW_S)]
        first_seq = int(ring.seq[longest.head & ring.mask])
        return f, mid, regime, first_seq


class FeatureState:
    """Per-symbol streaming state of the features stage, created on first sight of a symbol."""

    def __init__(self, regime_thresholds: Mapping[str, RegimeThresholds] | None = None) -> None:
        self._presets: dict[str, RegimeThresholds] = dict(regime_thresholds or {})
        self._symbols: dict[tuple[int, str], SymbolState] = {}

    def symbol(self, venue: int, symbol: str) -> SymbolState:
        key = (venue, symbol)
        st = self._symbols.get(key)
        if st is None:
            st = self._symbols[key] = SymbolState(self._presets.get(symbol))
        return st

    def regime_thresholds(self) -> dict[str, RegimeThresholds]:
        """Thresholds in force per symbol (preset or frozen after warm-up), e.g. for a model card."""
        return {sym: st.thresholds for (_, sym), st in self._symbols.items() if st.thresholds is not None}


Flag: TypeAlias = common_pb2.QualityFlag


def merge_flags(flags: Iterable[Flag], extra: Iterable[Flag]) -> list[Flag]:
    """Input flags first, in order, de-duplicated; later stages add to, never drop, the set."""
    out: list[Flag] = []
    for flag in (*flags, *extra):
        if flag not in out:
            out.append(flag)
    return out


def build_vector(tb: market_pb2.TickBatch, p: ParsedBatch, st: SymbolState, clock: Clock) -> features_pb2.FeatureVector:
    feats, mid, regime, first_seq = st.update(tb.sequence, p)
    values = [feats[name] for name in d.FEATURE_NAMES]
    insufficient = not regime or any(math.isnan(v) for v in values)
    vec = features_pb2.FeatureVector(
        schema_version=SCHEMA_VERSION,
        vector_id=tb.batch_id,
        venue=tb.venue,
        symbol=tb.symbol,
        feature_version=d.FEATURE_VERSION,
        names=d.FEATURE_NAMES,
        values=values,
        regime=regime,
        mid_price=mid,
        data_window_id=f"{tb.symbol}:{first_seq}-{tb.sequence}",
        quality_flags=merge_flags(tb.quality_flags, [WINDOW_INSUFFICIENT] if insufficient else []),
    )
    vec.ts.CopyFrom(tb.ts)
    vec.ts.exchange_us = p.t_us
    vec.ts.features_us = clock.now_us()
    return vec


def process(batch: Sequence[InRecord[market_pb2.TickBatch]], state: FeatureState, clock: Clock) -> Outputs:
    """One FeatureVector per valid TickBatch on features.v1; invalid batches are rejected, state untouched."""
    out = Outputs()
    for rec in batch:
        tb = rec.value
        try:
            parsed = parse_batch(tb)
        except InvalidBatch as exc:
            out.rejects.append(Reject(rec, exc.error_type, exc.reason))
            continue
        st = state.symbol(tb.venue, tb.symbol)
        vec = st.cached(tb.batch_id, parsed.t_us)
        if vec is None:
            vec = build_vector(tb, parsed, st, clock)
            st.remember(tb.batch_id, parsed.t_us, vec)
        # A redelivered batch gets the identical vector again instead of being folded in twice.
        out.emits.append(Emit(topic=Topic.FEATURES, key=tb.symbol, value=vec, exchange_us=vec.ts.exchange_us))
    return out


FRAME_EXTRA_COLUMNS: tuple[str, ...] = ("mid_price", "regime", "exchange_us", "vector_id", "window_insufficient")


def compute_frame(
    batches: Iterable[market_pb2.TickBatch], state: FeatureState | None = None, clock: Clock | None = None
) -> pd.DataFrame:
    """Run the streaming core over batches (in order) and tabulate the vectors, e.g. for training data.

    Columns: symbol, ts (exchange time, ms), the features in FEATURE_NAMES order, feature_version, then
    FRAME_EXTRA_COLUMNS. Rejected batches produce no row.
    """
    import pandas as pd

    state = state if state is not None else FeatureState()
    clock = clock if clock is not None else ManualClock()
    cols: dict[str, list[object]] = {c: [] for c in ("symbol", "ts", "feature_version", *FRAME_EXTRA_COLUMNS)}
    values: list[list[float]] = []
    for tb in batches:
        for emit in process([InRecord(value=tb, key=tb.symbol)], state, clock).emits:
            vec = emit.value
            assert isinstance(vec, features_pb2.FeatureVector)
            cols["symbol"].append(vec.symbol)
            cols["ts"].append(vec.ts.exchange_us // 1000)
            cols["feature_version"].append(vec.feature_version)
            cols["mid_price"].append(vec.mid_price)
            cols["regime"].append(vec.regime)
            cols["exchange_us"].append(vec.ts.exchange_us)
            cols["vector_id"].append(vec.vector_id)
            cols["window_insufficient"].append(WINDOW_INSUFFICIENT in vec.quality_flags)
            values.append(list(vec.values))
    matrix = np.asarray(values, dtype=np.float64).reshape(len(values), len(d.FEATURE_NAMES))
    frame = pd.DataFrame({"symbol": cols["symbol"], "ts": np.asarray(cols["ts"], dtype=np.int64)})
    for j, name in enumerate(d.FEATURE_NAMES):
        frame[name] = matrix[:, j]
    frame["feature_version"] = cols["feature_version"]
    frame["mid_price"] = np.asarray(cols["mid_price"], dtype=np.float64)
    frame["regime"] = cols["regime"]
    frame["exchange_us"] = np.asarray(cols["exchange_us"], dtype=np.int64)
    frame["vector_id"] = cols["vector_id"]
    frame["window_insufficient"] = np.asarray(cols["window_insufficient"], dtype=bool)
    return frame
