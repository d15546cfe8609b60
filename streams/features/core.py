"""Features core: one FeatureVector per TickBatch from fixed-memory, O(1)-per-event streaming state per symbol.

Per symbol, a ``KernelState`` (numpy arrays) is folded by the numba kernel ``definitions.fold``: every trade and
mark price updates EWMA/Hawkes state, every liquidation and open-interest sample goes into a ring of its own,
every batch is one sample in a ring buffer with running window sums,
a 1 s return grid and a 1 min bucket grid. The stage calls the kernel once per symbol per consumed batch; the
batch drivers call it once per symbol over a whole file; both give identical vectors because all state lives in
the arrays. Formulas, tiers and the windowing policy are in ``definitions.py``; inputs become rows in ``rows.py``.

Backpressure is decided per symbol: when a symbol's event-time lag (the clock minus the newest event time the
symbol's state has reached, this batch's included) exceeds the threshold, that symbol's medium and slow tiers
are dropped (NaN + TIERS_DROPPED, counted in ``BackpressureStats``) until its lag is back under the resume
threshold. One symbol's backlog does not degrade the others, and a lone late batch of a symbol that is
otherwise current does not flip it, since its state has already seen newer events.

Validation: besides what ``rows.parse_batch`` refuses (non-finite or non-positive prices and sizes, unsorted or
crossed books), a batch is rejected when a price or size exceeds ``validate.MAX_PRICE`` / ``MAX_QTY`` or, in
``process``, when its exchange time or any event's is outside ``FeatureState.bounds`` of the clock (a
far-future time would otherwise become the symbol's clock: event time never goes backwards in the state).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeAlias

import numpy as np

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, market_pb2
from streams.features import definitions as d
from streams.features.health import FeatureHealth, slowest_tier_evaluated
from streams.features.rows import InvalidBatch, ParsedBatch, Rows, encode_batches, parse_batch
from streams.runtime import validate as v
from streams.runtime.clock import Clock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.instrument import key_of
from streams.runtime.topics import Topic

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FRAME_EXTRA_COLUMNS",
    "Backpressure",
    "FeatureState",
    "FoldResult",
    "InvalidBatch",
    "RegimeThresholds",
    "SymbolState",
    "compute_frame",
    "fold_rows",
    "process",
]

log = logging.getLogger("surge.features")

DEDUP_CACHE = 256  # recent vectors per symbol, re-emitted verbatim when a batch is redelivered

WINDOW_INSUFFICIENT = common_pb2.WINDOW_INSUFFICIENT
TIERS_DROPPED = common_pb2.TIERS_DROPPED
STALE_INPUT = common_pb2.STALE_INPUT


@dataclass(frozen=True, slots=True)
class RegimeThresholds:
    """Tercile cut points (q1, q2) of rv_1m and depth_l10_log for one symbol."""

    vol: tuple[float, float]
    depth: tuple[float, float]


@dataclass(frozen=True, slots=True)
class FoldResult:
    """Kernel output for n vectors, in input order."""

    values: d.FloatArray  # [n, N_FEATURES]
    price: d.FloatArray  # mid (ticks) or close (klines)
    t_us: d.IntArray  # the state's (clamped) event time
    status: d.IntArray  # STATUS_* bits
    regime: d.IntArray  # index into REGIME_LABELS, -1: none
    first_seq: d.IntArray  # first source sequence behind each vector

    def __len__(self) -> int:
        return int(self.values.shape[0])


def fold_rows(kstate: d.KernelState, rows: Rows, *, tiers_on: bool = True) -> FoldResult:
    """Run the kernel over rows; the state is updated in place."""
    n = rows.n_vectors
    out = np.empty((n, d.N_FEATURES), np.float64)
    px = np.empty(n, np.float64)
    t = np.empty(n, np.int64)
    status = np.empty(n, np.int64)
    regime = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    done = d.fold(kstate, rows.kinds, rows.times, rows.aux, rows.x, tiers_on, out, px, t, status, regime, first)
    if done != n:
        raise AssertionError(f"kernel wrote {done} vectors for {n} batch rows")
    return FoldResult(out, px, t, status, regime, first)


@dataclass(slots=True)
class VectorRecord:
    """One computed vector; the protobuf is built once, on first emission, and re-sent verbatim if redelivered."""

    t_us: int  # the batch's own event time (for the redelivery check)
    values: d.FloatArray
    price: float
    state_t_us: int
    status: int
    regime: str
    first_seq: int
    proto: features_pb2.FeatureVector | None = None


class SymbolState:
    """All streaming state of one symbol: the kernel arrays (fixed memory) and the redelivery cache."""

    def __init__(self, thresholds: RegimeThresholds | None = None) -> None:
        preset = None if thresholds is None else (*thresholds.vol, *thresholds.depth)
        self.kernel = d.new_kernel_state(preset)
        self.recent: OrderedDict[str, VectorRecord] = OrderedDict()
        self.tiers_dropped = False  # this symbol's backpressure state

    @property
    def event_time_us(self) -> int:
        """The newest event time folded in so far (the state's clock; 0 before the first batch)."""
        return int(self.kernel.si[d.S_LAST_T])

    @property
    def thresholds(self) -> RegimeThresholds | None:
        if self.kernel.si[d.S_HAVE_TH] != 1:
            return None
        sf = self.kernel.sf
        return RegimeThresholds((float(sf[d.F_VQ1]), float(sf[d.F_VQ2])), (float(sf[d.F_DQ1]), float(sf[d.F_DQ2])))

    def cached(self, batch_id: str, t_us: int) -> VectorRecord | None:
        hit = self.recent.get(batch_id)
        return hit if hit is not None and hit.t_us == t_us else None

    def remember(self, batch_id: str, record: VectorRecord) -> None:
        self.recent[batch_id] = record
        if len(self.recent) > DEDUP_CACHE:
            self.recent.popitem(last=False)

    def fold(self, parsed: Sequence[ParsedBatch], *, tiers_on: bool = True,
             health: FeatureHealth | None = None) -> list[VectorRecord]:
        rows = encode_batches(parsed)
        if health is None:
            res = fold_rows(self.kernel, rows, tiers_on=tiers_on)
        else:
            si = self.kernel.si
            med_t, slow_t = int(si[d.S_MED_T]), int(si[d.S_SLOW_T])
            started = time.perf_counter()  # a duration for the health metrics, not a timestamp
            res = fold_rows(self.kernel, rows, tiers_on=tiers_on)
            elapsed = time.perf_counter() - started
            health.observe(res.values, res.status, self.kernel.app, tiers_on, elapsed,
                           slowest_tier_evaluated(med_t, slow_t, si))
        return [
            VectorRecord(p.t_us, res.values[i], float(res.price[i]), int(res.t_us[i]), int(res.status[i]),
                         d.regime_label(int(res.regime[i])), int(res.first_seq[i]))
            for i, p in enumerate(parsed)
        ]


@dataclass
class BackpressureStats:
    """Counters the stage exports as metrics (the core itself has no metrics dependency)."""

    dropped: bool = False  # some symbol's tiers are dropped
    symbols_dropped: int = 0  # symbols whose tiers are dropped now
    episodes: int = 0  # times a symbol's tiers were dropped
    vectors_dropped: int = 0  # vectors emitted without the medium/slow tiers
    last_lag_s: float = 0.0  # the largest per-symbol lag of the last consumed batch


@dataclass
class Backpressure:
    """Per-symbol hysteresis on event-time lag: drop above ``drop_lag_s`` (0: never), restore at or below
    ``resume_lag_s``."""

    drop_lag_s: float = 0.0
    resume_lag_s: float = 0.0
    stats: BackpressureStats = field(default_factory=BackpressureStats)

    def tiers_on(self, lag_s: float, symbol: SymbolState, name: str = "") -> bool:
        """Whether ``symbol``, ``lag_s`` behind, gets its medium and slow tiers; updates its state and the stats."""
        st = self.stats
        was = symbol.tiers_dropped
        if self.drop_lag_s <= 0.0:
            now = False
        elif not was and lag_s > self.drop_lag_s:
            now = True
            st.episodes += 1
            log.info("%s: event-time lag %.1fs > %.1fs: dropping its medium and slow feature tiers", name, lag_s,
                     self.drop_lag_s)
        elif was and lag_s <= self.resume_lag_s:
            now = False
            log.info("%s: event-time lag %.1fs <= %.1fs: medium and slow feature tiers restored", name, lag_s,
                     self.resume_lag_s)
        else:
            now = was
        if now != was:
            symbol.tiers_dropped = now
            before = st.symbols_dropped
            st.symbols_dropped += 1 if now else -1
            st.dropped = st.symbols_dropped > 0
            if before == 0 or st.symbols_dropped == 0:
                log.warning("medium and slow feature tiers %s under backpressure (%d symbols dropped)",
                            "dropped" if now else "restored: none", st.symbols_dropped)
        return not now


class FeatureState:
    """Per-symbol streaming state of the features stage, created on first sight of a symbol."""

    def __init__(self, regime_thresholds: Mapping[str, RegimeThresholds] | None = None,
                 backpressure: Backpressure | None = None, bounds: v.TimeBounds = v.UNBOUNDED,
                 stale_after_us: int = 0) -> None:
        self._presets: dict[str, RegimeThresholds] = dict(regime_thresholds or {})
        self._symbols: dict[tuple[int, str], SymbolState] = {}
        self.backpressure = backpressure if backpressure is not None else Backpressure()
        self.bounds = bounds  # event times vs the clock in ``process`` (the stage wires the settings)
        # A vector whose event time is older than this by the clock carries STALE_INPUT (0: never).
        self.stale_after_us = stale_after_us
        self.health = FeatureHealth()  # per-tier compute time, NaN ratio, insufficiency (the stage exports it)

    def symbol(self, venue: int, symbol: str) -> SymbolState:
        key = (venue, symbol)
        st = self._symbols.get(key)
        if st is None:
            st = self._symbols[key] = SymbolState(self._presets.get(symbol))
        return st

    def symbols(self) -> dict[tuple[int, str], SymbolState]:
        """Every symbol's state by (venue, symbol): a copy of the mapping (for a checkpoint)."""
        return dict(self._symbols)

    def adopt(self, venue: int, symbol: str, st: SymbolState) -> None:
        """Take a symbol's state from a checkpoint (``streams.features.checkpoint``)."""
        self._symbols[(venue, symbol)] = st

    def regime_thresholds(self) -> dict[str, RegimeThresholds]:
        """Thresholds in force per symbol (preset or frozen after warm-up), e.g. for a model card."""
        out: dict[str, RegimeThresholds] = {}
        for (_, sym), st in self._symbols.items():
            th = st.thresholds
            if th is not None:
                out[sym] = th
        return out


Flag: TypeAlias = common_pb2.QualityFlag


def merge_flags(flags: Iterable[Flag], extra: Iterable[Flag]) -> list[Flag]:
    """Input flags first, in order, de-duplicated; later stages add to, never drop, the set."""
    out: list[Flag] = []
    for flag in (*flags, *extra):
        if flag not in out:
            out.append(flag)
    return out


def status_flags(status: int) -> list[Flag]:
    extra: list[Flag] = []
    if status & d.STATUS_INSUFFICIENT:
        extra.append(WINDOW_INSUFFICIENT)
    if status & d.STATUS_TIERS_DROPPED:
        extra.append(TIERS_DROPPED)
    return extra


BOOK_LEVELS_FORWARDED: Final = 10
FUNDING_INDEX: Final = d.FEATURE_NAMES.index("funding_rate_bps")


def build_vector(tb: market_pb2.TickBatch, rec: VectorRecord, clock: Clock,
                 stale_after_us: int = 0) -> features_pb2.FeatureVector:
    """The vector of one batch; STALE_INPUT when its event time is more than ``stale_after_us`` behind the clock."""
    now_us = clock.now_us()
    extra = status_flags(rec.status)
    if stale_after_us and now_us - rec.t_us > stale_after_us:
        extra.append(STALE_INPUT)
    vec = features_pb2.FeatureVector(
        schema_version=SCHEMA_VERSION,
        vector_id=tb.batch_id,
        venue=tb.venue,
        symbol=tb.symbol,
        feature_version=d.FEATURE_VERSION,
        names=d.FEATURE_NAMES,
        values=rec.values.tolist(),
        regime=rec.regime,
        mid_price=rec.price,
        data_window_id=f"{tb.symbol}:{rec.first_seq}-{tb.sequence}",
        quality_flags=merge_flags(tb.quality_flags, extra),
    )
    vec.ts.CopyFrom(tb.ts)
    vec.ts.exchange_us = rec.t_us
    vec.ts.features_us = now_us
    attach_book_and_funding(vec, tb, rec)
    return vec


def attach_book_and_funding(vec: features_pb2.FeatureVector, tb: market_pb2.TickBatch, rec: VectorRecord) -> None:
    """The book top of the batch's last snapshot (the decision stage walks it for its order size) and the funding
    rate the kernel holds (``funding_rate_bps``; NaN when there is no fresh markPrice), as a fraction."""
    for event in reversed(tb.events):
        if event.WhichOneof("event") == "book":
            vec.book_bids.extend(event.book.bids[:BOOK_LEVELS_FORWARDED])
            vec.book_asks.extend(event.book.asks[:BOOK_LEVELS_FORWARDED])
            break
    funding_bps = float(rec.values[FUNDING_INDEX])
    if math.isfinite(funding_bps):
        vec.funding_rate = funding_bps / 1e4


@dataclass(slots=True)
class _Pending:
    """Batches of one symbol to fold in one kernel call, in order."""

    state: SymbolState
    parsed: list[ParsedBatch] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    records: list[VectorRecord] = field(default_factory=list)


def check_values(p: ParsedBatch) -> v.Problem | None:
    """The upper bounds ``parse_batch`` leaves open: prices <= MAX_PRICE, sizes <= MAX_QTY (it has checked
    that they are finite and > 0)."""
    for i, (_, price, qty, _sold) in enumerate(p.trades):
        problem = v.finite_positive_price(f"trade[{i}] price", price) or v.finite_positive_qty(f"trade[{i}] qty", qty)
        if problem is not None:
            return problem
    if p.book is not None:
        # Levels are sorted: the first bid and the last kept ask are the largest prices.
        problem = (v.finite_positive_price("book bids[0] price", p.book.bids[0][0])
                   or v.finite_positive_price(f"book asks[{len(p.book.asks) - 1}] price", p.book.asks[-1][0]))
        if problem is not None:
            return problem
        for side, levels in (("bids", p.book.bids), ("asks", p.book.asks)):
            for i, (_, qty) in enumerate(levels):
                if qty > v.MAX_QTY:
                    return v.finite_positive_qty(f"book {side}[{i}] qty", qty)
    for i, (_, mark, index, _f, _n) in enumerate(p.marks):
        problem = v.finite_positive_price(f"mark[{i}] price", mark) or v.finite_positive_price(
            f"mark[{i}] index price", index)
        if problem is not None:
            return problem
    return _check_derivatives(p)


def _check_derivatives(p: ParsedBatch) -> v.Problem | None:
    """``check_values`` of the liquidations and open-interest samples."""
    for i, (_, price, qty, avg, filled, _sold) in enumerate(p.liquidations):
        problem = (v.finite_positive_price(f"liquidation[{i}] price", price)
                   or v.finite_positive_qty(f"liquidation[{i}] qty", qty))
        if problem is None and avg > v.MAX_PRICE:
            problem = v.finite_positive_price(f"liquidation[{i}] avg price", avg)
        if problem is None and filled > v.MAX_QTY:
            problem = v.finite_positive_qty(f"liquidation[{i}] filled qty", filled)
        if problem is not None:
            return problem
    for i, (_, value) in enumerate(p.open_interest):
        if value > v.MAX_QTY:
            return v.finite_positive_qty(f"open_interest[{i}]", value)
    return None


def check_times(tb: market_pb2.TickBatch, p: ParsedBatch, now_us: int, bounds: v.TimeBounds) -> v.Problem | None:
    """The batch's event time within ``bounds`` of the clock, and no event of it ahead of the clock."""
    name = "ts.exchange_us" if tb.ts.exchange_us else "newest event exchange_us"
    problem = v.event_time_within(name, p.t_us, now_us, bounds)
    if problem is not None or not bounds.max_future_us:
        return problem
    limit = now_us + bounds.max_future_us
    events: list[tuple[str, int]] = [(f"trade[{i}].exchange_us", t[0]) for i, t in enumerate(p.trades)]
    events += [(f"mark[{i}].exchange_us", m[0]) for i, m in enumerate(p.marks)]
    events += [(f"liquidation[{i}].trade_time_us", liq[0]) for i, liq in enumerate(p.liquidations)]
    events += [(f"open_interest[{i}].exchange_us", oi[0]) for i, oi in enumerate(p.open_interest)]
    if p.book is not None:
        events.append(("book.exchange_us", p.book.exchange_us))
    for what, at in events:
        if at > limit:
            return v.event_time_within(what, at, now_us, v.TimeBounds(max_future_us=bounds.max_future_us))
    return None


def _fold_records(tbs: Sequence[market_pb2.TickBatch], state: FeatureState, now_us: int | None,
                  ) -> list[VectorRecord | InvalidBatch]:
    """A VectorRecord per batch, or the InvalidBatch that rejects it (its state untouched), in input order.

    With ``now_us`` (the stage), event times are checked against ``state.bounds`` and each symbol's tiers follow
    its own backpressure; without (batch drivers), every tier is evaluated."""
    plan: list[tuple[_Pending, int] | VectorRecord | InvalidBatch] = []
    pending: dict[tuple[int, str], _Pending] = {}
    for tb in tbs:
        try:
            parsed = parse_batch(tb)
        except InvalidBatch as exc:
            plan.append(exc)
            continue
        problem = check_values(parsed)
        if problem is None and now_us is not None:
            problem = check_times(tb, parsed, now_us, state.bounds)
        if problem is not None:
            plan.append(InvalidBatch(*problem))
            continue
        st = state.symbol(tb.venue, tb.symbol)
        hit = st.cached(tb.batch_id, parsed.t_us)
        if hit is not None:
            plan.append(hit)  # a redelivered batch gets the identical vector instead of being folded in twice
            continue
        group = pending.setdefault((tb.venue, tb.symbol), _Pending(st))
        at = group.ids.get(tb.batch_id)
        if at is not None:  # the same batch twice in one call
            plan.append((group, at))
            continue
        group.ids[tb.batch_id] = len(group.parsed)
        plan.append((group, len(group.parsed)))
        group.parsed.append(parsed)
    worst_lag_s: float | None = None
    for (_, symbol), group in pending.items():
        tiers_on = True
        if now_us is not None:
            # The symbol's own lag: its newest event time, this batch's or one its state has already seen.
            newest = max(group.state.event_time_us, *(p.t_us for p in group.parsed))
            lag_s = (now_us - newest) / 1e6
            worst_lag_s = lag_s if worst_lag_s is None else max(worst_lag_s, lag_s)
            tiers_on = state.backpressure.tiers_on(lag_s, group.state, symbol)
        group.records = group.state.fold(group.parsed, tiers_on=tiers_on,
                                         health=state.health if now_us is not None else None)
        for batch_id, rec in zip(group.ids, group.records, strict=True):  # dicts keep insertion order
            group.state.remember(batch_id, rec)
    if worst_lag_s is not None:
        state.backpressure.stats.last_lag_s = worst_lag_s
    out: list[VectorRecord | InvalidBatch] = []
    for item in plan:
        out.append(item[0].records[item[1]] if isinstance(item, tuple) else item)
    return out


def process(batch: Sequence[InRecord[market_pb2.TickBatch]], state: FeatureState, clock: Clock) -> Outputs:
    """One FeatureVector per valid TickBatch on features.v1; invalid batches are rejected, state untouched."""
    out = Outputs()
    results = _fold_records([rec.value for rec in batch], state, clock.now_us())
    stats = state.backpressure.stats
    for rec, res in zip(batch, results, strict=True):
        tb = rec.value
        if isinstance(res, InvalidBatch):
            out.rejects.append(Reject(rec, res.error_type, res.reason))
            continue
        if res.proto is None:
            res.proto = build_vector(tb, res, clock, state.stale_after_us)
            if res.status & d.STATUS_TIERS_DROPPED:
                stats.vectors_dropped += 1
        vec = res.proto
        out.emits.append(Emit(topic=Topic.FEATURES, key=key_of(vec), value=vec, exchange_us=vec.ts.exchange_us))
    return out


FRAME_EXTRA_COLUMNS: tuple[str, ...] = ("mid_price", "regime", "exchange_us", "vector_id", "window_insufficient")


def compute_frame(
    batches: Iterable[market_pb2.TickBatch], state: FeatureState | None = None, clock: Clock | None = None,
    *, chunk: int = 4096,
) -> pd.DataFrame:
    """Run the streaming core over batches (in order) and tabulate the vectors, e.g. for training data.

    Columns: symbol, ts (exchange time, ms), the features in FEATURE_NAMES order, feature_version, then
    FRAME_EXTRA_COLUMNS. Rejected batches produce no row. Every medium/slow tier is evaluated (no backpressure
    in batch), so the numbers are those the stage emits when it keeps up.
    """
    import pandas as pd

    del clock  # vectors are not stamped here; kept for call compatibility
    state = state if state is not None else FeatureState()
    symbols: list[str] = []
    ts: list[int] = []
    prices: list[float] = []
    regimes: list[str] = []
    exchange: list[int] = []
    ids: list[str] = []
    insufficient: list[bool] = []
    values: list[d.FloatArray] = []
    buf: list[market_pb2.TickBatch] = []

    def flush() -> None:
        for tb, res in zip(buf, _fold_records(buf, state, None), strict=True):
            if isinstance(res, InvalidBatch):
                continue
            symbols.append(tb.symbol)
            ts.append(res.t_us // 1000)
            prices.append(res.price)
            regimes.append(res.regime)
            exchange.append(res.t_us)
            ids.append(tb.batch_id)
            insufficient.append(bool(res.status & d.STATUS_INSUFFICIENT))
            values.append(res.values)
        buf.clear()

    for tb in batches:
        buf.append(tb)
        if len(buf) >= chunk:
            flush()
    flush()
    matrix = np.vstack(values) if values else np.empty((0, d.N_FEATURES))
    frame = pd.DataFrame({"symbol": symbols, "ts": np.asarray(ts, dtype=np.int64)})
    frame = pd.concat([frame, pd.DataFrame(matrix, columns=list(d.FEATURE_NAMES))], axis=1)
    frame["feature_version"] = d.FEATURE_VERSION
    frame["mid_price"] = np.asarray(prices, dtype=np.float64)
    frame["regime"] = regimes
    frame["exchange_us"] = np.asarray(exchange, dtype=np.int64)
    frame["vector_id"] = ids
    frame["window_insufficient"] = np.asarray(insufficient, dtype=bool)
    return frame
