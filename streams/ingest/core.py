"""Pure ingest core: raw Binance-shaped frames -> normalised MarketEvents, local books, per-symbol TickBatches.

No Kafka here: ``process`` turns a batch of raw frames into ``Emit``s of ``TickBatch`` (one per symbol per
micro-batch window), dead letters for frames it cannot use, and resync (re-snapshot) requests. The caller
(``stage.py``, later live/replay sources) owns the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas import SCHEMA_VERSION, common_pb2, market_pb2
from streams.ingest.book import DepthUpdate, Level, OrderBook, SyncStatus
from streams.runtime.clock import Clock
from streams.runtime.core import Emit
from streams.runtime.topics import Topic

# (symbol hint or stream name such as "btcusdt@depth@100ms", raw JSON bytes or decoded dict, local receive µs)
Frame = tuple[str, bytes | Mapping[str, Any], int]

TOP_LEVELS = 20                  # BookSnapshot depth per side: what the features stage reads the book from
MAX_BATCH_EVENTS = 2_000         # flush early so one TickBatch stays far below Kafka's 1 MB message limit
DRIFT_ALPHA = 0.05               # EWMA weight of one exchange-minus-local clock sample
DEGRADED_DRIFT_US = 100_000      # |drift EWMA| above this flags DEGRADED_TIME_SYNC


class BadFrame(ValueError):
    """A frame the core cannot use; ``error_type`` is the machine-readable dead-letter class."""

    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DeadLetterOut:
    """A bad frame for dlq.v1, with its original bytes (dict frames are re-serialised as JSON)."""

    raw_bytes: bytes
    error_type: str
    reason: str
    symbol: str


@dataclass(slots=True)
class IngestOutputs:
    emits: list[Emit] = field(default_factory=list)
    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    resync_requests: list[str] = field(default_factory=list)   # symbols that need a fresh REST snapshot
    frames_in: int = 0

    def extend(self, other: IngestOutputs) -> None:
        self.emits.extend(other.emits)
        self.dead_letters.extend(other.dead_letters)
        self.resync_requests.extend(s for s in other.resync_requests if s not in self.resync_requests)
        self.frames_in += other.frames_in


@dataclass(slots=True)
class SymbolState:
    """Per-symbol ingest state: the book, the batch sequence and the micro-batch being filled."""

    symbol: str
    book: OrderBook
    sequence: int = 0                      # batches emitted this session
    pending: list[market_pb2.MarketEvent] = field(default_factory=list)
    window_open_us: int = -1               # clock time the first pending event was buffered; -1 = empty
    newest_exchange_us: int = 0            # newest venue-stamped time among pending events
    newest_estimated_us: int = 0           # same, counting events whose time had to be estimated
    newest_local_us: int = 0
    drift_ewma_us: float | None = None     # exchange minus local clock, smoothed
    window_flags: set[common_pb2.QualityFlag] = field(default_factory=set)
    bad_inputs: int = 0
    gaps: int = 0
    resync_requested: bool = False         # one outstanding snapshot request at a time, never a storm

    @property
    def time_sync_degraded(self) -> bool:
        return self.drift_ewma_us is not None and abs(self.drift_ewma_us) > DEGRADED_DRIFT_US


@dataclass(slots=True)
class IngestState:
    """Everything ``process`` keeps between calls. ``sequence_base`` keeps batch ids unique across sessions."""

    venue: common_pb2.Venue = common_pb2.SIMULATOR
    futures: bool = False                  # USD-M depth continuity rule (pu)
    microbatch_ms: int = 20
    sequence_base: int = 0
    top_levels: int = TOP_LEVELS
    max_batch_events: int = MAX_BATCH_EVENTS
    symbols: dict[str, SymbolState] = field(default_factory=dict)
    unattributed_bad_inputs: int = 0       # bad frames whose symbol could not be told

    def symbol_state(self, symbol: str) -> SymbolState:
        st = self.symbols.get(symbol)
        if st is None:
            st = self.symbols[symbol] = SymbolState(symbol, OrderBook(symbol, futures=self.futures))
        return st

    @property
    def venue_name(self) -> str:
        return common_pb2.Venue.Name(self.venue).lower()


# --- validation helpers ----------------------------------------------------------------------------------------


def _field(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise BadFrame("missing_field", f"field {key!r} missing") from None


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _field(data, key)
    if type(value) is not int:  # bool is an int subclass and never a valid id or time
        raise BadFrame("missing_field", f"field {key!r} is not an integer: {value!r}")
    return value


def _price(value: Any, what: str) -> float:
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise BadFrame("invalid_price", f"{what} is not numeric: {value!r}") from None
    if not 0.0 < price < math.inf:
        raise BadFrame("invalid_price", f"{what} is not positive and finite: {value!r}")
    return price


def _size(value: Any, what: str) -> float:
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise BadFrame("invalid_size", f"{what} is not numeric: {value!r}") from None
    if not 0.0 <= size < math.inf:
        raise BadFrame("invalid_size", f"{what} is negative or not finite: {value!r}")
    return size


def _levels(data: Mapping[str, Any], key: str) -> list[Level]:
    raw = _field(data, key)
    if not isinstance(raw, list | tuple):
        raise BadFrame("missing_field", f"field {key!r} is not a list of levels")
    try:
        levels = [(float(p), float(q)) for p, q in raw]
    except (TypeError, ValueError):
        return [_level(entry, key) for entry in raw]  # the slow path names the bad value
    for price, qty in levels:
        if not (0.0 < price < math.inf and 0.0 <= qty < math.inf):
            _price(price, f"{key} price")
            _size(qty, f"{key} qty")
    return levels


def _level(entry: Any, key: str) -> Level:
    if not isinstance(entry, list | tuple) or len(entry) != 2:
        raise BadFrame("missing_field", f"{key} level is not a [price, qty] pair: {entry!r}")
    return _price(entry[0], f"{key} price"), _size(entry[1], f"{key} qty")


# --- parsers: one per event type ---------------------------------------------------------------------------------


def parse_trade(data: Mapping[str, Any], local_us: int) -> market_pb2.MarketEvent:
    """Spot/futures ``<symbol>@trade``. Sample (spot BTCUSDT, 2024-08-08)::

        {"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",
         "q":"0.02000000","T":1723161255342,"m":true,"M":true}
    """
    event = market_pb2.MarketEvent()
    trade = event.trade
    trade.trade_id = _int(data, "t")
    trade.price = _price(_field(data, "p"), "trade price")
    qty = _size(_field(data, "q"), "trade qty")
    if qty == 0.0:
        raise BadFrame("invalid_size", "trade qty is zero")
    trade.qty = qty
    maker = _field(data, "m")
    if type(maker) is not bool:
        raise BadFrame("missing_field", f"field 'm' is not a boolean: {maker!r}")
    trade.buyer_is_maker = maker
    trade.exchange_us = _int(data, "T") * 1000
    trade.ingest_us = local_us
    return event


def parse_depth(data: Mapping[str, Any], local_us: int) -> tuple[market_pb2.MarketEvent, DepthUpdate]:
    """Diff depth ``<symbol>@depth[@100ms]``; futures add ``T`` and ``pu``. Sample (spot BTCUSDT)::

        {"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,
         "b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"],
         ["61844.30000000","0.40163000"],["61862.50000000","0.05019000"],["61862.51000000","0.00000000"]]}

    USD-M sample: {"e":"depthUpdate","E":1723161261998,"T":1723161261993,"s":"BTCUSDT","U":5123108235337,
    "u":5123108237014,"pu":5123108234952,"b":[["33000.00","5.203"],["60751.60","2.466"]],"a":[...]}
    """
    first, final = _int(data, "U"), _int(data, "u")
    prev = _int(data, "pu") if "pu" in data else 0
    if final < first:
        raise BadFrame("invalid_update_id", f"final update id {final} < first {first}")
    bids, asks = _levels(data, "b"), _levels(data, "a")
    exchange_us = _int(data, "E") * 1000
    event = market_pb2.MarketEvent()
    diff = event.depth
    diff.first_update_id = first
    diff.final_update_id = final
    diff.prev_final_update_id = prev
    add = diff.bids.add
    for price, qty in bids:
        add(price=price, qty=qty)
    add = diff.asks.add
    for price, qty in asks:
        add(price=price, qty=qty)
    diff.exchange_us = exchange_us
    diff.ingest_us = local_us
    return event, DepthUpdate(first, final, prev, bids, asks, exchange_us, local_us)


def parse_book_ticker(data: Mapping[str, Any], local_us: int) -> market_pb2.MarketEvent:
    """``<symbol>@bookTicker``; spot has no event time (``exchange_us`` stays 0), futures add e/E/T. Sample::

        {"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000",
         "A":"1.54698000"}
    """
    event = market_pb2.MarketEvent()
    ticker = event.book_ticker
    ticker.update_id = _int(data, "u")
    ticker.bid_price = _price(_field(data, "b"), "bid price")
    ticker.bid_qty = _size(_field(data, "B"), "bid qty")
    ticker.ask_price = _price(_field(data, "a"), "ask price")
    ticker.ask_qty = _size(_field(data, "A"), "ask qty")
    ticker.exchange_us = _int(data, "E") * 1000 if "E" in data else 0
    ticker.ingest_us = local_us
    return event


def parse_mark_price(data: Mapping[str, Any], local_us: int) -> market_pb2.MarketEvent:
    """USD-M ``<symbol>@markPrice@1s``. Sample (BTCUSDT perpetual, 2023-04-05)::

        {"e":"markPriceUpdate","E":1680652701000,"s":"BTCUSDT","p":"28147.27373413","P":"28142.15563565",
         "i":"28159.75642857","r":"0.00002754","T":1680652800000}
    """
    event = market_pb2.MarketEvent()
    mark = event.mark_price
    mark.mark_price = _price(_field(data, "p"), "mark price")
    mark.index_price = _price(_field(data, "i"), "index price")
    try:
        rate = float(_field(data, "r"))
    except (TypeError, ValueError):
        raise BadFrame("invalid_field", f"funding rate is not numeric: {data.get('r')!r}") from None
    if not math.isfinite(rate):
        raise BadFrame("invalid_field", f"funding rate is not finite: {data.get('r')!r}")
    mark.funding_rate = rate
    mark.next_funding_us = _int(data, "T") * 1000
    mark.exchange_us = _int(data, "E") * 1000
    mark.ingest_us = local_us
    return event


def parse_snapshot(data: Mapping[str, Any]) -> tuple[int, list[Level], list[Level], int]:
    """REST ``GET /api/v3/depth`` (futures ``/fapi/v1/depth`` adds E and T) -> (lastUpdateId, bids, asks, µs).

    Sample (spot BTCUSDT, truncated)::

        {"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"],["61837.62000000","0.61700000"],...],
         "asks":[["61837.64000000","1.54698000"],...]}
    """
    exchange_us = _int(data, "E") * 1000 if "E" in data else 0
    return _int(data, "lastUpdateId"), _levels(data, "bids"), _levels(data, "asks"), exchange_us


# --- the core -------------------------------------------------------------------------------------------------


def symbol_of(hint: str) -> str:
    """"btcusdt@depth@100ms" or "BTCUSDT" -> "BTCUSDT"."""
    return hint.split("@", 1)[0].upper()


def _raw_bytes(raw: bytes | Mapping[str, Any]) -> bytes:
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    try:
        return orjson.dumps(raw)
    except TypeError:
        return repr(raw).encode()


def _dead_letter(state: IngestState, symbol: str, raw: bytes | Mapping[str, Any], exc: BadFrame,
                 out: IngestOutputs) -> None:
    if symbol in state.symbols:  # garbage symbols in bad frames must not create books
        state.symbols[symbol].bad_inputs += 1
    else:
        state.unattributed_bad_inputs += 1
    out.dead_letters.append(DeadLetterOut(_raw_bytes(raw), exc.error_type, exc.reason, symbol))


def _request_resync(st: SymbolState, out: IngestOutputs) -> None:
    if not st.resync_requested:
        st.resync_requested = True
        out.resync_requests.append(st.symbol)


def process(batch: Sequence[Frame], state: IngestState, clock: Clock) -> IngestOutputs:
    """Normalise ``batch``, keep the books, and emit the TickBatches whose window has elapsed.

    Windows are judged on ``clock.now_us()``: an expired window is flushed before this batch is added, so
    events that arrive within ``microbatch_ms`` of a window's first event share one TickBatch.
    """
    out = IngestOutputs()
    now_us = clock.now_us()
    _flush(state, now_us, out, force=False)
    for hint, raw, local_us in batch:
        out.frames_in += 1
        _process_frame(state, out, hint, raw, local_us, now_us=now_us)
    return out


def flush(state: IngestState, clock: Clock, *, force: bool = False) -> IngestOutputs:
    """Emit the TickBatches whose window has elapsed, or every pending one with ``force`` (e.g. on stop)."""
    out = IngestOutputs()
    _flush(state, clock.now_us(), out, force=force)
    return out


def apply_snapshot(state: IngestState, symbol: str, snapshot: bytes | Mapping[str, Any], clock: Clock,
                   local_us: int | None = None) -> IngestOutputs:
    """Seed or re-seed a symbol's book from a REST snapshot (decoded dict or raw JSON bytes)."""
    out = IngestOutputs()
    now_us = clock.now_us()
    try:
        data = _decode(snapshot)
    except BadFrame as exc:
        _dead_letter(state, symbol, snapshot, exc, out)
        return out
    _apply_snapshot(state, out, symbol, snapshot, data=data, local_us=now_us if local_us is None else local_us)
    return out


def _decode(raw: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if type(raw) is dict:  # the simulator's frames; checked first as ABC isinstance checks are slow
        return raw
    if isinstance(raw, Mapping):
        data: Any = raw
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadFrame("malformed_json", f"undecodable JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise BadFrame("malformed_json", f"expected a JSON object, got {type(data).__name__}")
    return data


def _process_frame(state: IngestState, out: IngestOutputs, hint: str, raw: bytes | Mapping[str, Any], local_us: int,
                   *, now_us: int) -> None:
    symbol = symbol_of(hint)
    try:
        data = _decode(raw)
        if "stream" in data and "data" in data:  # combined-stream envelope
            stream = data["stream"]
            symbol = symbol_of(stream) if isinstance(stream, str) else symbol
            data = data["data"]
            if not isinstance(data, Mapping):
                raise BadFrame("malformed_json", "combined-stream 'data' is not an object")
        if "lastUpdateId" in data:
            _apply_snapshot(state, out, symbol, raw, data=data, local_us=local_us)
            return
        named = data.get("s")
        if isinstance(named, str) and named:
            symbol = named.upper()
        if not symbol:
            raise BadFrame("missing_field", "no symbol in the frame or its stream name")
        kind = data.get("e")
        update: DepthUpdate | None = None
        ticker: market_pb2.BookTicker | None = None
        if kind == "trade":
            event = parse_trade(data, local_us)
            exchange_us = event.trade.exchange_us
        elif kind == "depthUpdate":
            event, update = parse_depth(data, local_us)
            exchange_us = update.exchange_us
        elif kind == "bookTicker" or (kind is None and "u" in data and "A" in data):
            event = parse_book_ticker(data, local_us)
            ticker = event.book_ticker
            exchange_us = ticker.exchange_us
        elif kind == "markPriceUpdate":
            event = parse_mark_price(data, local_us)
            exchange_us = event.mark_price.exchange_us
        else:
            raise BadFrame("unknown_event_type", f"unknown event type {kind!r}")
    except BadFrame as exc:
        _dead_letter(state, symbol, raw, exc, out)
        return

    st = state.symbol_state(symbol)
    event_ms = data.get("E")
    if type(event_ms) is int:
        # Exchange-minus-local clock offset; network latency is in it too, which is what "drift" must bound.
        sample = event_ms * 1000 - local_us
        st.drift_ewma_us = sample if st.drift_ewma_us is None else st.drift_ewma_us + DRIFT_ALPHA * (
            sample - st.drift_ewma_us)
    estimated = False
    if ticker is not None and not exchange_us:
        # Spot bookTicker carries no time: estimate it from the receive time and the measured clock offset.
        exchange_us = ticker.exchange_us = local_us + round(st.drift_ewma_us or 0.0)
        estimated = True
    if update is not None:
        status = st.book.apply(update)
        if status is SyncStatus.CROSSED:
            _dead_letter(state, symbol, raw, BadFrame(
                "crossed_book", f"best bid >= best ask after update {update.final_update_id}"), out)
            _request_resync(st, out)
            st.window_flags.add(common_pb2.BOOK_RESYNCING)
            return
        if status is SyncStatus.GAP:
            st.gaps += 1
            st.window_flags.add(common_pb2.SEQUENCE_GAP)
            _request_resync(st, out)
        elif status is SyncStatus.BUFFERED:
            _request_resync(st, out)  # no-op while a request is outstanding
    if not st.book.synced:
        st.window_flags.add(common_pb2.BOOK_RESYNCING)
    if estimated:
        st.newest_estimated_us = max(st.newest_estimated_us, exchange_us)
    else:
        st.newest_exchange_us = max(st.newest_exchange_us, exchange_us)
    _add_event(state, out, st, event, local_us=local_us, now_us=now_us)


def _add_event(state: IngestState, out: IngestOutputs, st: SymbolState, event: market_pb2.MarketEvent, *,
               local_us: int, now_us: int) -> None:
    st.newest_local_us = max(st.newest_local_us, local_us)
    if st.window_open_us < 0:
        st.window_open_us = now_us
    st.pending.append(event)
    if len(st.pending) >= state.max_batch_events:
        _emit_batch(state, st, out)


def _apply_snapshot(state: IngestState, out: IngestOutputs, symbol: str, raw: bytes | Mapping[str, Any], *,
                    data: Mapping[str, Any], local_us: int) -> None:
    if not symbol:
        _dead_letter(state, symbol, raw, BadFrame("missing_field", "snapshot without a symbol hint"), out)
        return
    try:
        last_id, bids, asks, exchange_us = parse_snapshot(data)
    except BadFrame as exc:
        _dead_letter(state, symbol, raw, exc, out)
        return
    st = state.symbol_state(symbol)
    st.resync_requested = False
    status = st.book.apply_snapshot(last_id, bids, asks, exchange_us=exchange_us, local_us=local_us)
    if status is SyncStatus.GAP:
        # The snapshot is older than the buffered stream (or the buffer overflowed): ask for a newer one.
        st.gaps += 1
        st.window_flags.add(common_pb2.SEQUENCE_GAP)
        _request_resync(st, out)
    elif status is SyncStatus.CROSSED:
        _dead_letter(state, symbol, raw, BadFrame(
            "crossed_book", f"best bid >= best ask after snapshot {last_id} and its buffered diffs"), out)
        _request_resync(st, out)


def _flush(state: IngestState, now_us: int, out: IngestOutputs, *, force: bool) -> None:
    window_us = state.microbatch_ms * 1000
    for st in state.symbols.values():
        if st.pending and (force or now_us - st.window_open_us >= window_us):
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
    if not book.synced:
        flags.add(common_pb2.BOOK_RESYNCING)
    batch.quality_flags.extend(sorted(flags))
    out.emits.append(Emit(topic=Topic.TICKS, key=st.symbol, value=batch, exchange_us=exchange_us))
    st.pending = []
    st.window_open_us = -1
    st.newest_exchange_us = st.newest_estimated_us = st.newest_local_us = 0
    st.window_flags = set()
