"""Deterministic multi-symbol market simulator that speaks Binance's wire format.

Each symbol has a latent fair price (a random walk whose drift switches between down / flat / up regimes and
whose volatility rises with activity) and an internal integer-tick order book that follows it. Order actions
arrive as a discretised Hawkes process: Poisson counts per 1 ms step whose intensity is excited by recent
actions. Spread bursts pull liquidity from the top. Every action changes the book under a new update id and
produces exactly one raw event, so ``events_per_s`` is the raw event rate:

* a market order -> a ``trade`` event (buys are likelier while the fair price is above the mid),
* a top-of-book change -> a ``bookTicker`` event,
* a deeper book change -> a ``depthUpdate`` carrying every level changed since the previous one, so update
  ids are strictly consecutive across diffs (``U == previous u + 1``); quiet books still publish every 100 ms.

Output is a pure function of the seed and of the ``advance(now_us)`` times on the 1 ms grid, and does not
depend on how time is split into calls: each random stream is consumed in the same order either way.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

RawEvent = dict[str, Any]

STEP_US = 1_000               # simulation grid; Binance event times have 1 ms resolution anyway
MAX_CATCHUP_STEPS = 2_000     # a stalled caller catches up at most 2 s; older time is skipped, not replayed
DEPTH_FLUSH_MS = 100          # pending book changes are published at least this often (Binance @100ms)

P_TRADE = 0.25                # share of actions that are market orders
P_QUOTE = 0.35                # share that change the top of the book; the rest change deeper levels
TARGET_LEVELS = 60            # per side; deeper changes mostly add below this depth and mostly cancel above it
P_ADD_THIN = 0.85
P_ADD_DEEP = 0.35
MIN_LEVELS = 8                # per side; the book is replenished below this so it never empties
MAX_LEVELS = 160              # per side; the farthest levels are dropped above this
INITIAL_LEVELS = 60
DISTANCE_ALPHA = 1.3          # Pareto tail of a resting order's distance from the best price, in level gaps:
DISTANCE_SCALE = 2.0          # most orders join the top levels, a few rest far away, as on real books
MAX_DISTANCE_GAPS = 400
SIZE_SIGMA = 0.6              # log-size spread of orders (logistic, so fatter tails than log-normal)
GAPS_PER_SIGMA = 4.0          # resting levels are about a quarter of a 1 s move apart

HAWKES_BRANCHING = 0.7        # expected child actions per action; < 1 keeps the process stationary
HAWKES_DECAY_S = 0.1          # excitation memory
MAX_INTENSITY_MULT = 25.0     # cap on intensity relative to the mean rate
REGIME_MEAN_S = 20.0          # mean duration of a drift regime
TREND_SIGMAS_PER_S = 0.4      # drift of a trending regime, in 1 s volatilities per second
BURST_HAZARD_PER_S = 0.1      # spread-burst starts per second at base activity; scales with excitation
BURST_MEAN_S = 0.3            # mean spread-burst duration
BURST_PULL_P = 0.7            # in a burst, top-of-book actions mostly pull the best level
MAX_SPREAD_GAPS = 30          # bursts stop widening beyond this many level gaps


TRADE_IDS_PER_MS = 100  # the id room per ms of session start; a symbol trades far fewer than 100 times per ms


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """Static market parameters of one simulated symbol; prices and sizes are integers of 10**-decimals."""

    symbol: str
    price: float
    tick_decimals: int
    lot_decimals: int
    typical_lots: int    # median order size, in lots
    vol_bps: float       # 1 s volatility of the fair price at base activity

    @property
    def ticks_per_unit(self) -> int:
        return int(10**self.tick_decimals)

    @property
    def level_gap(self) -> int:
        """Typical distance between resting levels in ticks: coarse books for high-priced symbols."""
        one_sigma_ticks = self.price * self.vol_bps * 1e-4 * self.ticks_per_unit
        return max(1, round(one_sigma_ticks / GAPS_PER_SIGMA))


KNOWN_SPECS: tuple[SymbolSpec, ...] = (
    SymbolSpec("BTCUSDT", 60_000.0, 2, 5, 2_000, 1.5),
    SymbolSpec("ETHUSDT", 3_000.0, 2, 4, 500, 2.0),
    SymbolSpec("SOLUSDT", 150.0, 2, 3, 2_000, 3.0),
    SymbolSpec("BNBUSDT", 550.0, 2, 3, 500, 2.0),
    SymbolSpec("XRPUSDT", 0.55, 4, 0, 500, 2.5),
)


def spec_for(symbol: str) -> SymbolSpec:
    """The known spec, or one derived deterministically from the name (crc32, not the salted ``hash``)."""
    for spec in KNOWN_SPECS:
        if spec.symbol == symbol:
            return spec
    rng = np.random.default_rng(zlib.crc32(symbol.encode()))
    price = float(10 ** rng.uniform(-1.0, 3.0))
    magnitude = math.floor(math.log10(price))
    return SymbolSpec(
        symbol=symbol,
        price=price,
        tick_decimals=min(8, max(0, 4 - magnitude)),
        lot_decimals=min(8, max(0, magnitude + 1)),
        typical_lots=int(rng.integers(50, 2_000)),
        vol_bps=float(rng.uniform(1.5, 4.0)),
    )


def _starting_at(spec: SymbolSpec, price: float | None) -> SymbolSpec:
    if price is None:
        return spec
    if not (math.isfinite(price) and price > 0):
        raise ValueError(f"{spec.symbol}: a start price must be finite and positive, not {price!r}")
    return replace(spec, price=price)


def format_scaled(value: int, decimals: int) -> str:
    """Integer units of 10**-decimals as Binance's 8-decimal string: (6173763, 2) -> "61737.63000000"."""
    whole, frac = divmod(value, 10**decimals)
    if decimals == 0:
        return f"{whole}.00000000"
    return f"{whole}.{frac:0{decimals}d}{'0' * (8 - decimals)}"


class _SymbolBook:
    """One symbol's internal book (integer ticks -> integer lots) and the changes not yet published."""

    __slots__ = (
        "ask_ticks", "asks", "bid_ticks", "bids", "dirty_asks", "dirty_bids", "first_pending", "gap",
        "last_depth_ms", "px_cache", "spec", "symbol", "trade_id", "update_id",
    )

    def __init__(self, spec: SymbolSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.gap = spec.level_gap
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bid_ticks: list[int] = []   # ascending; best bid is the last
        self.ask_ticks: list[int] = []   # ascending; best ask is the first
        self.dirty_bids: set[int] = set()
        self.dirty_asks: set[int] = set()
        self.first_pending = 0           # first update id not yet published in a depthUpdate; 0 = none
        self.last_depth_ms = 0
        self.px_cache: dict[int, str] = {}
        self.update_id = int(rng.integers(10**9, 10**10))
        self.trade_id = int(rng.integers(10**8, 10**9))
        mid = round(spec.price * spec.ticks_per_unit)
        sizes = [max(1, round(spec.typical_lots * 3 * math.exp(SIZE_SIGMA * float(z))))
                 for z in rng.logistic(size=2 * INITIAL_LEVELS)]
        steps = rng.geometric(1.0 / self.gap, size=2 * INITIAL_LEVELS).tolist()
        bid, ask = mid, mid + 1
        for i in range(INITIAL_LEVELS):
            bid -= steps[i] if i else 0
            ask += steps[INITIAL_LEVELS + i] if i else 0
            self._put(self.bids, self.bid_ticks, bid, sizes[i])
            self._put(self.asks, self.ask_ticks, ask, sizes[INITIAL_LEVELS + i])

    @property
    def mid(self) -> float:
        return (self.bid_ticks[-1] + self.ask_ticks[0]) / 2.0

    @staticmethod
    def _put(levels: dict[int, int], ticks: list[int], tick: int, lots: int) -> None:
        """Set a level without marking it dirty (initial book only)."""
        if tick not in levels:
            bisect.insort(ticks, tick)
        levels[tick] = lots

    # --- book mutation -------------------------------------------------------------------------------------

    def _begin(self) -> None:
        """Every action is one book update id, published in the next depthUpdate."""
        self.update_id += 1
        if self.first_pending == 0:
            self.first_pending = self.update_id

    def _set_bid(self, tick: int, lots: int) -> None:
        if lots <= 0:
            if self.bids.pop(tick, None) is not None:
                del self.bid_ticks[bisect.bisect_left(self.bid_ticks, tick)]
        else:
            if tick not in self.bids:
                bisect.insort(self.bid_ticks, tick)
            self.bids[tick] = lots
        self.dirty_bids.add(tick)

    def _set_ask(self, tick: int, lots: int) -> None:
        if lots <= 0:
            if self.asks.pop(tick, None) is not None:
                del self.ask_ticks[bisect.bisect_left(self.ask_ticks, tick)]
        else:
            if tick not in self.asks:
                bisect.insort(self.ask_ticks, tick)
            self.asks[tick] = lots
        self.dirty_asks.add(tick)

    def _keep_depth(self) -> None:
        """Replenish thin sides at the back and trim the far tail, so each side stays 8..160 levels deep."""
        gap = self.gap
        lots = self.spec.typical_lots * 3
        while len(self.bid_ticks) < MIN_LEVELS and self.bid_ticks[0] > gap:
            self._set_bid(self.bid_ticks[0] - gap, lots)
        while len(self.ask_ticks) < MIN_LEVELS:
            self._set_ask(self.ask_ticks[-1] + gap, lots)
        while len(self.bid_ticks) > MAX_LEVELS:
            self._set_bid(self.bid_ticks[0], 0)
        while len(self.ask_ticks) > MAX_LEVELS:
            self._set_ask(self.ask_ticks[-1], 0)

    # --- formatting ----------------------------------------------------------------------------------------

    def px(self, tick: int) -> str:
        s = self.px_cache.get(tick)
        if s is None:
            if len(self.px_cache) > 50_000:  # a long trend walks through prices; keep the cache bounded
                self.px_cache.clear()
            s = self.px_cache[tick] = format_scaled(tick, self.spec.tick_decimals)
        return s

    def qty(self, lots: int) -> str:
        return format_scaled(lots, self.spec.lot_decimals)

    # --- actions, each returning its one raw event -------------------------------------------------------------

    def trade(self, side_u: float, fair: float, lots: int, ms: int) -> RawEvent:
        """A market order against the best level; takers lean towards the fair price (informed flow)."""
        self._begin()
        buy = side_u < 0.5 + 0.4 * math.tanh((fair - self.mid) / self.gap)
        if buy:
            tick = self.ask_ticks[0]
            fill = min(lots, self.asks[tick])
            self._set_ask(tick, self.asks[tick] - fill)
        else:
            tick = self.bid_ticks[-1]
            fill = min(lots, self.bids[tick])
            self._set_bid(tick, self.bids[tick] - fill)
        self._keep_depth()
        self.trade_id += 1
        return {"e": "trade", "E": ms, "s": self.symbol, "t": self.trade_id, "p": self.px(tick),
                "q": self.qty(fill), "T": ms, "m": not buy}

    def quote(self, side_u: float, choice_u: float, aux_u: float, lots: int, *, fair: float, burst: bool) -> RawEvent:
        """Change the top: pull a quote the fair price went through, pull in a burst, improve, or resize."""
        self._begin()
        bid_side = side_u < 0.5
        best_bid, best_ask = self.bid_ticks[-1], self.ask_ticks[0]
        spread = best_ask - best_bid
        stale = best_bid >= fair if bid_side else best_ask <= fair
        if stale or (burst and choice_u < BURST_PULL_P and spread < MAX_SPREAD_GAPS * self.gap):
            if bid_side:
                self._set_bid(best_bid, 0)
            else:
                self._set_ask(best_ask, 0)
        elif not burst and spread > 1 and choice_u < 0.6 and self._improve(bid_side, aux_u, lots, fair):
            pass
        elif bid_side:
            have = self.bids[best_bid]
            self._set_bid(best_bid, have + lots if aux_u < 0.6 else max(1, have // 2))
        else:
            have = self.asks[best_ask]
            self._set_ask(best_ask, have + lots if aux_u < 0.6 else max(1, have // 2))
        self._keep_depth()
        bb, ba = self.bid_ticks[-1], self.ask_ticks[0]
        return {"u": self.update_id, "s": self.symbol, "b": self.px(bb), "B": self.qty(self.bids[bb]),
                "a": self.px(ba), "A": self.qty(self.asks[ba])}

    def _improve(self, bid_side: bool, aux_u: float, lots: int, fair: float) -> bool:
        """Quote strictly inside the spread (so the book never crosses) but not through the fair price."""
        best_bid, best_ask = self.bid_ticks[-1], self.ask_ticks[0]
        # Competing makers mostly jump to the front: improvements cluster near the opposite quote.
        inside = max(1, round((best_ask - best_bid - 1) * (1.0 - aux_u * aux_u)))
        if bid_side:
            tick = min(best_bid + inside, math.ceil(fair) - 1)
            if tick <= best_bid:
                return False
            self._set_bid(tick, lots)
        else:
            tick = max(best_ask - inside, math.floor(fair) + 1)
            if tick >= best_ask:
                return False
            self._set_ask(tick, lots)
        return True

    def depth(self, side_u: float, choice_u: float, aux_u: float, lots: int, *, dist: int, burst: bool,
              ms: int) -> RawEvent:
        """Add behind the best price at a heavy-tailed distance, or cancel a random resting level."""
        self._begin()
        bid_side = side_u < 0.5
        ticks = self.bid_ticks if bid_side else self.ask_ticks
        if choice_u < (P_ADD_THIN if len(ticks) < TARGET_LEVELS else P_ADD_DEEP):
            d = (dist + (3 if burst else 0)) * self.gap  # in a burst new liquidity rests further away
            # A thin side also grows at the back, or fine-tick books would only ever thicken their top levels.
            at_back = len(ticks) < TARGET_LEVELS // 2 and aux_u < 0.3
            if bid_side:
                tick = max(1, (self.bid_ticks[0] - self.gap if at_back else self.bid_ticks[-1]) - d)
                self._set_bid(tick, self.bids.get(tick, 0) + lots)
            else:
                tick = (self.ask_ticks[-1] + self.gap if at_back else self.ask_ticks[0]) + d
                self._set_ask(tick, self.asks.get(tick, 0) + lots)
        else:
            tick = ticks[int(aux_u * len(ticks))]
            remaining = 0 if aux_u < 0.8 else (self.bids if bid_side else self.asks)[tick] // 2
            if bid_side:
                self._set_bid(tick, remaining)
            else:
                self._set_ask(tick, remaining)
        self._keep_depth()
        return self.publish_depth(ms)

    def publish_depth(self, ms: int) -> RawEvent:
        """The depthUpdate for every update id since the last one: bids best first, asks best first."""
        bids = [[self.px(t), self.qty(self.bids.get(t, 0))] for t in sorted(self.dirty_bids, reverse=True)]
        asks = [[self.px(t), self.qty(self.asks.get(t, 0))] for t in sorted(self.dirty_asks)]
        event = {"e": "depthUpdate", "E": ms, "s": self.symbol, "U": self.first_pending, "u": self.update_id,
                 "b": bids, "a": asks}
        self.dirty_bids.clear()
        self.dirty_asks.clear()
        self.first_pending = 0
        self.last_depth_ms = ms
        return event

    def snapshot(self) -> RawEvent:
        """REST ``/api/v3/depth`` shape; consistent with every update id up to ``lastUpdateId``."""
        return {
            "lastUpdateId": self.update_id,
            "bids": [[self.px(t), self.qty(self.bids[t])] for t in reversed(self.bid_ticks)],
            "asks": [[self.px(t), self.qty(self.asks[t])] for t in self.ask_ticks],
        }


@dataclass(slots=True)
class _Plan:
    """Per step and symbol: action count, fair price (ticks) and spread-burst state."""

    counts: list[list[int]]
    fair: list[list[float]]
    burst: list[list[bool]]


class MarketSimulator:
    """Seeded simulator of ``symbols`` producing about ``events_per_s`` raw Binance events per second in total."""

    def __init__(self, symbols: Sequence[str], events_per_s: float, seed: int,
                 start_prices: Mapping[str, float] | None = None) -> None:
        """``start_prices``: where a symbol's book starts instead of its spec's price, e.g. the last session's
        mids (``mid_prices``), so a restarted simulator carries on from where the last one stopped."""
        if not symbols:
            raise ValueError("the simulator needs at least one symbol")
        if len(set(symbols)) != len(symbols):
            raise ValueError("duplicate symbols")
        if events_per_s <= 0:
            raise ValueError("events_per_s must be positive")
        self.symbols: tuple[str, ...] = tuple(symbols)
        self.events_per_s = float(events_per_s)
        # Independent streams per purpose, so the draw order of each is fixed whatever the call pattern.
        init_ss, counts_ss, regime_ss, action_ss = np.random.SeedSequence(seed).spawn(4)
        self._rng_counts = np.random.default_rng(counts_ss)
        self._rng_regime = np.random.default_rng(regime_ss)
        self._rng_actions = np.random.default_rng(action_ss)
        init_rngs = [np.random.default_rng(s) for s in init_ss.spawn(len(self.symbols))]
        starts = start_prices or {}
        self._books = [_SymbolBook(_starting_at(spec_for(sym), starts.get(sym)), rng)
                       for sym, rng in zip(self.symbols, init_rngs, strict=True)]
        n = len(self.symbols)
        dt = STEP_US / 1e6
        self._rate = self.events_per_s / n                                  # mean actions/s per symbol
        self._mu = np.full(n, self._rate * (1.0 - HAWKES_BRANCHING))        # baseline intensity, actions/s
        self._decay = math.exp(-dt / HAWKES_DECAY_S)
        self._jump = HAWKES_BRANCHING * (1.0 - self._decay) / dt            # so each action has 0.7 children
        # Self-excited intensity (actions/s), started at its stationary mean so the rate is right from the start.
        self._excitation = np.full(n, self._rate * HAWKES_BRANCHING)
        self._typical = np.array([b.spec.typical_lots for b in self._books], dtype=np.float64)
        self._vol = [b.spec.vol_bps * 1e-4 for b in self._books]           # per sqrt(s), as a log return
        self._fair = [b.mid for b in self._books]                           # latent fair price, in ticks
        self._drift = [0] * n                                               # -1 down, 0 flat, +1 up
        self._burst_steps = [0] * n                                         # remaining spread-burst steps
        self._origin_us: int | None = None
        self._steps_done = 0

    def mid_prices(self) -> dict[str, float]:
        """Each symbol's mid price now, in price units: what the next session can start from."""
        return {b.symbol: b.mid / b.spec.ticks_per_unit for b in self._books}

    def snapshots(self) -> dict[str, RawEvent]:
        """REST-style depth snapshot of every symbol, consistent with the update ids emitted so far."""
        return {b.symbol: b.snapshot() for b in self._books}

    def snapshot(self, symbol: str) -> RawEvent:
        """One symbol's snapshot, e.g. to answer a resync request."""
        return self._books[self.symbols.index(symbol)].snapshot()

    def advance(self, now_us: int) -> list[tuple[str, RawEvent]]:
        """Every event due on the 1 ms grid up to ``now_us``, oldest first, stamped with its grid time (ms).

        The first call only anchors the grid. A caller that falls behind gets the backlog in one bigger list
        (bounded by ``MAX_CATCHUP_STEPS``), with event times in the past, so its lag shows in the latency.
        """
        if self._origin_us is None:
            self._origin_us = now_us
            for book in self._books:
                # Trade ids grow across sessions, as an exchange's do: a restarted simulator (same seed) must
                # not reuse the ids of the last one, or a warehouse count by trade id would merge them.
                book.trade_id += (now_us // 1000) * TRADE_IDS_PER_MS
            return []
        due = (now_us - self._origin_us) // STEP_US
        n_steps = due - self._steps_done
        if n_steps <= 0:
            return []
        if n_steps > MAX_CATCHUP_STEPS:
            self._steps_done = due - MAX_CATCHUP_STEPS
            n_steps = MAX_CATCHUP_STEPS
        first_step = self._steps_done
        self._steps_done = due
        return self._generate(first_step, self._plan(n_steps))

    def _plan(self, n_steps: int) -> _Plan:
        """Hawkes action counts, drift regimes, fair-price moves and spread bursts for the next steps."""
        n = len(self.symbols)
        dt = STEP_US / 1e6
        sqrt_dt = math.sqrt(dt)
        uniforms = self._rng_regime.random((n_steps, n, 6)).tolist()
        cap = MAX_INTENSITY_MULT * self._rate
        plan = _Plan([], [], [])
        excitation = self._excitation
        drift, bursts, fair, vol = self._drift, self._burst_steps, self._fair, self._vol
        for k in range(n_steps):
            intensity = np.minimum(self._mu + excitation, cap)
            activity = (intensity / self._rate).tolist()
            for s in range(n):
                u_switch, u_regime, u_burst, u_len, u_z1, u_z2 = uniforms[k][s]
                if u_switch < dt / REGIME_MEAN_S:
                    drift[s] = int(u_regime * 3.0) - 1
                if bursts[s] > 0:
                    bursts[s] -= 1
                elif u_burst < BURST_HAZARD_PER_S * dt * activity[s]:
                    # Bursts are likelier when activity is excited, as liquidity is pulled in fast markets.
                    bursts[s] = 1 + int(-math.log1p(-u_len) * BURST_MEAN_S / dt)
                # Box-Muller from two uniforms keeps one fixed draw count per step; variance scales with activity.
                z = math.sqrt(-2.0 * math.log1p(-u_z1)) * math.cos(2.0 * math.pi * u_z2)
                sigma = vol[s] * math.sqrt(min(activity[s], 10.0))
                fair[s] *= math.exp(drift[s] * TREND_SIGMAS_PER_S * vol[s] * dt + sigma * sqrt_dt * z)
            step_counts = self._rng_counts.poisson(intensity * dt)
            excitation = excitation * self._decay + self._jump * step_counts
            plan.counts.append(step_counts.tolist())
            plan.fair.append(list(fair))
            plan.burst.append([b > 0 for b in bursts])
        self._excitation = excitation
        return plan

    def _generate(self, first_step: int, plan: _Plan) -> list[tuple[str, RawEvent]]:
        n = len(self.symbols)
        counts = plan.counts
        total = sum(map(sum, counts))
        # One row of uniforms per action, drawn in one call and transformed vectorised.
        u = self._rng_actions.random((total, 5))
        symbol_of_row = np.repeat(np.tile(np.arange(n), len(counts)), np.asarray(counts, dtype=np.int64).ravel())
        with np.errstate(divide="ignore"):
            logit = np.log(u[:, 4]) - np.log1p(-u[:, 4])
        lots = np.maximum(1.0, np.rint(self._typical[symbol_of_row] * np.exp(SIZE_SIGMA * logit))).astype(np.int64)
        pareto = np.power(1.0 - u[:, 3], -1.0 / DISTANCE_ALPHA) - 1.0
        dist = np.minimum(np.floor(DISTANCE_SCALE * pareto), MAX_DISTANCE_GAPS).astype(np.int64)
        kind_u, side_u, choice_u, aux_u = (u[:, i].tolist() for i in range(4))
        lots_l, dist_l = lots.tolist(), dist.tolist()

        assert self._origin_us is not None
        origin = self._origin_us
        books = self._books
        out: list[tuple[str, RawEvent]] = []
        append = out.append
        row = 0
        for k, step_counts in enumerate(counts):
            ms = (origin + (first_step + k + 1) * STEP_US) // 1000
            step_fair, step_burst = plan.fair[k], plan.burst[k]
            for s in range(n):
                book = books[s]
                for _ in range(step_counts[s]):
                    kind = kind_u[row]
                    if kind < P_TRADE:
                        event = book.trade(side_u[row], step_fair[s], lots_l[row], ms)
                    elif kind < P_TRADE + P_QUOTE:
                        event = book.quote(side_u[row], choice_u[row], aux_u[row], lots_l[row],
                                           fair=step_fair[s], burst=step_burst[s])
                    else:
                        event = book.depth(side_u[row], choice_u[row], aux_u[row], lots_l[row],
                                           dist=dist_l[row], burst=step_burst[s], ms=ms)
                    append((book.symbol, event))
                    row += 1
                if book.first_pending and ms - book.last_depth_ms >= DEPTH_FLUSH_MS:
                    append((book.symbol, book.publish_depth(ms)))
        return out
