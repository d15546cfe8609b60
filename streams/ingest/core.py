"""Pure, venue-neutral ingest core: normalised events -> local books, dedupe, quarantine, per-symbol TickBatches.

No Kafka, no I/O and no venue here. A codec (``events.Codec``; Binance's is ``streams.venues.binance.codec``)
turns raw frames into normalised events (``events.py``) with the venue's sequence ids; ``process`` decodes a
batch of frames with the state's codec, ``ingest`` takes events a codec already produced. Either way the
outputs are ``Emit``s of ``TickBatch`` (one per symbol per micro-batch window), dead letters for frames the
codec rejected or the book refused, re-snapshot requests and trade backfill requests. The caller (``stage.py``
for the simulator, ``streams.venues.binance.feed`` live, ``replay.py``) owns the I/O and answers them.

Data quality is enforced and measured here, per symbol:

* books follow the venue's sync procedure (``book.py``); a gap, a crossed book, an unusable diff, a reconnect or
  a best bid/ask that disagrees with the book at the same update id loses sync: the book is re-snapshotted once
  per episode (``resyncs`` by reason), never continued silently;
* duplicates (trade id, ticker update id, mark price, liquidation and open-interest time, depth diffs at or below
  the book) are dropped, so
  overlapping connections and replays never duplicate an event on ``ticks.v1``;
* a trade-id gap holds the symbol's later trades until the caller backfills the missing ids from REST (or the
  timeout passes), then emits them in id order; ids never recovered count as lost;
* a symbol that keeps failing is quarantined: its batches carry ``QUARANTINED`` and its re-snapshots are spaced
  out, so it cannot eat the REST budget the other symbols share;
* with audits on (live), ``audit_snapshot`` compares a periodic REST snapshot with the local book at the same
  update id (the snapshot is rolled forward over the recent diffs, or waits for the book to get there), which
  catches what no sequence check can (a diff with a wrong quantity and a correct sequence), and every minute the
  update-id chain of the diffs seen is audited: more breaks per diff than ``audit_gap_ratio`` rebuilds the book.

Derivatives data (USD-M) rides on the same TickBatches outside ``events``: forced liquidations of the window in
``liquidations`` (from the ``forceOrder`` stream) and the open-interest samples the caller polled from REST since
the last batch in ``open_interest`` (``apply_open_interest``). Both open a window like any event, so a symbol
whose only news is a liquidation still gets its batch within ``microbatch_ms``; a batch without them is exactly
what it was before they existed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas import SCHEMA_VERSION, common_pb2, market_pb2
from streams.ingest.book import BookState, DepthUpdate, Level, OrderBook, SyncStatus
from streams.ingest.events import (
    Codec,
    DepthEvent,
    LiquidationEvent,
    MarkPriceEvent,
    NormalizedEvent,
    OpenInterestEvent,
    Raw,
    Rejected,
    SnapshotEvent,
    TickerEvent,
    TradeEvent,
)
from streams.runtime.clock import Clock
from streams.runtime.core import Emit
from streams.runtime.instrument import key_of
from streams.runtime.source import SourceReject
from streams.runtime.topics import Topic

# (stream name or symbol the frame is known by, e.g. "btcusdt@depth@100ms"; the frame as received; local µs)
Frame = tuple[str, Raw, int]

TOP_LEVELS = 20                  # BookSnapshot depth per side: what the features stage reads the book from
MAX_BATCH_EVENTS = 2_000         # flush early so one TickBatch stays far below Kafka's 1 MB message limit
DRIFT_ALPHA = 0.05               # EWMA weight of one exchange-minus-local clock sample
DEGRADED_DRIFT_US = 100_000      # |drift EWMA| above this flags DEGRADED_TIME_SYNC
MAX_PENDING_TICKERS = 256        # bookTickers waiting for the book to reach their update id, per symbol

_SYNCED = (BookState.AWAITING_FIRST, BookState.LIVE)  # OrderBook.synced without a property call on the hot path

# Why a synced book lost sync; the label of the resync counter.
RESYNC_GAP = "gap"
RESYNC_CROSSED = "crossed"
RESYNC_RECONNECT = "reconnect"
RESYNC_DIVERGENCE = "ticker_divergence"
RESYNC_BAD_DEPTH = "bad_depth"
RESYNC_AUDIT = "audit_mismatch"
RESYNC_GAP_RATIO = "gap_ratio"

AUDIT_LEVELS = TOP_LEVELS        # levels per side an audit compares (what the features stage reads)
AUDIT_RECENT_DIFFS = 128         # applied diffs kept per symbol to roll an older audit snapshot forward
AUDIT_WINDOW_US = 60_000_000     # the update-id chain audit window

STAGE: Final = "ingest"

@dataclass(frozen=True, slots=True)
class DeadLetterOut:
    """A bad frame for dlq.v1, with its original bytes (decoded frames are re-serialised as JSON)."""

    raw_bytes: bytes
    error_type: str
    reason: str
    symbol: str


@dataclass(frozen=True, slots=True)
class TradeGap:
    """Trade ids the caller should fetch from REST; ``last_id`` None: everything from ``first_id`` on."""

    symbol: str
    first_id: int
    last_id: int | None


@dataclass(slots=True)
class IngestOutputs:
    emits: list[Emit] = field(default_factory=list)
    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    resync_requests: list[str] = field(default_factory=list)   # symbols that need a fresh REST snapshot
    trade_gaps: list[TradeGap] = field(default_factory=list)   # trade ids to backfill from REST
    frames_in: int = 0

    def rejects(self) -> list[SourceReject]:
        """The dead letters in the source runner's shape (a frame has no Kafka position, only its bytes)."""
        return [SourceReject(d.symbol, d.raw_bytes, d.error_type, d.reason) for d in self.dead_letters]

    def extend(self, other: IngestOutputs) -> None:
        self.emits.extend(other.emits)
        self.dead_letters.extend(other.dead_letters)
        self.resync_requests.extend(s for s in other.resync_requests if s not in self.resync_requests)
        self.trade_gaps.extend(other.trade_gaps)
        self.frames_in += other.frames_in


@dataclass(slots=True)
class SymbolState:
    """Per-symbol ingest state: the book, the batch being filled, dedupe marks and quality counters."""

    symbol: str
    book: OrderBook
    sequence: int = 0                      # batches emitted this session
    pending: list[market_pb2.MarketEvent] = field(default_factory=list)
    pending_liquidations: list[market_pb2.Liquidation] = field(default_factory=list)
    pending_open_interest: list[market_pb2.OpenInterest] = field(default_factory=list)
    window_open_us: int = -1               # clock time the first pending event was buffered; -1 = empty
    newest_exchange_us: int = 0            # newest venue-stamped time among pending events
    newest_estimated_us: int = 0           # same, counting events whose time had to be estimated
    newest_local_us: int = 0
    drift_ewma_us: float | None = None     # exchange minus local clock, smoothed
    window_flags: set[common_pb2.QualityFlag] = field(default_factory=set)
    resync_requested: bool = False         # one outstanding snapshot request at a time, never a storm
    resync_deferred: bool = False          # requested while quarantined: goes out at ``next_snapshot_us``
    # Dedupe marks.
    last_trade_id: int | None = None
    last_ticker_id: int = 0
    last_mark_us: int = 0
    last_liquidation_us: int = 0
    last_open_interest_us: int = 0
    # Trade-id gap being backfilled: (first missing id, last missing id or None = open-ended).
    trade_gap: tuple[int, int | None] | None = None
    held_trades: dict[int, market_pb2.MarketEvent] = field(default_factory=dict)
    trade_gap_deadline_us: int = 0
    # bookTickers newer than the book, by update id, to compare once the book gets there.
    pending_tickers: dict[int, tuple[Level, Level]] = field(default_factory=dict)
    # Cumulative quality counters (exported as Prometheus metrics by the stage).
    bad_inputs: int = 0
    gaps: int = 0                          # depth sequence gaps on the stream
    depth_updates: int = 0                 # diffs applied to a synced book
    snapshots: int = 0                     # REST snapshots applied
    snapshot_retries: int = 0              # snapshots too old for the buffered stream
    trades: int = 0                        # trades emitted
    trades_lost: int = 0                   # trade ids never received nor backfilled
    trades_backfilled: int = 0
    duplicates: int = 0
    liquidations: int = 0                  # forced liquidations emitted
    open_interest_samples: int = 0         # open-interest samples emitted
    ticker_checks: int = 0                 # bookTickers compared with the book at the same update id
    divergences: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    # Quarantine.
    failures: deque[int] = field(default_factory=deque)  # clock times of recent failures
    last_failure_us: int = 0
    quarantined_since_us: int = -1
    next_snapshot_us: int = 0
    quarantines: int = 0
    # Book audits (live): recent applied diffs, a snapshot waiting for the book to reach its update id, results.
    recent_diffs: deque[DepthUpdate] | None = None
    audit: OrderBook | None = None
    audits: int = 0                        # audits compared
    audit_mismatches: int = 0
    audits_inconclusive: int = 0           # no exact comparison possible (book resynced, diffs out of reach)
    # The update-id chain of the diffs received, audited once a window.
    chain_last: int = -1                   # final update id of the newest diff received
    chain_diffs: int = 0                   # diffs received in the window
    chain_breaks: int = 0                  # of which did not continue the chain
    chain_window_start_us: int = -1
    chain_gap_ratio: float = 0.0           # breaks per diff of the last complete window
    rebuilds: int = 0                      # books rebuilt because that ratio was too high

    @property
    def time_sync_degraded(self) -> bool:
        return self.drift_ewma_us is not None and abs(self.drift_ewma_us) > DEGRADED_DRIFT_US

    @property
    def quarantined(self) -> bool:
        return self.quarantined_since_us >= 0


@dataclass(slots=True)
class IngestState:
    """Everything ``process`` keeps between calls. ``sequence_base`` keeps batch ids unique across sessions."""

    venue: common_pb2.Venue = common_pb2.SIMULATOR
    futures: bool = False                  # depth continuity by the previous final id (Binance USD-M's pu)
    microbatch_ms: int = 20
    sequence_base: int = 0
    top_levels: int = TOP_LEVELS
    max_batch_events: int = MAX_BATCH_EVENTS
    trade_backfill_timeout_us: int = 5_000_000
    quarantine_failures: int = 5
    quarantine_window_us: int = 60_000_000
    quarantine_release_us: int = 300_000_000
    quarantine_resync_interval_us: int = 30_000_000
    symbols: dict[str, SymbolState] = field(default_factory=dict)
    unattributed_bad_inputs: int = 0       # bad frames whose symbol could not be told
    codec: Codec | None = None             # decodes the frames of ``process``; see IngestConfig.new_state
    audits: bool = False                   # keep recent diffs for ``audit_snapshot`` and audit the id chain
    audit_gap_ratio: float = 0.002         # chain breaks per diff in a window above which a book is rebuilt
    stale_after_us: int = 0                # a batch whose newest event is older than this on receipt: STALE_INPUT
    fixed_universe: bool = False           # events of symbols without a state are ignored (live: the followed set)
    ignored_events: int = 0                # ... counted here (a stream unsubscribed a moment ago)

    def symbol_state(self, symbol: str) -> SymbolState:
        st = self.symbols.get(symbol)
        if st is None:
            st = self.symbols[symbol] = SymbolState(symbol, OrderBook(symbol, futures=self.futures))
            if self.audits:
                st.recent_diffs = deque(maxlen=AUDIT_RECENT_DIFFS)
        return st

    @property
    def venue_name(self) -> str:
        return common_pb2.Venue.Name(self.venue).lower()


# --- the core -------------------------------------------------------------------------------------------------


def _raw_bytes(raw: object) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    try:
        return orjson.dumps(raw)
    except TypeError:
        return repr(raw).encode()


def _fail(state: IngestState, st: SymbolState, now_us: int) -> None:
    """Record a failure of ``st``; enough of them within the window quarantine the symbol."""
    st.last_failure_us = now_us
    failures = st.failures
    failures.append(now_us)
    cutoff = now_us - state.quarantine_window_us
    while failures and failures[0] < cutoff:
        failures.popleft()
    if not st.quarantined and len(failures) >= state.quarantine_failures:
        st.quarantined_since_us = now_us
        st.quarantines += 1
        # A snapshot already asked for still goes out; the next one waits the interval.
        st.next_snapshot_us = now_us + state.quarantine_resync_interval_us


def _dead_letter(state: IngestState, symbol: str, raw: object, error_type: str, reason: str, out: IngestOutputs, *,
                 now_us: int) -> None:
    st = state.symbols.get(symbol)
    if st is not None:  # garbage symbols in bad frames must not create books
        st.bad_inputs += 1
        _fail(state, st, now_us)
    else:
        state.unattributed_bad_inputs += 1
    out.dead_letters.append(DeadLetterOut(_raw_bytes(raw), error_type, reason, symbol))


def _request_resync(state: IngestState, st: SymbolState, out: IngestOutputs, now_us: int) -> None:
    if st.resync_requested:
        return
    st.resync_requested = True
    if st.quarantined:
        if now_us < st.next_snapshot_us:
            st.resync_deferred = True  # goes out from _flush when the interval has passed
            return
        st.next_snapshot_us = now_us + state.quarantine_resync_interval_us
    out.resync_requests.append(st.symbol)


def _lose_sync(state: IngestState, st: SymbolState, reason: str, out: IngestOutputs, now_us: int, *,
               request: bool = True) -> None:
    """A synced book can no longer be trusted: count the episode, flag the window and ask for one snapshot."""
    if st.book.state in (BookState.AWAITING_FIRST, BookState.LIVE):
        st.book.mark_resyncing()
    st.resyncs[reason] = st.resyncs.get(reason, 0) + 1
    st.pending_tickers.clear()
    _reset_audit(st)
    st.window_flags.add(common_pb2.BOOK_RESYNCING)
    if request:
        _request_resync(state, st, out, now_us)


def codec_of(state: IngestState) -> Codec:
    """The codec that decodes ``state``'s frames."""
    codec = state.codec
    if codec is None:
        # A state built by hand rather than by IngestConfig.new_state: its venue's codec. Imported here, so the
        # core itself depends on no venue package.
        from streams.ingest.config import codec_for

        codec = state.codec = codec_for(state.venue)
    return codec


def process(batch: Sequence[Frame], state: IngestState, clock: Clock) -> IngestOutputs:
    """Decode ``batch`` with the state's codec, keep the books, and emit the TickBatches whose window has elapsed.

    Windows are judged on ``clock.now_us()``: an expired window is flushed before this batch is added, so
    events that arrive within ``microbatch_ms`` of a window's first event share one TickBatch.
    """
    out = IngestOutputs()
    now_us = clock.now_us()
    _flush(state, now_us, out, force=False)
    decode = codec_of(state).decode
    for hint, raw, local_us in batch:
        out.frames_in += 1
        _ingest(state, out, decode(hint, raw, local_us), now_us)
    return out


def ingest(events: Iterable[NormalizedEvent], state: IngestState, clock: Clock) -> IngestOutputs:
    """``process`` for events a codec already decoded (one frame each)."""
    out = IngestOutputs()
    now_us = clock.now_us()
    _flush(state, now_us, out, force=False)
    for event in events:
        out.frames_in += 1
        _ingest(state, out, event, now_us)
    return out


def flush(state: IngestState, clock: Clock, *, force: bool = False) -> IngestOutputs:
    """Emit the TickBatches whose window has elapsed, or every pending one with ``force`` (e.g. on stop).

    Also releases held trades whose backfill timed out (all of them with ``force``) and sends deferred
    snapshot requests of quarantined symbols.
    """
    out = IngestOutputs()
    _flush(state, clock.now_us(), out, force=force)
    return out


def apply_snapshot(state: IngestState, symbol: str, snapshot: Raw | SnapshotEvent, clock: Clock,
                   local_us: int | None = None) -> IngestOutputs:
    """Seed or re-seed a symbol's book from a REST snapshot (raw, decoded by the state's codec, or normalised)."""
    out = IngestOutputs()
    now_us = clock.now_us()
    if not isinstance(snapshot, SnapshotEvent):
        decoded = codec_of(state).decode_snapshot(symbol, snapshot, now_us if local_us is None else local_us)
        if isinstance(decoded, Rejected):
            _dead_letter(state, decoded.symbol, decoded.raw, decoded.error_type, decoded.reason, out, now_us=now_us)
            return out
        snapshot = decoded
    _apply_snapshot(state, out, snapshot, now_us)
    return out


def apply_open_interest(state: IngestState, symbol: str, sample: Raw | OpenInterestEvent, clock: Clock,
                        local_us: int | None = None) -> IngestOutputs:
    """Put a polled open-interest sample (the REST answer, decoded by the state's codec, or normalised) on the
    symbol's next TickBatch. A bad answer is dead-lettered; one no newer than the last sample is a duplicate; one
    for a symbol no longer followed (``fixed_universe``) is ignored."""
    out = IngestOutputs()
    now_us = clock.now_us()
    if not isinstance(sample, OpenInterestEvent):
        decoded = codec_of(state).decode_open_interest(symbol, sample, now_us if local_us is None else local_us)
        if isinstance(decoded, Rejected):
            _dead_letter(state, decoded.symbol, decoded.raw, decoded.error_type, decoded.reason, out, now_us=now_us)
            return out
        sample = decoded
    st = state.symbols.get(sample.symbol)
    if st is None:
        if state.fixed_universe:
            state.ignored_events += 1
            return out
        st = state.symbol_state(sample.symbol)
    oi = sample.sample
    if oi.exchange_us <= st.last_open_interest_us:
        st.duplicates += 1
        return out
    st.last_open_interest_us = oi.exchange_us
    st.open_interest_samples += 1
    st.pending_open_interest.append(oi)
    st.newest_exchange_us = max(st.newest_exchange_us, oi.exchange_us)
    st.newest_local_us = max(st.newest_local_us, sample.local_us)
    if st.window_open_us < 0:
        st.window_open_us = now_us
    return out


def lose_sync(state: IngestState, symbols: Iterable[str], clock: Clock, reason: str = RESYNC_RECONNECT) -> None:
    """The diff stream of ``symbols`` was interrupted (reconnect, overload): their books wait for a snapshot.

    The snapshot is asked for by the first diff buffered afterwards, as Binance's procedure wants the stream
    buffering before the snapshot is taken; a book that was never synced just keeps waiting for its first one.
    """
    now_us = clock.now_us()
    out = IngestOutputs()
    for symbol in symbols:
        st = state.symbol_state(symbol)
        if st.book.synced:
            _lose_sync(state, st, reason, out, now_us, request=False)
        st.resync_requested = st.resync_deferred = False
        st.chain_last = -1  # the next connection's diffs start a new chain: no break to count


def add_symbols(state: IngestState, symbols: Iterable[str]) -> list[str]:
    """Follow ``symbols`` too (a live universe change); returns the ones that are new. Their books ask for a
    snapshot with the first diff buffered, as at start."""
    added = [s for s in symbols if s not in state.symbols]
    for symbol in added:
        state.symbol_state(symbol)
    return added


def drop_symbols(state: IngestState, symbols: Iterable[str], clock: Clock) -> IngestOutputs:
    """Stop following ``symbols``: their pending events go out in a last TickBatch, held trades are released,
    and their state is forgotten (with ``fixed_universe``, their late frames are then ignored)."""
    out = IngestOutputs()
    now_us = clock.now_us()
    for symbol in symbols:
        st = state.symbols.get(symbol)
        if st is None:
            continue
        _release_trades(state, st, out, now_us)
        if st.pending or st.pending_liquidations or st.pending_open_interest:
            _emit_batch(state, st, out)
        del state.symbols[symbol]
    return out


def resume_trades(state: IngestState, symbols: Iterable[str], clock: Clock) -> IngestOutputs:
    """After a reconnect: hold ``symbols``' trades and ask for every trade since the last one seen."""
    out = IngestOutputs()
    now_us = clock.now_us()
    for symbol in symbols:
        st = state.symbols.get(symbol)
        if st is None or st.last_trade_id is None or st.trade_gap is not None:
            continue  # nothing seen yet (nothing to resume from), or a backfill is already under way
        first = st.last_trade_id + 1
        st.trade_gap = (first, None)
        st.held_trades = {}
        st.trade_gap_deadline_us = now_us + state.trade_backfill_timeout_us
        out.trade_gaps.append(TradeGap(symbol, first, None))
    return out


def apply_trade_backfill(state: IngestState, symbol: str, trades: bytes | Sequence[Any], clock: Clock,
                         ) -> IngestOutputs:
    """Fill a symbol's trade gap with REST trades (decoded by the state's codec), then emit the held trades in
    order.

    Whatever is still missing afterwards is counted as lost. An answer for a gap already released is ignored.
    """
    out = IngestOutputs()
    now_us = clock.now_us()
    st = state.symbols.get(symbol)
    if st is None or st.trade_gap is None:
        return out
    first = st.trade_gap[0]
    held = st.held_trades
    for decoded in codec_of(state).decode_trades(symbol, trades, now_us):
        if type(decoded) is Rejected:
            _dead_letter(state, symbol, decoded.raw, decoded.error_type, decoded.reason, out, now_us=now_us)
            continue
        event = decoded.event
        trade_id = event.trade.trade_id
        if trade_id >= first and trade_id not in held:
            held[trade_id] = event
            st.trades_backfilled += 1
    _release_trades(state, st, out, now_us)
    return out


def _ingest(state: IngestState, out: IngestOutputs, ev: NormalizedEvent, now_us: int) -> None:  # noqa: PLR0911 - early exits per event kind keep the hot path flat
    # Exact type checks (the event classes are final): cheaper than isinstance on the hot path.
    if type(ev) is SnapshotEvent:
        _apply_snapshot(state, out, ev, now_us)
        return
    if type(ev) is Rejected:
        symbol = ev.symbol
        _dead_letter(state, symbol, ev.raw, ev.error_type, ev.reason, out, now_us=now_us)
        bad = state.symbols.get(symbol)
        if bad is not None and ev.depth and bad.book.synced:
            _lose_sync(state, bad, RESYNC_BAD_DEPTH, out, now_us)  # the lost diff leaves the book unknown
        return
    if type(ev) is LiquidationEvent:
        _add_liquidation(state, out, ev, now_us)
        return
    symbol = ev.symbol
    event = ev.event
    local_us = ev.local_us
    if type(ev) is MarkPriceEvent:
        mark = state.symbols.get(symbol)
        if mark is not None and event.mark_price.exchange_us <= mark.last_mark_us:
            mark.duplicates += 1
            return
    st = state.symbols.get(symbol)
    if st is None:
        if state.fixed_universe:
            state.ignored_events += 1
            return
        st = state.symbol_state(symbol)
    book = st.book
    sent_us = ev.sent_us
    if sent_us:
        # Exchange-minus-local clock offset; network latency is in it too, which is what "drift" must bound.
        sample = sent_us - local_us
        st.drift_ewma_us = sample if st.drift_ewma_us is None else st.drift_ewma_us + DRIFT_ALPHA * (
            sample - st.drift_ewma_us)
    if type(ev) is TradeEvent:
        exchange_us = event.trade.exchange_us
        if not _accept_trade(state, st, event, out, now_us):
            return
    elif type(ev) is TickerEvent:
        ticker = event.book_ticker
        exchange_us = ticker.exchange_us
        if ticker.update_id <= st.last_ticker_id:
            st.duplicates += 1
            return
        st.last_ticker_id = ticker.update_id
        if not exchange_us:
            # A ticker without a venue time (Binance spot's): estimated from the receive time and the clock offset.
            exchange_us = ticker.exchange_us = local_us + round(st.drift_ewma_us or 0.0)
            st.newest_estimated_us = max(st.newest_estimated_us, exchange_us)
            exchange_us = 0
        if book.state in _SYNCED:
            _note_ticker(state, st, ticker, out, now_us)
    elif type(ev) is DepthEvent:
        update = ev.update
        exchange_us = update.exchange_us
        if not _apply_diff(state, st, update, ev.raw, out, now_us=now_us):
            return
    else:  # MarkPriceEvent
        exchange_us = event.mark_price.exchange_us
        st.last_mark_us = exchange_us
    if book.state not in _SYNCED:
        st.window_flags.add(common_pb2.BOOK_RESYNCING)
    if exchange_us > st.newest_exchange_us:  # noqa: PLR1730 - a compare is cheaper than max() per frame
        st.newest_exchange_us = exchange_us
    _add_event(state, out, st, event, local_us=local_us, now_us=now_us)


def _add_liquidation(state: IngestState, out: IngestOutputs, ev: LiquidationEvent, now_us: int) -> None:
    """A forced liquidation for the window's TickBatch; one no newer than the last (by event time) is a duplicate."""
    st = state.symbols.get(ev.symbol)
    if st is None:
        if state.fixed_universe:
            state.ignored_events += 1
            return
        st = state.symbol_state(ev.symbol)
    liquidation = ev.liquidation
    exchange_us = liquidation.exchange_us
    if exchange_us <= st.last_liquidation_us:
        st.duplicates += 1
        return
    st.last_liquidation_us = exchange_us
    if ev.sent_us:
        sample = ev.sent_us - ev.local_us
        st.drift_ewma_us = sample if st.drift_ewma_us is None else st.drift_ewma_us + DRIFT_ALPHA * (
            sample - st.drift_ewma_us)
    st.liquidations += 1
    st.pending_liquidations.append(liquidation)
    if st.book.state not in _SYNCED:
        st.window_flags.add(common_pb2.BOOK_RESYNCING)
    st.newest_exchange_us = max(st.newest_exchange_us, exchange_us)
    st.newest_local_us = max(st.newest_local_us, ev.local_us)
    if st.window_open_us < 0:
        st.window_open_us = now_us
    if len(st.pending) + len(st.pending_liquidations) >= state.max_batch_events:
        _emit_batch(state, st, out)


def _apply_diff(state: IngestState, st: SymbolState, update: DepthUpdate, raw: Raw, out: IngestOutputs, *,
                now_us: int) -> bool:
    """Apply one diff to the book; False when the diff must not be passed on (stale or crossing)."""
    book = st.book
    if state.audits:
        _chain(state, st, update, now_us)
    first_after_snapshot = book.state is BookState.AWAITING_FIRST
    status = book.apply(update)
    if status is SyncStatus.APPLIED:
        st.depth_updates += 1
        if st.pending_tickers:
            _check_pending_tickers(state, st, out, now_us)
        recent = st.recent_diffs
        if recent is not None:
            recent.append(update)
            if st.audit is not None:
                _advance_audit(state, st, update, out, now_us)
        return True
    if status is SyncStatus.STALE:
        if not first_after_snapshot:
            st.duplicates += 1  # at or below the book's update id on a live book: a duplicate
        return False  # Binance's procedure drops it either way
    if status is SyncStatus.BUFFERED:
        _request_resync(state, st, out, now_us)  # no-op while a request is outstanding
        return True
    if status is SyncStatus.CROSSED:
        _dead_letter(state, st.symbol, raw, "crossed_book",
                     f"best bid >= best ask after update {update.final_update_id}", out, now_us=now_us)
        _lose_sync(state, st, RESYNC_CROSSED, out, now_us)
        return False
    # GAP. Right after a snapshot it means the snapshot is older than the stream: fetch a newer one.
    st.window_flags.add(common_pb2.SEQUENCE_GAP)
    if first_after_snapshot:
        st.snapshot_retries += 1
        st.pending_tickers.clear()
        st.window_flags.add(common_pb2.BOOK_RESYNCING)
        _request_resync(state, st, out, now_us)
    else:
        st.gaps += 1
        _fail(state, st, now_us)
        _lose_sync(state, st, RESYNC_GAP, out, now_us)
    return True


# --- book audits -----------------------------------------------------------------------------------------------


def audit_snapshot(state: IngestState, symbol: str, snapshot: Raw | SnapshotEvent, clock: Clock,
                   local_us: int | None = None) -> IngestOutputs:
    """Compare a REST snapshot with the local book at the snapshot's update id.

    The snapshot becomes a shadow book. If the local book is past it, the shadow is rolled forward over the
    recent applied diffs (the same Binance procedure: drop the older ones, the first must straddle); if the
    local book is behind, the shadow waits and follows the diffs the book applies until both stand at one
    update id. Then the best ``AUDIT_LEVELS`` levels per side must be identical; a mismatch counts, flags the
    window (BOOK_RESYNCING), counts as a failure (quarantine) and resyncs the book. Audits that cannot be
    compared exactly (the book resynced meanwhile, the diffs in between are no longer kept) are counted as
    inconclusive.
    """
    out = IngestOutputs()
    now_us = clock.now_us()
    if not isinstance(snapshot, SnapshotEvent):
        decoded = codec_of(state).decode_snapshot(symbol, snapshot, now_us if local_us is None else local_us)
        if isinstance(decoded, Rejected):
            _dead_letter(state, decoded.symbol, decoded.raw, decoded.error_type, decoded.reason, out, now_us=now_us)
            return out
        snapshot = decoded
    st = state.symbols.get(symbol)
    if st is None:
        return out
    book = st.book
    if book.state not in _SYNCED:
        st.audits_inconclusive += 1
        return out
    shadow = OrderBook(symbol, futures=state.futures)
    last_id = snapshot.last_update_id
    if shadow.apply_snapshot(last_id, snapshot.bids, snapshot.asks) is not SyncStatus.APPLIED:
        st.audits_inconclusive += 1  # a crossed snapshot: nothing to compare with
        return out
    if st.audit is not None:
        st.audits_inconclusive += 1  # superseded by this one
    st.audit = None
    _start_audit(state, st, shadow, out, now_us)
    return out


def _start_audit(state: IngestState, st: SymbolState, shadow: OrderBook, out: IngestOutputs, now_us: int) -> None:
    book = st.book
    last_id = shadow.last_update_id
    if book.last_update_id > last_id:
        for diff in st.recent_diffs or ():
            # Older diffs are STALE to the shadow (the venue's own rule: USD-M applies the one ending at its id).
            if shadow.apply(diff) not in (SyncStatus.APPLIED, SyncStatus.STALE):
                break
        if shadow.synced and shadow.last_update_id == book.last_update_id:
            _compare_books(state, st, shadow, out, now_us)
        else:
            st.audits_inconclusive += 1
    elif book.last_update_id == last_id:
        _compare_books(state, st, shadow, out, now_us)
    else:
        st.audit = shadow  # the book gets there with the next diffs (``_advance_audit``)


def _advance_audit(state: IngestState, st: SymbolState, update: DepthUpdate, out: IngestOutputs, now_us: int,
                   ) -> None:
    """The book applied ``update``: move the waiting shadow along and compare once both stand at one id."""
    shadow = st.audit
    assert shadow is not None
    status = shadow.apply(update)
    if status not in (SyncStatus.APPLIED, SyncStatus.STALE):
        st.audit = None
        st.audits_inconclusive += 1
        return
    if shadow.last_update_id == st.book.last_update_id:
        st.audit = None
        _compare_books(state, st, shadow, out, now_us)


def _compare_books(state: IngestState, st: SymbolState, shadow: OrderBook, out: IngestOutputs, now_us: int) -> None:
    st.audits += 1
    local_bids, local_asks = st.book.top(AUDIT_LEVELS)
    shadow_bids, shadow_asks = shadow.top(AUDIT_LEVELS)
    # A side the snapshot holds fewer levels of is compared as deep as the snapshot goes.
    if local_bids[:len(shadow_bids)] == shadow_bids and local_asks[:len(shadow_asks)] == shadow_asks:
        return
    st.audit_mismatches += 1
    _fail(state, st, now_us)
    _lose_sync(state, st, RESYNC_AUDIT, out, now_us)


def _reset_audit(st: SymbolState) -> None:
    if st.audit is not None:
        st.audit = None
        st.audits_inconclusive += 1
    if st.recent_diffs:
        st.recent_diffs.clear()  # the next book is a new snapshot: older diffs no longer lead to it


def _chain(state: IngestState, st: SymbolState, update: DepthUpdate, now_us: int) -> None:
    """Count a received diff, and whether it continues the update-id chain of the diffs before it."""
    last = st.chain_last
    final = update.final_update_id
    if final <= last:
        return  # a duplicate or an older diff: not part of the chain
    if st.chain_window_start_us < 0:
        st.chain_window_start_us = now_us
    if last >= 0:
        st.chain_diffs += 1
        if (update.prev_final_update_id != last) if state.futures else (update.first_update_id != last + 1):
            st.chain_breaks += 1
    st.chain_last = final


def _audit_chain(state: IngestState, st: SymbolState, out: IngestOutputs, now_us: int) -> None:
    """Once a window: the share of diffs that broke the id chain; above ``audit_gap_ratio`` the book is rebuilt."""
    ratio = st.chain_breaks / st.chain_diffs if st.chain_diffs else 0.0
    st.chain_gap_ratio = ratio
    st.chain_diffs = st.chain_breaks = 0
    st.chain_window_start_us = now_us
    if state.audit_gap_ratio and ratio > state.audit_gap_ratio:
        st.rebuilds += 1
        st.window_flags.add(common_pb2.SEQUENCE_GAP)
        _fail(state, st, now_us)
        if st.book.state in _SYNCED:
            _lose_sync(state, st, RESYNC_GAP_RATIO, out, now_us)
        else:
            _request_resync(state, st, out, now_us)


def _note_ticker(state: IngestState, st: SymbolState, ticker: market_pb2.BookTicker, out: IngestOutputs,
                 now_us: int) -> None:
    """Compare a best bid/ask with the book at the same update id, now or once the book gets there."""
    top = ((ticker.bid_price, ticker.bid_qty), (ticker.ask_price, ticker.ask_qty))
    last = st.book.last_update_id
    if ticker.update_id == last:
        _compare_top(state, st, top, out, now_us)
    elif ticker.update_id > last:
        pending = st.pending_tickers
        pending[ticker.update_id] = top
        if len(pending) > MAX_PENDING_TICKERS:
            del pending[next(iter(pending))]
    # Older than the book: the book already moved past it, nothing exact to compare with.


def _check_pending_tickers(state: IngestState, st: SymbolState, out: IngestOutputs, now_us: int) -> None:
    pending = st.pending_tickers
    last = st.book.last_update_id
    while pending:
        update_id = next(iter(pending))
        if update_id > last:
            return
        top = pending.pop(update_id)
        if update_id == last:
            _compare_top(state, st, top, out, now_us)
            return


def _compare_top(state: IngestState, st: SymbolState, top: tuple[Level, Level], out: IngestOutputs,
                 now_us: int) -> None:
    st.ticker_checks += 1
    book = st.book
    if book.best_bid() == top[0] and book.best_ask() == top[1]:
        return
    # Same update id, different top: the local book is wrong, whatever the cause.
    st.divergences += 1
    st.window_flags.add(common_pb2.BOOK_TICKER_DIVERGENCE)
    _fail(state, st, now_us)
    _lose_sync(state, st, RESYNC_DIVERGENCE, out, now_us)


def _accept_trade(state: IngestState, st: SymbolState, event: market_pb2.MarketEvent, out: IngestOutputs,
                  now_us: int) -> bool:
    """True: pass the trade on now. False: a duplicate (dropped) or held until its gap is backfilled."""
    trade_id = event.trade.trade_id
    gap = st.trade_gap
    if gap is None:
        last = st.last_trade_id
        if last is None or trade_id == last + 1:
            st.last_trade_id = trade_id
            st.trades += 1
            return True
        if trade_id <= last:
            st.duplicates += 1
            return False
        st.trade_gap = (last + 1, trade_id - 1)
        st.held_trades = {trade_id: event}
        st.trade_gap_deadline_us = now_us + state.trade_backfill_timeout_us
        out.trade_gaps.append(TradeGap(st.symbol, last + 1, trade_id - 1))
        return False
    if trade_id < gap[0] or trade_id in st.held_trades:
        st.duplicates += 1
        return False
    st.held_trades[trade_id] = event
    return False


def _release_trades(state: IngestState, st: SymbolState, out: IngestOutputs, now_us: int) -> None:
    """Emit the held trades in id order and close the gap; ids still missing are counted as lost."""
    gap = st.trade_gap
    if gap is None:
        return
    first, last = gap
    held = st.held_trades
    expected = first
    lost = 0
    for trade_id in sorted(held):
        if trade_id > expected:
            lost += trade_id - expected
        event = held[trade_id]
        exchange_us = event.trade.exchange_us
        st.newest_exchange_us = max(st.newest_exchange_us, exchange_us)
        _add_event(state, out, st, event, local_us=event.trade.ingest_us, now_us=now_us)
        expected = trade_id + 1
    if last is not None and expected <= last:
        lost += last - expected + 1
    st.trades += len(held)
    st.trades_lost += lost
    if held:
        st.last_trade_id = expected - 1
    st.trade_gap = None
    st.held_trades = {}


def _add_event(state: IngestState, out: IngestOutputs, st: SymbolState, event: market_pb2.MarketEvent, *,
               local_us: int, now_us: int) -> None:
    if local_us > st.newest_local_us:  # noqa: PLR1730 - as above, per event
        st.newest_local_us = local_us
    if st.window_open_us < 0:
        st.window_open_us = now_us
    st.pending.append(event)
    if len(st.pending) >= state.max_batch_events:
        _emit_batch(state, st, out)


def _apply_snapshot(state: IngestState, out: IngestOutputs, snapshot: SnapshotEvent, now_us: int) -> None:
    symbol = snapshot.symbol
    if state.fixed_universe and symbol not in state.symbols:
        return  # a late answer for a symbol no longer followed
    st = state.symbol_state(symbol)
    st.resync_requested = st.resync_deferred = False
    st.snapshots += 1
    st.pending_tickers.clear()
    _reset_audit(st)
    last_id = snapshot.last_update_id
    status = st.book.apply_snapshot(last_id, snapshot.bids, snapshot.asks, exchange_us=snapshot.exchange_us,
                                    local_us=snapshot.local_us)
    if status is SyncStatus.GAP:
        # The snapshot is older than the buffered stream (or the buffer overflowed): ask for a newer one.
        st.snapshot_retries += 1
        st.window_flags.add(common_pb2.SEQUENCE_GAP)
        _request_resync(state, st, out, now_us)
    elif status is SyncStatus.CROSSED:
        _dead_letter(state, symbol, snapshot.raw, "crossed_book",
                     f"best bid >= best ask after snapshot {last_id} and its buffered diffs", out, now_us=now_us)
        _request_resync(state, st, out, now_us)


def _flush(state: IngestState, now_us: int, out: IngestOutputs, *, force: bool) -> None:
    window_us = state.microbatch_ms * 1000
    for st in state.symbols.values():
        if st.trade_gap is not None and (force or now_us >= st.trade_gap_deadline_us):
            _release_trades(state, st, out, now_us)  # the backfill did not come in time
        if st.quarantined_since_us >= 0:
            if st.resync_deferred and now_us >= st.next_snapshot_us:
                st.resync_deferred = False
                st.next_snapshot_us = now_us + state.quarantine_resync_interval_us
                out.resync_requests.append(st.symbol)
            if now_us - st.last_failure_us >= state.quarantine_release_us:
                st.quarantined_since_us = -1
                st.failures.clear()
        if state.audits and st.chain_window_start_us >= 0 and now_us - st.chain_window_start_us >= AUDIT_WINDOW_US:
            _audit_chain(state, st, out, now_us)
        if (st.pending or st.pending_liquidations or st.pending_open_interest) and (
                force or now_us - st.window_open_us >= window_us):
            _emit_batch(state, st, out)


def _emit_batch(state: IngestState, st: SymbolState, out: IngestOutputs) -> None:
    st.sequence += 1
    sequence = state.sequence_base + st.sequence
    batch = market_pb2.TickBatch(
        schema_version=SCHEMA_VERSION,
        batch_id=f"{state.venue_name}:{st.symbol}:{sequence}",
        venue=state.venue,
        symbol=st.symbol,
        sequence=sequence,
    )
    batch.events.extend(st.pending)
    if st.pending_liquidations:
        batch.liquidations.extend(st.pending_liquidations)
        st.pending_liquidations = []
    if st.pending_open_interest:
        batch.open_interest.extend(st.pending_open_interest)
        st.pending_open_interest = []
    book = st.book
    if book.synced:
        # The book after this batch's diffs: downstream stages read the order book from here.
        snap = batch.events.add().book
        snap.last_update_id = book.last_update_id
        bids, asks = book.top(state.top_levels)
        add = snap.bids.add
        for price, qty in bids:
            add(price=price, qty=qty)
        add = snap.asks.add
        for price, qty in asks:
            add(price=price, qty=qty)
        snap.exchange_us = book.last_exchange_us
        snap.ingest_us = book.last_local_us
    exchange_us = st.newest_exchange_us or st.newest_estimated_us
    batch.ts.exchange_us = exchange_us
    batch.ts.ingest_us = st.newest_local_us
    flags = st.window_flags
    if state.venue == common_pb2.SIMULATOR:
        flags.add(common_pb2.SIMULATED)
    if st.time_sync_degraded:
        flags.add(common_pb2.DEGRADED_TIME_SYNC)
    if state.stale_after_us and st.newest_exchange_us and (
            st.newest_local_us - st.newest_exchange_us > state.stale_after_us):
        flags.add(common_pb2.STALE_INPUT)  # the venue's stream itself is late: its newest event arrived this old
    if not book.synced:
        flags.add(common_pb2.BOOK_RESYNCING)
    if st.quarantined_since_us >= 0:
        flags.add(common_pb2.QUARANTINED)
    batch.quality_flags.extend(sorted(flags))
    out.emits.append(Emit(topic=Topic.TICKS, key=key_of(batch), value=batch, exchange_us=exchange_us))
    st.pending = []
    st.window_open_us = -1
    st.newest_exchange_us = st.newest_estimated_us = st.newest_local_us = 0
    st.window_flags = set()
