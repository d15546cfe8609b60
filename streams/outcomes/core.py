"""Outcomes core: signals.v1 + ticks.v1 -> outcomes.v1, each LONG/SHORT followed to its own triple barrier.

Pure: no I/O; time is event time (the ticks' exchange times), so live, replay and backtest resolve the same
signal the same way. Rules:

* **Entry** at the signal's price (the mid at decision time) and its event time. The target and stop come from
  the signal's barriers: LONG target ``price x (1 + U)``, stop ``price x (1 - D)``; SHORT target
  ``price x (1 - D)``, stop ``price x (1 + U)`` (U, D = ``upper_barrier_bps``, ``lower_barrier_bps`` / 1e4).
* **Path**: every trade of the signal's instrument after the entry, in order (the same prices the training
  labels use). The first trade at or beyond the target is a WIN (``HIT_TARGET``), at or beyond the stop a LOSS
  (``HIT_STOP``), exiting at that trade's price. A position whose horizon ends first is a TIMEOUT at the last
  trade before the deadline; the deadline passes when any event of the instrument, or the newest event of any
  instrument plus ``stale_grace_us``, is later.
* **Costs**: ``realized_cost_bps`` = round-trip fees + the half spread of the book seen at entry + at exit (the
  latest book top of the instrument, from snapshots and bookTickers); ``net_return_bps`` = realized return
  minus realized cost. The signal's ``estimated_cost_bps`` is kept beside it, so cost error is measurable.
* **Paper book**: one position of ``position_fraction`` of equity per signal; equity, PnL per symbol and the risk
  state (``risk.py``) move with every outcome.

Re-reads are idempotent (the state survives a restart as a snapshot, see ``stage.py``): a signal already open or
resolved is skipped, and so is a tick batch whose sequence is not above the instrument's newest applied one
(ingest numbers its batches per instrument, increasing across sessions).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from google.protobuf.message import Message

from schemas import SCHEMA_VERSION, market_pb2, outcome_pb2, signal_pb2
from streams.outcomes import risk
from streams.outcomes.quality import LiveQuality, Sample, adapt
from streams.runtime.clock import Clock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.instrument import key_of
from streams.runtime.topics import Topic

LONG: Final = signal_pb2.LONG
SHORT: Final = signal_pb2.SHORT
RESOLVED_MEMORY: Final = 100_000          # signal ids remembered after resolution, against redelivery
RECENT_OUTCOMES: Final = 2_000            # kept for re-emission after a restart (the sink collapses duplicates)

InstrumentKey = tuple[int, str]           # (Venue, symbol): spot and USD-M BTCUSDT are different instruments


@dataclass(frozen=True, slots=True)
class OutcomesConfig:
    fee_bps: float = 4.0                  # per side, for a venue not in round_trip_fees; round trip pays it twice
    # Round-trip fees per Venue number: the stage fills them from the decision stage's cost model, so realized
    # cost uses the very fees the estimate it is compared with used.
    round_trip_fees: Mapping[int, float] = field(default_factory=dict)
    stale_grace_us: int = 60_000_000      # a quiet instrument's positions time out this long after the deadline
    max_open_per_instrument: int = 1_000
    policy: risk.RiskPolicy = field(default_factory=risk.RiskPolicy)
    # Recent trades kept per instrument, so a signal that arrives after trades past its entry (it went through
    # three more stages than the ticks did; in a fast replay, minutes of event time) is still resolved on its
    # first crossing: bounded by age (event time) and count.
    trail_us: int = 900_000_000
    trail_max: int = 500_000


@dataclass(slots=True)
class OpenPosition:
    signal_id: str
    venue: int
    symbol: str
    decision: int
    tier: int
    horizon_min: int
    entry_price: float
    entry_us: int
    deadline_us: int
    target_price: float
    stop_price: float
    upper_bps: float
    lower_bps: float
    estimated_cost_bps: float
    entry_half_spread_bps: float
    last_price: float
    last_us: int
    mfe_bps: float = 0.0
    mae_bps: float = 0.0
    p_up: float = 0.5             # the signal's probability, for live calibration
    model_version: str = ""

    def direction(self) -> float:
        return 1.0 if self.decision == LONG else -1.0

    def return_bps(self, price: float) -> float:
        return self.direction() * (price / self.entry_price - 1.0) * 1e4


@dataclass(slots=True)
class BookTop:
    bid: float = 0.0
    ask: float = 0.0

    def half_spread_bps(self) -> float:
        if self.bid <= 0 or self.ask <= 0 or self.ask < self.bid:
            return 0.0
        mid = (self.bid + self.ask) / 2.0
        return (self.ask - self.bid) / 2.0 / mid * 1e4


@dataclass(slots=True)
class OutcomesState:
    config: OutcomesConfig = field(default_factory=OutcomesConfig)
    open: dict[InstrumentKey, list[OpenPosition]] = field(default_factory=dict)
    tops: dict[InstrumentKey, BookTop] = field(default_factory=dict)
    newest_event_us: dict[InstrumentKey, int] = field(default_factory=dict)
    trail: dict[InstrumentKey, deque[tuple[int, float]]] = field(default_factory=dict)  # not in the snapshot
    last_sequence: dict[InstrumentKey, int] = field(default_factory=dict)  # of the newest tick batch applied
    watermark_us: int = 0                 # newest event time of any instrument
    resolved: OrderedDict[str, None] = field(default_factory=OrderedDict)
    recent: list[bytes] = field(default_factory=list)   # serialized recent outcomes, newest last
    replay_on_start: list[bytes] = field(default_factory=list)
    risk: risk.RiskState = field(default_factory=risk.RiskState)
    pnl_bps_by_symbol: dict[str, float] = field(default_factory=dict)
    # Risk transitions not yet written to the audit log by the stage's flush: (from, to, at_us, reason).
    transitions: list[tuple[str, str, int, str]] = field(default_factory=list)
    quality: LiveQuality = field(default_factory=LiveQuality)
    held_out_ece_pp: dict[str, float] = field(default_factory=dict)  # per model version, set by the stage
    # Quality adaptations not yet audited: (action, model_version, at_us, reason).
    quality_events: list[tuple[str, str, int, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def trim(self) -> None:
        """Bound the memory of resolved ids and recent outcomes. Done once a batch is through, never midway, so a
        batch that fails only ever appended to them (what ``checkpoint`` relies on)."""
        while len(self.resolved) > RESOLVED_MEMORY:
            self.resolved.popitem(last=False)
        del self.recent[:-RECENT_OUTCOMES]

    def checkpoint(self) -> Callable[[], None]:
        """Capture what a batch may change and return the function that puts it back. Cheap on every batch: the
        two large memories (resolved ids, recent outcomes) are only appended to within a batch, so their lengths
        suffice; everything else is small and copied. The trade trail is not put back (copying it per batch would
        cost more than the batch): a retried batch's trades are in it twice, and a duplicate trade crosses a
        barrier where its original did."""
        scalars = (self.watermark_us, self.risk, self.replay_on_start)
        containers = (dict(self.newest_event_us), dict(self.last_sequence), dict(self.pnl_bps_by_symbol),
                      list(self.transitions), list(self.quality_events), dict(self.counts), dict(self.held_out_ece_pp))
        open_ = {key: [replace(p) for p in positions] for key, positions in self.open.items()}
        tops = {key: replace(top) for key, top in self.tops.items()}
        quality = replace(self.quality, samples=deque(self.quality.samples), flagged=set(self.quality.flagged))
        resolved_len, recent_len = len(self.resolved), len(self.recent)

        def restore() -> None:
            self.watermark_us, self.risk, self.replay_on_start = scalars
            (self.newest_event_us, self.last_sequence, self.pnl_bps_by_symbol, self.transitions, self.quality_events,
             self.counts, self.held_out_ece_pp) = (dict(containers[0]), dict(containers[1]), dict(containers[2]),
                                                   list(containers[3]), list(containers[4]), dict(containers[5]),
                                                   dict(containers[6]))
            self.open = {key: [replace(p) for p in positions] for key, positions in open_.items()}
            self.tops = {key: replace(top) for key, top in tops.items()}
            self.quality = replace(quality, samples=deque(quality.samples), flagged=set(quality.flagged))
            while len(self.resolved) > resolved_len:
                self.resolved.popitem(last=True)
            del self.recent[recent_len:]

        return restore

    def open_count(self) -> int:
        return sum(len(p) for p in self.open.values())

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n


def instrument(venue: int, symbol: str) -> InstrumentKey:
    return (int(venue), symbol)


def open_position(signal: signal_pb2.Signal, top: BookTop | None) -> OpenPosition:
    up, down = signal.upper_barrier_bps / 1e4, signal.lower_barrier_bps / 1e4
    price = signal.price
    long = signal.decision == LONG
    return OpenPosition(
        signal_id=signal.signal_id, venue=int(signal.venue), symbol=signal.symbol, decision=int(signal.decision),
        tier=int(signal.tier), horizon_min=signal.horizon_min, entry_price=price, entry_us=signal.ts.exchange_us,
        deadline_us=signal.ts.exchange_us + signal.horizon_min * 60_000_000,
        target_price=price * (1 + up) if long else price * (1 - down),
        stop_price=price * (1 - down) if long else price * (1 + up),
        upper_bps=signal.upper_barrier_bps, lower_bps=signal.lower_barrier_bps,
        estimated_cost_bps=signal.estimated_cost_bps,
        entry_half_spread_bps=top.half_spread_bps() if top is not None else 0.0,
        last_price=price, last_us=signal.ts.exchange_us, p_up=signal.p_up, model_version=signal.model_version,
    )


def signal_problem(signal: signal_pb2.Signal) -> tuple[str, str] | None:
    if not (math.isfinite(signal.price) and signal.price > 0):
        return "invalid_price", f"price is {signal.price!r}: must be finite and > 0"
    for name in ("upper_barrier_bps", "lower_barrier_bps"):
        value = getattr(signal, name)
        if not (math.isfinite(value) and 0 < value < 10_000):
            return "invalid_barrier", f"{name} is {value!r}: an actionable signal needs a barrier in (0, 10000) bps"
    if signal.horizon_min <= 0:
        return "invalid_horizon", "horizon_min must be > 0"
    if signal.ts.exchange_us <= 0:
        return "invalid_timestamp", "ts.exchange_us must be > 0"
    return None


def add_signal(state: OutcomesState, record: InRecord[Any], out: Outputs) -> None:
    signal: signal_pb2.Signal = record.value
    if signal.decision not in (LONG, SHORT):
        state.count("waits_ignored")
        return  # a WAIT opens no position
    if signal.signal_id in state.resolved:
        state.count("duplicates")
        return
    key = instrument(signal.venue, signal.symbol)
    positions = state.open.get(key, [])
    if any(p.signal_id == signal.signal_id for p in positions):
        state.count("duplicates")
        return
    problem = signal_problem(signal)
    if problem is not None:
        out.rejects.append(Reject(record, *problem))
        return
    if len(positions) >= state.config.max_open_per_instrument:
        out.rejects.append(Reject(record, "too_many_open", f"{signal.symbol} already follows "
                                  f"{len(positions)} open signals (max {state.config.max_open_per_instrument})"))
        return
    pos = open_position(signal, state.tops.get(key))
    state.count("opened")
    if state.newest_event_us.get(key, 0) > pos.entry_us and not _catch_up(state, key, pos, out):
        return  # resolved on trades already seen
    state.open[key] = [*positions, pos]


def _catch_up(state: OutcomesState, key: InstrumentKey, pos: OpenPosition, out: Outputs) -> bool:
    """Walk the trail's trades after the entry for a late signal; True if it is still open after them."""
    top = state.tops.get(key, BookTop())
    for at_us, price in state.trail.get(key, ()):
        if at_us > pos.entry_us and not _step(state, pos, at_us, price, top, out):
            state.count("resolved_on_trail")
            return False
    return True


def apply_ticks(state: OutcomesState, batch: market_pb2.TickBatch, out: Outputs) -> None:
    key = instrument(batch.venue, batch.symbol)
    if batch.sequence and batch.sequence <= state.last_sequence.get(key, 0):
        state.count("ticks_reread")
        return  # a batch this state has already applied (a re-read after a restart)
    if batch.sequence:
        state.last_sequence[key] = batch.sequence
    seen_us = state.newest_event_us.get(key, 0)
    top = state.tops.setdefault(key, BookTop())
    for event in batch.events:
        kind = event.WhichOneof("event")
        if kind == "trade":
            at_us, price = event.trade.exchange_us, event.trade.price
            _remember(state, key, at_us, price)
        elif kind == "book":
            at_us, price = event.book.exchange_us, 0.0
            if event.book.bids and event.book.asks:
                top.bid, top.ask = event.book.bids[0].price, event.book.asks[0].price
        elif kind == "book_ticker":
            at_us, price = event.book_ticker.exchange_us, 0.0
            top.bid, top.ask = event.book_ticker.bid_price, event.book_ticker.ask_price
        else:
            continue
        seen_us = max(seen_us, at_us)
        positions = state.open.get(key)
        if positions:
            _advance(state, key, positions, at_us, price, top, out)
    state.newest_event_us[key] = seen_us
    state.watermark_us = max(state.watermark_us, seen_us)


def _remember(state: OutcomesState, key: InstrumentKey, at_us: int, price: float) -> None:
    trail = state.trail.get(key)
    if trail is None:
        trail = state.trail[key] = deque(maxlen=state.config.trail_max)
    trail.append((at_us, price))
    while trail and at_us - trail[0][0] > state.config.trail_us:
        trail.popleft()


def _advance(state: OutcomesState, key: InstrumentKey, positions: list[OpenPosition], at_us: int, price: float,
             top: BookTop, out: Outputs) -> None:
    _set_open(state, key, [pos for pos in positions if _step(state, pos, at_us, price, top, out)])


def _step(state: OutcomesState, pos: OpenPosition, at_us: int, price: float, top: BookTop, out: Outputs) -> bool:
    """One event of the instrument for one position; True if it is still open after it."""
    if at_us <= pos.entry_us:
        return True
    if at_us >= pos.deadline_us:
        resolve(state, pos, outcome_pb2.TIMEOUT, pos.last_price, pos.deadline_us, top, out)
        return False
    if price <= 0:
        return True
    r = pos.return_bps(price)
    pos.mfe_bps, pos.mae_bps = max(pos.mfe_bps, r), min(pos.mae_bps, r)
    pos.last_price, pos.last_us = price, at_us
    long = pos.decision == LONG
    if (price >= pos.target_price) if long else (price <= pos.target_price):
        resolve(state, pos, outcome_pb2.HIT_TARGET, price, at_us, top, out)
        return False
    if (price <= pos.stop_price) if long else (price >= pos.stop_price):
        resolve(state, pos, outcome_pb2.HIT_STOP, price, at_us, top, out)
        return False
    return True


def _set_open(state: OutcomesState, key: InstrumentKey, positions: list[OpenPosition]) -> None:
    if positions:
        state.open[key] = positions
    else:
        state.open.pop(key, None)


def expire_stale(state: OutcomesState, out: Outputs) -> None:
    """Time out positions of instruments that went quiet: the market as a whole has moved past their deadline."""
    horizon_us = state.watermark_us - state.config.stale_grace_us
    for key, positions in list(state.open.items()):
        if not any(p.deadline_us <= horizon_us for p in positions):
            continue
        top = state.tops.get(key, BookTop())
        keep = []
        for pos in positions:
            if pos.deadline_us <= horizon_us:
                resolve(state, pos, outcome_pb2.TIMEOUT, pos.last_price, pos.deadline_us, top, out)
                state.count("stale_timeouts")
            else:
                keep.append(pos)
        _set_open(state, key, keep)


def resolve(state: OutcomesState, pos: OpenPosition, label: int, exit_price: float, exit_us: int, top: BookTop,
            out: Outputs) -> None:
    realized = pos.return_bps(exit_price)
    fee = state.config.round_trip_fees.get(pos.venue, 2.0 * state.config.fee_bps)
    realized_cost = fee + pos.entry_half_spread_bps + top.half_spread_bps()
    net = realized - realized_cost
    before = state.risk.level
    state.risk = risk.after_outcome(state.risk, net, exit_us, state.config.policy)
    if state.risk.level != before:
        state.transitions.append((before.name, state.risk.level.name, exit_us, state.risk.reason))
    state.pnl_bps_by_symbol[pos.symbol] = state.pnl_bps_by_symbol.get(pos.symbol, 0.0) + net
    long = pos.decision == LONG
    state.quality.add(Sample(p_side=pos.p_up if long else 1.0 - pos.p_up, won=label == outcome_pb2.HIT_TARGET,
                             net_bps=net, estimated_cost_bps=pos.estimated_cost_bps,
                             realized_cost_bps=realized_cost, model_version=pos.model_version))
    outcome = outcome_pb2.Outcome(
        schema_version=SCHEMA_VERSION, outcome_id=pos.signal_id, signal_id=pos.signal_id, venue=pos.venue,  # type: ignore[arg-type]  # a Venue number
        symbol=pos.symbol, decision=pos.decision, tier=pos.tier, horizon_min=pos.horizon_min,  # type: ignore[arg-type]  # enum numbers
        label=label, entry_price=pos.entry_price, exit_price=exit_price,  # type: ignore[arg-type]  # an OutcomeLabel
        realized_return_bps=realized, net_return_bps=net, max_favourable_bps=max(pos.mfe_bps, realized),
        max_adverse_bps=min(pos.mae_bps, realized), entry_us=pos.entry_us, exit_us=exit_us,
        time_to_barrier_us=exit_us - pos.entry_us, estimated_cost_bps=pos.estimated_cost_bps,
        realized_cost_bps=realized_cost, upper_barrier_bps=pos.upper_bps, lower_barrier_bps=pos.lower_bps,
        paper_equity=state.risk.equity, risk_state=state.risk.level.name,
    )
    outcome.ts.exchange_us = exit_us
    out.emits.append(Emit(Topic.OUTCOMES, key_of(outcome), outcome, exit_us))
    state.resolved[pos.signal_id] = None  # bounded at the end of ``process`` (``trim``)
    state.recent.append(outcome.SerializeToString())
    state.count(outcome_pb2.OutcomeLabel.Name(label))


def process(batch: Sequence[InRecord[Message]], state: OutcomesState, clock: Clock) -> Outputs:
    out = Outputs()
    if state.replay_on_start:
        # Outcomes resolved before a restart may not have been acknowledged: send them again (same ids).
        for raw in state.replay_on_start:
            outcome = outcome_pb2.Outcome.FromString(raw)
            out.emits.append(Emit(Topic.OUTCOMES, key_of(outcome), outcome, outcome.exit_us))
        state.replay_on_start = []
    for record in batch:
        value = record.value
        if isinstance(value, signal_pb2.Signal):
            add_signal(state, record, out)
        elif isinstance(value, market_pb2.TickBatch):
            apply_ticks(state, value, out)
        else:
            out.rejects.append(Reject(record, "unexpected_type", f"outcomes cannot use {type(value).__name__}"))
    expire_stale(state, out)
    if state.quality.since_adapt:
        model = state.quality.samples[-1].model_version if state.quality.samples else ""
        for action, reason in adapt(state.quality, state.held_out_ece_pp.get(model, math.nan)):
            state.quality_events.append((action, model, state.watermark_us, reason))
    before = state.risk.level
    state.risk = risk.after_time(state.risk, state.watermark_us, state.config.policy)
    if state.risk.level != before:
        state.transitions.append((before.name, state.risk.level.name, state.watermark_us, state.risk.reason))
    state.trim()
    return out
