"""The backtest: recorded market data through the live pipeline's own cores, orders through the matching engine.

Nothing here decides, prices or manages risk by itself; it wires the stages' cores as the stages run them:

* **features**: the features stage's batch driver, ``streams.features.batch`` (``read_klines`` /
  ``compute_klines_frame`` for 1-minute klines; ``capture_batches`` -- the ingest core replaying a capture exactly
  as the replay source does -- then the features core ``process`` for tick/depth captures). Kline rows become
  ``FeatureVector``s through the features core's ``build_vector``.
* **inference**: the infer core ``streams.infer.core.process`` with the model from ``streams.infer.model.load_model``
  (its ``feature_index`` mapping, ONNX graph and calibration table).
* **decisions**: the decision core ``streams.decision.core.process`` on a ``DecisionState.from_settings``, driven
  by a ``ManualClock`` at event time, with ``state.risk`` set from the backtest's risk state before every call,
  as the decision stage sets it from Redis.
* **risk**: ``streams.outcomes.risk`` (``after_outcome`` per closed trade, ``after_time`` on the clock) with the
  outcomes stage's ``RiskPolicy`` (``streams.outcomes.stage.config_from_settings``); positions take their target,
  stop and deadline from the outcomes core's ``open_position`` (LONG target price x (1 + U), stop price x (1 - D);
  SHORT mirrored).

Every stage stamp of a message (features_us, infer_us, decision_us) is its event time: in event time the
pipeline is instantaneous; the time an order takes to reach the exchange is the latency model's (``wheel.py``).
Klines carry no book, so a kline vector's ``spread_bps`` (NaN from the driver) is the bar fill model's assumed
spread (``BacktestConfig.kline_spread_bps``), which the decision core needs to price a signal; it is not an input
of a klines model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, market_pb2, prediction_pb2, signal_pb2
from services.backtest import matching as mt
from services.backtest.wheel import DEFAULT_LATENCY, LatencySampler, TimingWheel, parse_latency
from streams.decision import core as decision_core
from streams.decision.core import DecisionState
from streams.features import definitions as d
from streams.features.core import FeatureState, VectorRecord, build_vector
from streams.features.core import process as features_process
from streams.infer import core as infer_core
from streams.infer.model import Model, load_model
from streams.outcomes import risk
from streams.outcomes.core import open_position
from streams.outcomes.stage import config_from_settings
from streams.runtime import validate as v
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.runtime.settings import Settings

log = logging.getLogger("surge.backtest")

MINUTE_US = 60_000_000
INFER_CHUNK = 4096          # kline vectors per infer core call (the stage flushes 32; the result is the same)
TICK_CHUNK = 256            # TickBatches per features core call (a consumed batch of the stage holds up to 500)
Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    data: tuple[Path, ...]
    model_dir: Path
    mode: str = "conservative"
    latency: str = DEFAULT_LATENCY
    start_us: int | None = None     # decisions from this event time on (features warm up before it)
    end_us: int | None = None       # ... and before this one
    seed: int = 7
    capital: float = 100_000.0
    kline_spread_bps: float = 1.0   # klines: assumed full spread (bps) of the bar fill model
    venue: str | None = None        # spot | usdm; default: from the file names (klines) or detected (captures)
    use_risk: bool = True           # False: the decision core always sees NORMAL (for parity checks)
    slippage_bps: float | None = None  # per-side slippage instead of the cost model's quantile of the mode
    workers: int = 1                # klines: processes for the features (per symbol) and the inference (parallel.py)


# --- trades and the book-keeping -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Position:
    signal: signal_pb2.Signal
    side: int                       # BUY for a LONG
    want_qty: float
    target: float
    stop: float
    deadline_us: int
    risk_level: str
    sent_us: int = 0
    latency_us: int = 0
    qty: float = 0.0                # filled entry quantity
    entry_value: float = 0.0
    entry_fee: float = 0.0
    entry_us: int = 0
    entry_levels: int = 0
    exit_qty: float = 0.0
    exit_value: float = 0.0
    exit_fee: float = 0.0
    exit_us: int = 0
    exit_reason: str = ""
    exit_reference: float = 0.0     # the price the exit was meant at (stop, target, or the touch at timeout)
    exiting: bool = False
    entry_done: bool = False
    closed: bool = False
    limit: mt.RestingLimit | None = None
    mfe_bps: float = 0.0
    mae_bps: float = 0.0

    @property
    def open_qty(self) -> float:
        return self.qty - self.exit_qty

    @property
    def entry_price(self) -> float:
        return self.entry_value / self.qty if self.qty > 0 else math.nan

    @property
    def exit_price(self) -> float:
        return self.exit_value / self.exit_qty if self.exit_qty > 0 else math.nan


@dataclass(slots=True)
class Book:
    """Cash, positions and the risk state machine of one backtest."""

    capital: float
    policy: risk.RiskPolicy
    use_risk: bool
    cash: float = 0.0
    positions: list[Position] = field(default_factory=list)
    closed: list[Position] = field(default_factory=list)
    unfilled: list[Position] = field(default_factory=list)
    risk_state: risk.RiskState = field(default_factory=risk.RiskState)
    transitions: list[tuple[str, str, int, str]] = field(default_factory=list)
    equity_t: list[int] = field(default_factory=list)
    equity_v: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cash = self.capital

    def realized_equity(self) -> float:
        return self.cash + sum(p.side * p.open_qty * p.entry_price for p in self.positions if p.open_qty > 0)

    def mark(self, t_us: int, price_of: Callable[[str], float]) -> None:
        value = self.cash
        for p in self.positions:
            if p.open_qty > 0:
                px = price_of(p.signal.symbol)
                value += p.side * p.open_qty * (px if px > 0 else p.entry_price)
        self.equity_t.append(t_us)
        self.equity_v.append(value)

    def on_entry(self, pos: Position, fill: mt.Fill) -> None:
        if pos.qty == 0:
            pos.entry_us = fill.t_us
        pos.qty += fill.qty
        pos.entry_value += fill.price * fill.qty
        pos.entry_fee += fill.fee
        pos.entry_levels = max(pos.entry_levels, fill.levels)
        self.cash -= pos.side * fill.price * fill.qty + fill.fee

    def on_exit(self, pos: Position, fill: mt.Fill) -> None:
        take = min(fill.qty, pos.open_qty)
        pos.exit_qty += take
        pos.exit_value += fill.price * take
        pos.exit_fee += fill.fee * (take / fill.qty if fill.qty > 0 else 0.0)
        pos.exit_us = fill.t_us
        self.cash += pos.side * fill.price * take - fill.fee
        if pos.open_qty <= pos.qty * 1e-9:
            self._close(pos)

    def _close(self, pos: Position) -> None:
        pos.closed = True
        self.positions.remove(pos)
        self.closed.append(pos)
        notional = pos.entry_value
        pnl = pos.side * (pos.exit_value - pos.entry_value) - pos.entry_fee - pos.exit_fee
        net_bps = pnl / notional * 1e4 if notional > 0 else 0.0
        before = self.risk_state.level
        self.risk_state = risk.after_outcome(self.risk_state, net_bps, pos.exit_us, self.policy)
        if self.risk_state.level != before:
            self.transitions.append((before.name, self.risk_state.level.name, pos.exit_us, self.risk_state.reason))

    def tick_time(self, now_us: int) -> None:
        before = self.risk_state.level
        self.risk_state = risk.after_time(self.risk_state, now_us, self.policy)
        if self.risk_state.level != before:
            self.transitions.append((before.name, self.risk_state.level.name, now_us, self.risk_state.reason))

    def level(self) -> risk.RiskLevel:
        return self.risk_state.level if self.use_risk else risk.RiskLevel.NORMAL


@dataclass(frozen=True, slots=True)
class Order:
    pos: Position
    kind: str          # entry | exit
    side: int
    reason: str = ""   # exit: stop | timeout | end
    reference: float = 0.0


# --- the live cores ------------------------------------------------------------------------------------------------


class Pipeline:
    """The infer and decision cores with their states, on event-time clocks."""

    def __init__(self, settings: Settings, model: Model) -> None:
        self.settings = settings
        self.model = model
        self.infer_state = infer_core.InferState(model, bounds=v.TimeBounds.from_settings(settings))
        self.decision_state = DecisionState.from_settings(settings)
        self.clock = ManualClock(0)
        self.infer_clock = ManualClock(0)
        self.rejects: dict[str, int] = {}
        self.predictions = 0
        self.signals: list[signal_pb2.Signal] = []

    def _reject(self, kind: str) -> None:
        self.rejects[kind] = self.rejects.get(kind, 0) + 1

    def infer(self, vectors: Sequence[features_pb2.FeatureVector]) -> list[prediction_pb2.Prediction]:
        if not vectors:
            return []
        newest = max(vec.ts.exchange_us for vec in vectors)
        if newest > self.infer_clock.now_us():
            self.infer_clock.set_us(newest)
        out = infer_core.process([InRecord(vec, vec.symbol) for vec in vectors], self.infer_state, self.infer_clock)
        for rej in out.rejects:
            self._reject(f"infer:{rej.error_type}")
        preds: list[prediction_pb2.Prediction] = []
        for emit in out.emits:
            p = emit.value
            assert isinstance(p, prediction_pb2.Prediction)
            p.ts.infer_us = p.ts.exchange_us  # event-time stamps (module doc)
            preds.append(p)
        self.predictions += len(preds)
        return preds

    def decide(self, predictions: Sequence[prediction_pb2.Prediction], now_us: int,
               level: risk.RiskLevel) -> list[signal_pb2.Signal]:
        if now_us > self.clock.now_us():
            self.clock.set_us(now_us)
        self.decision_state.risk = level
        out = decision_core.process([InRecord(p, p.symbol) for p in predictions], self.decision_state, self.clock)
        for rej in out.rejects:
            self._reject(f"decision:{rej.error_type}")
        signals = [e.value for e in out.emits if isinstance(e.value, signal_pb2.Signal)]
        self.signals.extend(signals)
        return signals


# --- results -------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BacktestResult:
    config: BacktestConfig
    kind: str                         # klines | captures
    trades: pd.DataFrame
    equity: pd.DataFrame              # t_us, equity
    signals: list[signal_pb2.Signal]
    book: Book
    info: dict[str, Any]


TRADE_COLUMNS = (
    "signal_id", "venue", "symbol", "decision", "tier", "horizon_min", "p_up", "regime", "risk_level",
    "expected_return_bps", "estimated_cost_bps", "net_utility_bps", "signal_price", "signal_us", "sent_us",
    "latency_ms", "entry_us", "exit_us", "want_qty", "qty", "fill_rate", "entry_price", "exit_price",
    "entry_levels", "notional", "fees", "entry_slippage_bps", "exit_slippage_bps", "gross_pnl", "net_pnl",
    "net_bps", "exit_reason", "target_hit", "hold_s", "mfe_bps", "mae_bps",
)


def _trade_row(p: Position) -> dict[str, Any]:
    s = p.signal
    entry, exit_ = p.entry_price, p.exit_price
    gross = p.side * (p.exit_value - p.entry_value)
    fees = p.entry_fee + p.exit_fee
    net = gross - fees
    entry_slip = p.side * (entry / s.price - 1.0) * 1e4
    exit_slip = (-p.side * (exit_ / p.exit_reference - 1.0) * 1e4) if p.exit_reference > 0 else 0.0
    return {
        "signal_id": s.signal_id, "venue": common_pb2.Venue.Name(s.venue), "symbol": s.symbol,
        "decision": signal_pb2.Decision.Name(s.decision), "tier": signal_pb2.Tier.Name(s.tier),
        "horizon_min": s.horizon_min, "p_up": s.p_up, "regime": s.regime or "unknown", "risk_level": p.risk_level,
        "expected_return_bps": s.expected_return_bps, "estimated_cost_bps": s.estimated_cost_bps,
        "net_utility_bps": s.net_utility_bps, "signal_price": s.price, "signal_us": s.ts.exchange_us,
        "sent_us": p.sent_us, "latency_ms": p.latency_us / 1000.0, "entry_us": p.entry_us, "exit_us": p.exit_us,
        "want_qty": p.want_qty, "qty": p.qty, "fill_rate": p.qty / p.want_qty if p.want_qty > 0 else 0.0,
        "entry_price": entry, "exit_price": exit_, "entry_levels": p.entry_levels, "notional": p.entry_value,
        "fees": fees, "entry_slippage_bps": entry_slip, "exit_slippage_bps": exit_slip, "gross_pnl": gross,
        "net_pnl": net, "net_bps": net / p.entry_value * 1e4 if p.entry_value > 0 else 0.0,
        "exit_reason": p.exit_reason, "target_hit": p.exit_reason == "target",
        "hold_s": (p.exit_us - p.entry_us) / 1e6, "mfe_bps": p.mfe_bps, "mae_bps": p.mae_bps,
    }


def trades_frame(positions: Iterable[Position]) -> pd.DataFrame:
    rows = [_trade_row(p) for p in positions]
    return pd.DataFrame(rows, columns=list(TRADE_COLUMNS))


# --- the shared simulation -----------------------------------------------------------------------------------------


class Simulation:
    """Orders from signals, delayed on the timing wheel, executed by a fill function of the market kind."""

    def __init__(self, cfg: BacktestConfig, settings: Settings, pipeline: Pipeline, venue: str) -> None:
        self.cfg = cfg
        self.settings = settings
        self.pipeline = pipeline
        self.venue = venue
        self.mode = mt.mode_of(cfg.mode, quantile=settings.cost_quantile,
                               stressed_quantile=settings.cost_stressed_quantile)
        self.fees = (mt.Fees(settings.fee_usdm_taker_bps, settings.fee_usdm_maker_bps) if venue == "usdm"
                     else mt.Fees(settings.fee_spot_taker_bps, settings.fee_spot_maker_bps))
        self.book = Book(cfg.capital, config_from_settings(settings).policy, cfg.use_risk)
        self.wheels: dict[str, TimingWheel[Order]] = {}   # one per symbol: an order meets its own market
        self.latency: LatencySampler = parse_latency(cfg.latency).sampler(cfg.seed)
        self._slippage: dict[str, float] = {}
        self.events = 0

    def slippage_bps(self, regime: str) -> float:
        """One side of the cost model's round-trip beyond-touch slippage at the mode's quantile."""
        if self.cfg.slippage_bps is not None:
            return self.cfg.slippage_bps
        hit = self._slippage.get(regime)
        if hit is None:
            hit = self._slippage[regime] = quantile_slippage_bps(self.pipeline.decision_state.cost, self.venue,
                                                                 regime, self.mode.slippage_quantile) / 2.0
        return hit

    def in_window(self, t_us: int) -> bool:
        return ((self.cfg.start_us is None or t_us >= self.cfg.start_us)
                and (self.cfg.end_us is None or t_us < self.cfg.end_us))

    def on_signals(self, signals: Sequence[signal_pb2.Signal], now_us: int) -> None:
        for s in signals:
            if s.decision not in (signal_pb2.LONG, signal_pb2.SHORT):
                continue
            op = open_position(s, None)   # the outcomes core's target, stop and deadline
            notional = self.settings.risk_position_fraction * max(self.book.realized_equity(), 0.0)
            pos = Position(signal=s, side=mt.BUY if s.decision == signal_pb2.LONG else mt.SELL,
                           want_qty=notional / s.price, target=op.target_price, stop=op.stop_price,
                           deadline_us=op.deadline_us, risk_level=self.book.level().name)
            self.book.positions.append(pos)
            self.send(Order(pos, "entry", pos.side), now_us)

    def wheel(self, symbol: str) -> TimingWheel[Order]:
        wheel = self.wheels.get(symbol)
        if wheel is None:
            wheel = self.wheels[symbol] = TimingWheel()
        return wheel

    def send(self, order: Order, now_us: int) -> None:
        lat = self.latency.sample_us()
        if order.kind == "entry":
            order.pos.sent_us, order.pos.latency_us = now_us, lat
        self.wheel(order.pos.signal.symbol).schedule(now_us + lat, order)

    def exit_order(self, pos: Position, reason: str, reference: float, now_us: int) -> None:
        pos.exiting = True
        pos.exit_reason = reason
        pos.exit_reference = reference
        if pos.limit is not None:
            pos.limit = None  # a resting target is cancelled (no latency modelled on cancels)
        self.send(Order(pos, "exit", -pos.side, reason, reference), now_us)

    def entry_filled(self, pos: Position, fill: mt.Fill | None) -> None:
        if fill is not None:
            self.book.on_entry(pos, fill)
        pos.entry_done = True
        if pos.qty <= 0:
            self.book.positions.remove(pos)
            self.book.unfilled.append(pos)

    def finish(self, now_us: int, price_of: Callable[[str], float]) -> None:
        """Positions still open at the end of the data are closed at the last price, flagged ``end``."""
        for pos in list(self.book.positions):
            px = price_of(pos.signal.symbol)
            if pos.qty <= 0:
                self.book.positions.remove(pos)
                self.book.unfilled.append(pos)
                continue
            pos.exit_reason = "end"
            pos.exit_reference = px
            price = mt.worse(px, -pos.side, self.slippage_bps(pos.signal.regime))
            self.book.on_exit(pos, mt.Fill(now_us, price, pos.open_qty,
                                           mt.fee_of(price, pos.open_qty, False, self.fees), False))


def quantile_slippage_bps(cost: Any, venue: str, regime: str, quantile: str) -> float:
    """The cost model's round-trip beyond-touch slippage at ``quantile`` (its fitted tables, ``estimate``); the
    legacy per-regime table when the model has no quantiles."""
    estimate = getattr(cost, "estimate", None)
    if estimate is not None:
        try:
            return float(estimate(venue, "", regime, 0.0, 0.0, quantile=quantile).slippage_bps)
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            pass
    return float(cost.slippage_for(regime))


def _track(pos: Position, price: float) -> None:
    if pos.qty <= 0 or price <= 0:
        return
    r = pos.side * (price / pos.entry_price - 1.0) * 1e4
    pos.mfe_bps, pos.mae_bps = max(pos.mfe_bps, r), min(pos.mae_bps, r)


# --- klines --------------------------------------------------------------------------------------------------------


def _kline_venue(paths: Sequence[Path], explicit: str | None) -> str:
    if explicit:
        return explicit
    names = " ".join(p.name.lower() for path in paths for p in ([path] if path.is_file() else path.iterdir()))
    return "usdm" if "um-futures" in names or "usdm" in names else "spot"


def kline_vectors(frame: pd.DataFrame, venue: str, spread_bps: float) -> list[features_pb2.FeatureVector]:
    """One FeatureVector per kline row, built by the features core's ``build_vector`` at the bar's close."""
    venue_enum = common_pb2.BINANCE_USDM if venue == "usdm" else common_pb2.BINANCE_SPOT
    values = frame[list(d.FEATURE_NAMES)].to_numpy(dtype=np.float64, copy=True)
    spread_col = list(d.FEATURE_NAMES).index("spread_bps")
    values[np.isnan(values[:, spread_col]), spread_col] = spread_bps
    symbols = frame["symbol"].astype(str).to_numpy()
    opens = frame["ts"].to_numpy(dtype=np.int64) * 1000
    closes = frame["close"].to_numpy(dtype=np.float64)
    insufficient = frame["window_insufficient"].to_numpy(dtype=bool)
    regimes = frame["regime"].astype(str).to_numpy() if "regime" in frame.columns else np.full(len(frame), "")
    clock = ManualClock(0)
    out = []
    first_seq: dict[str, int] = {}
    for i in range(len(frame)):
        close_us = int(opens[i]) + MINUTE_US
        sym = str(symbols[i])
        seq = int(opens[i] // MINUTE_US)
        first = first_seq.setdefault(sym, seq)
        tb = market_pb2.TickBatch(schema_version=SCHEMA_VERSION, batch_id=f"klines:{venue}:{sym}:{seq}",
                                  venue=venue_enum, symbol=sym, sequence=seq)
        tb.ts.exchange_us = close_us
        rec = VectorRecord(t_us=close_us, values=values[i], price=float(closes[i]), state_t_us=close_us,
                           status=d.STATUS_INSUFFICIENT if insufficient[i] else 0, regime=str(regimes[i]),
                           first_seq=first)
        clock.set_us(max(clock.now_us(), close_us))
        out.append(build_vector(tb, rec, clock))
    return out


def run_klines(cfg: BacktestConfig, settings: Settings, progress: Progress | None = None) -> BacktestResult:
    from streams.features.batch import compute_klines_frame

    started, cpu0 = time.perf_counter(), time.process_time()
    model = load_model(cfg.model_dir, intra_op_threads=1)
    venue = _kline_venue(cfg.data, cfg.venue)
    if cfg.workers > 1:
        from services.backtest.parallel import kline_features

        frame = kline_features(cfg.data, cfg.workers)
    else:
        frame = compute_klines_frame(list(cfg.data))
    frame = frame.sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)  # symbols interleaved in time
    t_features, cpu1 = time.perf_counter(), time.process_time()
    pipeline = Pipeline(settings, model)
    sim = Simulation(cfg, settings, pipeline, venue)
    closed_us = frame["ts"].to_numpy(dtype=np.int64) * 1000 + MINUTE_US
    wanted = np.ones(len(frame), dtype=bool)
    if cfg.start_us is not None:
        wanted &= closed_us >= cfg.start_us
    if cfg.end_us is not None:
        wanted &= closed_us < cfg.end_us
    # Bars before the window only warm the features up; bars after it are not read at all (no look-ahead).
    last = int(np.nonzero(wanted)[0].max()) + 1 if wanted.any() else 0
    first = int(np.argmax(wanted)) if wanted.any() else 0
    frame = frame.iloc[:last]
    vectors = kline_vectors(frame.iloc[first:last], venue, cfg.kline_spread_bps)
    predictions: dict[str, prediction_pb2.Prediction] = {}
    chunks = [vectors[k:k + INFER_CHUNK] for k in range(0, len(vectors), INFER_CHUNK)]
    if cfg.workers > 1 and len(chunks) > 1:
        from services.backtest.parallel import infer_chunks

        scored, refused = infer_chunks(cfg.model_dir, settings, chunks, cfg.workers)
        pipeline.predictions += len(scored)
        for kind, n in refused.items():
            pipeline.rejects[kind] = pipeline.rejects.get(kind, 0) + n
    else:
        scored = [p for chunk in chunks for p in pipeline.infer(chunk)]
    for p in scored:
        predictions[f"{p.symbol}:{p.ts.exchange_us}"] = p
    t_infer, cpu2 = time.perf_counter(), time.process_time()
    result = simulate_bars(sim, frame.iloc[first:last], predictions, progress)
    result.info.update({"seconds_features": t_features - started, "seconds_infer": t_infer - t_features,
                        "seconds_simulation": time.perf_counter() - t_infer, "bars": int(last - first),
                        "cpu_seconds_features": cpu1 - cpu0, "cpu_seconds_infer": cpu2 - cpu1,
                        "cpu_seconds_simulation": time.process_time() - cpu2, "venue": venue})
    return result


def simulate_bars(sim: Simulation, frame: pd.DataFrame, predictions: dict[str, prediction_pb2.Prediction],
                  progress: Progress | None = None) -> BacktestResult:
    """The bar loop (``matching`` module doc): per bar, orders that reach the exchange in it fill at its open,
    barriers are checked on its range, then the decision core sees the prediction made at its close."""
    book = sim.book
    symbols = frame["symbol"].astype(str).to_numpy()
    opens_us = frame["ts"].to_numpy(dtype=np.int64) * 1000
    o, h, lo, c, vol = (frame[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close", "volume"))
    last_close: dict[str, float] = {}
    n = len(frame)
    step = max(1, n // 200)
    for i in range(n):
        sym = str(symbols[i])
        bar = mt.Bar(int(opens_us[i]), float(o[i]), float(h[i]), float(lo[i]), float(c[i]), float(vol[i]))
        close_us = bar.open_us + MINUTE_US
        sim.events += 1
        # 1. Orders reaching the exchange during this bar: its open, or worse.
        for order in sim.wheel(sym).pop_due(close_us - 1):
            pos = order.pos
            at = max(bar.open_us, pos.sent_us + pos.latency_us) if order.kind == "entry" else bar.open_us
            slip = sim.slippage_bps(pos.signal.regime) + sim.cfg.kline_spread_bps / 2.0
            if order.kind == "entry":
                sim.entry_filled(pos, mt.bar_market_fill(bar, order.side, pos.want_qty, at, sim.mode, slip, sim.fees))
            elif not pos.closed:
                fill = mt.bar_market_fill(bar, order.side, pos.open_qty, at, sim.mode, slip, sim.fees)
                if fill is not None:
                    book.on_exit(pos, fill)
                if not pos.closed:
                    sim.send(order, close_us)  # the rest goes again, in the next bar
        # 2. Barriers on this bar's range, for positions entered at or before its open.
        for pos in list(book.positions):
            if pos.signal.symbol != sym or not pos.entry_done or pos.exiting or pos.entry_us >= close_us:
                continue
            exit_side = -pos.side
            _track(pos, bar.low if pos.side == mt.BUY else bar.high)
            _track(pos, bar.high if pos.side == mt.BUY else bar.low)
            slip = sim.slippage_bps(pos.signal.regime) + sim.cfg.kline_spread_bps / 2.0
            if mt.bar_stop_reached(bar, exit_side, pos.stop):
                pos.exiting, pos.exit_reason, pos.exit_reference = True, "stop", pos.stop
                lat = sim.latency.sample_us()
                fill = mt.bar_market_fill(bar, exit_side, pos.open_qty, bar.open_us + lat, sim.mode, slip,
                                          sim.fees, reference=pos.stop)
                if fill is not None:
                    book.on_exit(pos, fill)
                if not pos.closed:
                    sim.send(Order(pos, "exit", exit_side, "stop", pos.stop), close_us)
            elif mt.bar_limit_reached(bar, exit_side, pos.target, sim.mode):
                pos.exiting, pos.exit_reason, pos.exit_reference = True, "target", pos.target
                qty = pos.open_qty
                book.on_exit(pos, mt.Fill(close_us, pos.target, qty, mt.fee_of(pos.target, qty, True, sim.fees),
                                          True))
            elif close_us >= pos.deadline_us:
                sim.exit_order(pos, "timeout", bar.close, pos.deadline_us)
        last_close[sym] = bar.close
        book.mark(close_us, lambda s: last_close.get(s, 0.0))
        # 3. The decision at this bar's close, under the risk state of what has resolved so far.
        book.tick_time(close_us)
        pred = predictions.get(f"{sym}:{close_us}")
        if pred is not None:
            signals = sim.pipeline.decide([pred], close_us, book.level())
            sim.on_signals(signals, close_us)
        if progress is not None and (i % step == 0 or i == n - 1):
            progress(i + 1, n)
    end_us = int(opens_us[-1]) + MINUTE_US if n else 0
    sim.finish(end_us, lambda s: last_close.get(s, 0.0))
    return _result(sim, "klines")


def _result(sim: Simulation, kind: str) -> BacktestResult:
    book = sim.book
    trades = trades_frame(book.closed)
    equity = pd.DataFrame({"t_us": np.asarray(book.equity_t, dtype=np.int64),
                           "equity": np.asarray(book.equity_v, dtype=np.float64)})
    info: dict[str, Any] = {
        "unfilled_orders": len(book.unfilled),
        "wanted_qty": float(sum(p.want_qty for p in book.closed) + sum(p.want_qty for p in book.unfilled)),
        "filled_qty": float(sum(p.qty for p in book.closed)),
        "predictions": sim.pipeline.predictions,
        "rejects": dict(sim.pipeline.rejects),
        "decision_rules": dict(sim.pipeline.decision_state.rule_counts),
        "risk_transitions": [list(t) for t in book.transitions],
        "final_risk": book.risk_state.to_json(),
        "events": sim.events,
        "latency_mean_ms": sim.latency.total_us / sim.latency.count / 1000.0 if sim.latency.count else 0.0,
        "fees": {"taker_bps": sim.fees.taker_bps, "maker_bps": sim.fees.maker_bps},
        "mode": {"name": sim.mode.name, "max_levels": sim.mode.max_levels,
                 "slippage_quantile": sim.mode.slippage_quantile, "bar_participation": sim.mode.bar_participation},
        # What the signals were priced with (the estimate's stamp), else the cost model's own stamp.
        "cost_model_version": next((sg.cost_model_version for sg in sim.pipeline.signals if sg.cost_model_version),
                                   sim.pipeline.decision_state.cost.version),
        "model_version": sim.pipeline.model.model_version,
        "feature_version": sim.pipeline.model.feature_version,
    }
    return BacktestResult(sim.cfg, kind, trades, equity, sim.pipeline.signals, book, info)


# --- captures ------------------------------------------------------------------------------------------------------


def _chunks(batches: Iterator[market_pb2.TickBatch], size: int) -> Iterator[list[market_pb2.TickBatch]]:
    chunk: list[market_pb2.TickBatch] = []
    for tb in batches:
        chunk.append(tb)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def capture_vectors(chunk: Sequence[market_pb2.TickBatch], state: FeatureState,
                    clock: ManualClock) -> dict[str, features_pb2.FeatureVector]:
    """The features core over one chunk of TickBatches, as the stage processes a consumed batch."""
    newest = max(tb.ts.exchange_us for tb in chunk)
    if newest > clock.now_us():
        clock.set_us(newest)
    out = features_process([InRecord(tb, tb.symbol) for tb in chunk], state, clock)
    vectors: dict[str, features_pb2.FeatureVector] = {}
    for emit in out.emits:
        vec = emit.value
        assert isinstance(vec, features_pb2.FeatureVector)
        vec.ts.features_us = vec.ts.exchange_us  # event-time stamps (module doc)
        vectors[vec.vector_id] = vec
    return vectors


def run_captures(cfg: BacktestConfig, settings: Settings, progress: Progress | None = None,
                 batches: Iterable[market_pb2.TickBatch] | None = None) -> BacktestResult:
    """Tick/depth captures: the ingest replay (the batch driver's ``capture_batches``), the features core per
    chunk, the infer core per micro-batch of the stage's size, the decision core per prediction, and market
    orders against the recorded book (``matching`` module doc)."""
    from streams.features.batch import capture_batches

    started = time.perf_counter()
    model = load_model(cfg.model_dir, intra_op_threads=1)
    source = batches if batches is not None else capture_batches(list(cfg.data), cfg.venue, settings=settings)
    pipeline = Pipeline(settings, model)
    sim: Simulation | None = None
    fstate = FeatureState()
    fclock = ManualClock(0)
    books: dict[str, mt.Book] = {}
    last_trade: dict[str, float] = {}
    rows = max(1, settings.infer_batch_rows)
    done = 0
    now_us = 0
    t_match = 0.0
    for chunk in _chunks(iter(source), TICK_CHUNK):
        if sim is None:
            venue = cfg.venue or ("usdm" if chunk[0].venue == common_pb2.BINANCE_USDM else "spot")
            sim = Simulation(cfg, settings, pipeline, venue)
        vectors = capture_vectors(chunk, fstate, fclock)
        ordered = [vectors[tb.batch_id] for tb in chunk if tb.batch_id in vectors]
        preds: dict[str, prediction_pb2.Prediction] = {}
        for k in range(0, len(ordered), rows):
            for p in pipeline.infer(ordered[k:k + rows]):
                preds[p.prediction_id.rsplit(":", 1)[0]] = p
        for tb in chunk:
            t0 = time.perf_counter()
            sym = tb.symbol
            book = books.setdefault(sym, mt.Book())
            for event in tb.events:
                now_us = max(now_us, _on_event(sim, book, sym, event, last_trade))
            t_match += time.perf_counter() - t0
            now_us = max(now_us, tb.ts.exchange_us)
            sim.book.tick_time(now_us)
            pred = preds.get(tb.batch_id)
            if pred is not None and sim.in_window(pred.ts.exchange_us):
                signals = pipeline.decide([pred], max(now_us, pred.ts.exchange_us), sim.book.level())
                sim.on_signals(signals, now_us)
            sim.book.mark(now_us, lambda s: last_trade.get(s, books[s].mid() if s in books else 0.0))
            done += 1
        if progress is not None:
            progress(done, 0)
    if sim is None:
        raise ValueError(f"no tick batches in {[str(p) for p in cfg.data]}")
    # Orders still on the wheel are executed on the final book.
    for sym, wheel in sim.wheels.items():
        for order in wheel.pop_due(now_us + 10 * 60 * 1_000_000):
            _execute(sim, books[sym], order, now_us)
    sim.finish(now_us, lambda s: last_trade.get(s, books[s].mid() if s in books else 0.0))
    result = _result(sim, "captures")
    result.info.update({"seconds_total": time.perf_counter() - started, "seconds_matching": t_match,
                        "tick_batches": done, "venue": sim.venue,
                        "matching_events_per_s": sim.events / t_match if t_match > 0 else 0.0})
    return result


def _on_event(sim: Simulation, book: mt.Book, sym: str, event: market_pb2.MarketEvent,
              last_trade: dict[str, float]) -> int:
    """One recorded event of ``sym`` through the matching loop; returns its exchange time."""
    kind = event.WhichOneof("event")
    sim.events += 1
    if kind == "trade":
        tr = event.trade
        at = tr.exchange_us
    elif kind == "book":
        at = event.book.exchange_us
    elif kind == "book_ticker":
        at = event.book_ticker.exchange_us
    elif kind == "depth":
        at = event.depth.exchange_us
    elif kind == "mark_price":
        at = event.mark_price.exchange_us
    else:
        return 0
    wheel = sim.wheels.get(sym)
    if wheel is not None and wheel.pending:
        for order in wheel.pop_due(at):
            _execute(sim, book, order, at)
    if kind == "book":
        book.replace_recorded(event.book.bids, event.book.asks, at)
    elif kind == "book_ticker" and book.empty():
        bt = event.book_ticker
        book.replace([(bt.bid_price, bt.bid_qty)], [(bt.ask_price, bt.ask_qty)], at)
    elif kind == "trade":
        price, qty = event.trade.price, event.trade.qty
        last_trade[sym] = price
        for pos in sim.book.positions:
            if pos.signal.symbol != sym or not pos.entry_done or pos.exiting or at <= pos.entry_us:
                continue
            _track(pos, price)
            if at >= pos.deadline_us:
                sim.exit_order(pos, "timeout", book.touch(-pos.side) or price, at)
            elif (price <= pos.stop) if pos.side == mt.BUY else (price >= pos.stop):
                sim.exit_order(pos, "stop", pos.stop, at)
            elif pos.limit is not None:
                got = pos.limit.on_trade(price, qty)
                if got > 0:
                    sim.book.on_exit(pos, mt.Fill(at, pos.limit.price, got,
                                                  mt.fee_of(pos.limit.price, got, True, sim.fees), True))
                    if pos.closed:
                        pos.exit_reason, pos.exit_reference = "target", pos.target
    return at


def _execute(sim: Simulation, book: mt.Book, order: Order, at: int) -> None:
    pos = order.pos
    slip = sim.slippage_bps(pos.signal.regime)
    if order.kind == "entry":
        fill = mt.market_fill(book, order.side, pos.want_qty, at, sim.mode, slip, sim.fees)
        sim.entry_filled(pos, fill)
        if pos.qty > 0:
            # The take-profit rests at the target, at the back of its level's queue (price-time).
            pos.limit = mt.RestingLimit(-pos.side, pos.target, pos.qty, book.qty_at(-pos.side, pos.target))
        return
    if pos.closed:
        return
    fill = mt.market_fill(book, order.side, pos.open_qty, at, sim.mode, slip, sim.fees)
    if fill is not None:
        sim.book.on_exit(pos, fill)
    if not pos.closed:
        sim.send(order, at)  # what the levels did not hold goes again


def default_model(data: Sequence[Path], settings: Settings) -> Path:
    """The model a run uses when none is named: the shipped klines model for klines, else the live default."""
    from streams.features.batch import is_kline_path
    from streams.infer.artifacts import shipped
    from streams.infer.stage import model_dir

    return shipped("btcusdt-klines") if all(is_kline_path(Path(p)) for p in data) else model_dir(settings)


def run(cfg: BacktestConfig, settings: Settings, progress: Progress | None = None) -> BacktestResult:
    """Klines or captures (not both in one run), by the batch driver's own rule."""
    from streams.features.batch import is_kline_path

    kinds = {is_kline_path(Path(p)) for p in cfg.data}
    if not cfg.data:
        raise ValueError("no data")
    if len(kinds) > 1:
        raise ValueError("a backtest runs klines or captures, not both: run them separately")
    return run_klines(cfg, settings, progress) if kinds == {True} else run_captures(cfg, settings, progress)
