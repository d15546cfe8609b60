"""The feature contract and its one implementation: policy, formulas, the feature table and the numba kernel.

Everything a model depends on is in this file, and only here: the windowing policy constants, one ``@njit``
function per formula, the ``FEATURES`` table (name, category, tier, window, unit, formula, doc) and the
incremental kernel (``fold``) that feeds the formulas from per-symbol ring buffers. The stream stage
(``core.py``) and the batch drivers (``batch.py``) both call ``fold``; nothing else computes a feature.
The kernel lives in this file on purpose: numba's on-disk cache is invalidated per source file, so a cached
kernel can never run with stale formulas or feature indices.

``feature_version`` hashes the names, tiers, windows and formula sources of the table, the policy constants and
the code of this file and of ``rows.py`` (how inputs become kernel rows), so any change of meaning gives a new
version; comments, blank lines and docstrings do not count. The infer stage refuses vectors whose version
differs from its model's.

Inputs. The kernel consumes rows (see ``rows.py``): one per trade, per mark-price update, per liquidation, per
open-interest sample, per TickBatch end (the book after the batch) and per 1-minute kline. One output vector is
written per TickBatch or kline.

Windowing policy:

* Time is exchange event time: a TickBatch's ``ts.exchange_us`` (clamped to be non-decreasing per symbol); a
  kline's time is its close (open time + 60 s).
* Fine windows (1, 5, 10, 20, 30, 60 s) keep every batch as a sample in a ring buffer with running column sums;
  a window of width W at time t holds the samples with event time in ``(t - W, t]``.
* Coverage: each batch with a valid book "vouches" for the time since the previous valid batch if that gap
  is at most ``MAX_SAMPLE_GAP_US``; a longer gap is an outage and vouches for nothing (and OFI does not
  difference across it). A kline vouches for its whole minute. Coverage is the vouched time inside the window
  divided by W. Below ``MIN_WINDOW_COVERAGE`` the feature is NaN and the vector carries WINDOW_INSUFFICIENT.
* Sequence discontinuity: a TickBatch whose ``sequence`` is not the previous one + 1 (lost or rejected
  batches, an ingest restart) is a break: it vouches for nothing, OFI, 1 s returns and the trade-count grid do
  not difference across it, every fine window that contains it is NaN (+ WINDOW_INSUFFICIENT) until it has
  left the window, and the minute bucket holding it is invalid.
* A return over W compares the price now with the price of the last sample at or before ``t - W``; that sample
  must be at most ``MAX_SAMPLE_GAP_US`` older than the window start. The price is the book mid (ticks) or the
  bar close (klines, which have no book).
* 1 s grid: the last price of each completed exchange-time second; a 1 s return exists when both seconds have a
  price and no break lies between them. ``rv_1m``/``rv_5m`` need >= 50% of the returns of the last 60/300
  completed seconds.
* 1 min grid: per completed exchange-time minute, open/high/low/close of the price samples and the flow sums
  (a kline is one bucket). A bucket is valid with a close, >= 50% coverage and no break. Minute features use
  the last N completed minutes (at a kline's close that includes the kline) and need >= 50% valid buckets.
* Features that cannot exist for an input are NaN without the flag: book features and windows shorter than the
  bar on klines, trade-level features on klines, flow features on OHLCV-only klines, derivatives features
  before the first mark price (spot), liquidation features before the first liquidation and open-interest
  features before the first open-interest sample (spot, klines, captures without them).
* Liquidations (USD-M ``forceOrder``): each one's notional (average fill price x filled quantity, price x quantity
  while unfilled) is kept at its trade time in a ring of ``LIQ_CAPACITY``; the 1 and 5 min sums are over
  ``(t - W, t]``. They need the derivatives stream (the first mark price, liquidation or open-interest sample)
  to have been seen since ``t - W``, no ring overflow inside the window, and, for 1 min, the fine 60 s window
  valid, for 5 min >= 50% valid buckets among the last 5 completed minutes. Without any liquidation in 5 min
  the imbalance cannot exist (NaN, not insufficient).
* Open interest: the samples polled by ingest (one kept per ``OI_MIN_SPACING_US``, the newest always) in a ring
  of ``OI_CAPACITY``. A change over W compares the newest sample at or before t, at most ``OI_STALE_US`` old,
  with the newest at or before ``t - W``, at most ``OI_STALE_US`` older than that.
* Tiers: fast features are evaluated on every batch; medium ones on the first batch of every exchange-time
  second and slow ones on the first batch of every 5 s block, and held in between (``feature_age_*_s`` says
  how old). Under backpressure the stage drops the medium and slow tiers: they are NaN and the vector carries
  TIERS_DROPPED (not WINDOW_INSUFFICIENT); they are evaluated again at once when the stage has caught up. The
  state is always updated, whatever the tiers: only evaluation is skipped.

Regime: ``vol_{low,medium,high}_depth_{thin,medium,thick}``. Per symbol, the first ``REGIME_WARMUP_SECONDS``
completed seconds with a valid ``rv_1m`` and book are collected; their terciles (1/3 and 2/3 quantiles,
linear interpolation) of ``rv_1m`` and of ``depth_l10_log`` become that symbol's thresholds, frozen for the
life of the state (or preset thresholds are given to the state). ``x < q1`` is low/thin, ``q1 <= x < q2``
medium, ``x >= q2`` high/thick. Until then, or while ``rv_1m`` is NaN, the regime is "" and a tick vector
carries WINDOW_INSUFFICIENT. Klines have no regime (no book, no 1 s returns).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import io
import math
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    """``numba.njit(cache=True)`` that keeps the Python signature for mypy."""
    return cast(_F, numba.njit(cache=True)(fn))


def _inline(fn: _F) -> _F:
    """Like ``_jit``, but inlined into jitted callers at the IR level. Used for the formulas and the per-event path:
    a jitted call that takes the whole KernelState increfs and decrefs each of its arrays (~0.2 µs per call), and
    small helpers called with constant arguments would otherwise be compiled once per constant."""
    return cast(_F, numba.njit(cache=True, inline="always")(fn))


# --- Policy; part of the feature_version hash. ----------------------------------------------------------------

MIN_WINDOW_COVERAGE = 0.5
MAX_SAMPLE_GAP_US = 1_000_000
RV_WINDOW_SECONDS = 60
RV5_WINDOW_SECONDS = 300
REGIME_WARMUP_SECONDS = 120
QI_LEVELS = 5
DEPTH_LEVELS = 10
VOID_LEVELS = 5
BOOK_LEVELS = 10  # levels per side the kernel reads from a BookSnapshot
MEDIUM_EVERY_US = 1_000_000
SLOW_EVERY_US = 5_000_000
MINUTE_US = 60_000_000
BAR_US = 60_000_000  # klines are 1-minute bars
HAWKES_DECAY_S = 10.0
LARGE_TRADE_MULTIPLE = 5.0
TRADE_SIZE_ALPHA = 0.02
TRADE_SIZE_WARMUP = 50
INTERARRIVAL_ALPHA = 0.05
INTERARRIVAL_WARMUP = 20
MARK_STALE_US = 5_000_000
LIQ_CAPACITY = 1024  # power of two; Binance sends at most one liquidation per symbol and second
LIQ_MASK = LIQ_CAPACITY - 1
OI_CAPACITY = 1024  # power of two; > 1 h of samples at OI_MIN_SPACING_US
OI_MASK = OI_CAPACITY - 1
OI_MIN_SPACING_US = 5_000_000
OI_STALE_US = 180_000_000
LIQ_SHORT_US = 60_000_000
LIQ_LONG_US = 300_000_000
OI_SHORT_US = 300_000_000
OI_LONG_US = 3_600_000_000
VR_LAG = 5
PER_MILLION = 1e6  # price impact and illiquidity are per million units of quote currency
LN2X4 = 4.0 * math.log(2.0)
DAY_US = 86_400_000_000

TIER_FAST, TIER_MEDIUM, TIER_SLOW = 0, 1, 2
TIER_NAMES = ("fast", "medium", "slow")

VOL_LABELS = ("low", "medium", "high")
DEPTH_LABELS = ("thin", "medium", "thick")
REGIME_LABELS: tuple[str, ...] = tuple(f"vol_{v}_depth_{d}" for v in VOL_LABELS for d in DEPTH_LABELS)

NAN = float("nan")
US = 1_000_000


# --- Formulas. Each is the single definition of its feature's arithmetic; the kernel below only feeds them. ---


@_inline
def mid_price(bid: float, ask: float) -> float:
    return (bid + ask) / 2.0


@_inline
def spread_bps(bid: float, ask: float) -> float:
    """(ask - bid) / mid * 1e4."""
    return (ask - bid) / mid_price(bid, ask) * 1e4


@_inline
def queue_imbalance(bid_qty: float, ask_qty: float) -> float:
    """(bid_qty - ask_qty) / (bid_qty + ask_qty); at the best level, or summed over the top N levels."""
    total = bid_qty + ask_qty
    return (bid_qty - ask_qty) / total if total > 0.0 else NAN


@_inline
def microprice_dev(bid: float, bid_qty: float, ask: float, ask_qty: float) -> float:
    """(microprice - mid) / mid with microprice = (ask * bid_qty + bid * ask_qty) / (bid_qty + ask_qty)."""
    total = bid_qty + ask_qty
    if total <= 0.0:
        return NAN
    micro = (ask * bid_qty + bid * ask_qty) / total
    mid = mid_price(bid, ask)
    return (micro - mid) / mid


TopOfBook = tuple[float, float, float, float]  # (bid, bid_qty, ask, ask_qty)


@_inline
def ofi_increment(prev: TopOfBook, cur: TopOfBook) -> float:
    """Cont, Kukanov & Stoikov (2014) order-flow increment between two successive top-of-book states."""
    prev_bid, prev_bid_qty, prev_ask, prev_ask_qty = prev
    bid, bid_qty, ask, ask_qty = cur
    e = 0.0
    if bid >= prev_bid:
        e += bid_qty
    if bid <= prev_bid:
        e -= prev_bid_qty
    if ask <= prev_ask:
        e -= ask_qty
    if ask >= prev_ask:
        e += prev_ask_qty
    return e


@_inline
def ofi_normalised(ofi_sum: float, top_depth_sum: float, n_books: float) -> float:
    """Summed OFI over the window divided by the window's mean top depth ((bid_qty + ask_qty) / 2 at L1)."""
    if n_books <= 0.0 or top_depth_sum <= 0.0:
        return NAN
    return ofi_sum / (top_depth_sum / n_books)


@_inline
def trade_imbalance(buy_volume: float, sell_volume: float, n_trades: float) -> float:
    """Signed (aggressor) volume / total volume; NaN without trades (no flow is not zero imbalance)."""
    total = buy_volume + sell_volume
    if n_trades <= 0.0 or total <= 0.0:
        return NAN
    return (buy_volume - sell_volume) / total


@_inline
def count_imbalance(n_buy: float, n_sell: float) -> float:
    """(aggressive buys - aggressive sells) / all trades, by count; NaN without trades."""
    total = n_buy + n_sell
    return (n_buy - n_sell) / total if total > 0.0 else NAN


@_inline
def trade_intensity(n_trades: float, covered_s: float) -> float:
    """Trades per second of covered window time."""
    return n_trades / covered_s if covered_s > 0.0 else NAN


@_inline
def log_rate(total: float, covered_s: float) -> float:
    """log(total per second of covered window time); NaN when nothing traded."""
    if total <= 0.0 or covered_s <= 0.0:
        return NAN
    return math.log(total / covered_s)


@_inline
def share(part: float, total: float) -> float:
    return part / total if total > 0.0 else NAN


@_inline
def log_return(now: float, then: float) -> float:
    return math.log(now / then)


@_inline
def acceleration(now: float, middle: float, oldest: float) -> float:
    """Return over the last interval minus the return over the interval before it (log prices)."""
    return math.log(now / middle) - math.log(middle / oldest)


@_inline
def realized_vol(sum_sq_returns: float, n_returns: float, n_slots: float) -> float:
    """sqrt(sum r^2) of log returns, scaled to n_slots returns when some are missing; not annualised."""
    if n_returns <= 0:
        return NAN
    return math.sqrt(max(sum_sq_returns, 0.0) * n_slots / n_returns)


@_inline
def parkinson_vol(sum_log_hl_sq: float, n_bars: float, n_slots: float) -> float:
    """Parkinson (1980): sqrt(sum ln(high/low)^2 / (4 ln 2)), scaled to n_slots bars; same units as rv."""
    if n_bars <= 0:
        return NAN
    return math.sqrt(max(sum_log_hl_sq, 0.0) / LN2X4 * n_slots / n_bars)


@_inline
def vol_ratio(sum_sq_short: float, n_short: int, sum_sq_long: float, n_long: int) -> float:
    """sqrt of mean squared return over the short window / over the long window (same return interval)."""
    if n_short <= 0 or n_long <= 0 or sum_sq_long <= 0.0:
        return NAN
    return math.sqrt((max(sum_sq_short, 0.0) / n_short) / (sum_sq_long / n_long))


@_inline
def variance_ratio(sum_sq_q: float, n_q: int, sum_sq_1: float, n_1: int, q: int) -> float:
    """Lo-MacKinlay VR(q) without drift: mean squared q-interval return / (q * mean squared 1-interval return)."""
    if n_q <= 0 or n_1 <= 0 or sum_sq_1 <= 0.0:
        return NAN
    return (sum_sq_q / n_q) / (q * sum_sq_1 / n_1)


@_inline
def kyle_lambda(sum_r_q: float, sum_q_sq: float) -> float:
    """Least-squares slope of log return on signed quote volume (no intercept), in bps per million quote."""
    if sum_q_sq <= 0.0:
        return NAN
    return sum_r_q / sum_q_sq * 1e4 * PER_MILLION


@_inline
def amihud(sum_abs_r_per_quote: float, n: int) -> float:
    """Amihud (2002) illiquidity: mean |log return| / quote volume, in bps per million quote."""
    if n <= 0:
        return NAN
    return sum_abs_r_per_quote / n * 1e4 * PER_MILLION


@_inline
def zscore(x: float, mean: float, std: float) -> float:
    return (x - mean) / std if std > 0.0 else NAN


@_inline
def vwap_gap_bps(price: float, notional: float, volume: float, n_trades: float) -> float:
    """(price - vwap) / vwap * 1e4 with vwap = sum(price * qty) / sum(qty) over the window's trades."""
    if n_trades <= 0.0 or volume <= 0.0:
        return NAN
    vwap = notional / volume
    return (price - vwap) / vwap * 1e4


@_inline
def depth_log(total_qty: float) -> float:
    """log of the total quantity (base asset) within DEPTH_LEVELS levels of both sides."""
    return math.log(total_qty) if total_qty > 0.0 else NAN


@_inline
def depth_slope(qty_sum: float, far_price: float, mid: float) -> float:
    """log(quantity within the levels / distance in bps from the mid to the farthest of them)."""
    dist = abs(far_price - mid) / mid * 1e4
    if qty_sum <= 0.0 or not dist > 0.0:
        return NAN
    return math.log(qty_sum / dist)


@_inline
def slope_imbalance(bid_qty: float, bid_far: float, ask_qty: float, ask_far: float, mid: float) -> float:
    """(s_bid - s_ask) / (s_bid + s_ask) of the linear depth slopes s = quantity / distance in bps."""
    db = abs(bid_far - mid) / mid * 1e4
    da = abs(ask_far - mid) / mid * 1e4
    if not (db > 0.0 and da > 0.0):
        return NAN
    sb = bid_qty / db
    sa = ask_qty / da
    return (sb - sa) / (sb + sa) if sb + sa > 0.0 else NAN


@_inline
def touch_void_bps(best: float, far: float, mid: float) -> float:
    """Price span of the first VOID_LEVELS levels of one side in bps: large when the book is hollow near the touch."""
    return abs(far - best) / mid * 1e4


@_inline
def book_pressure(bid_qty: FloatArray, ask_qty: FloatArray, n_levels: int) -> float:
    """Level-decayed imbalance: sum_i (b_i - a_i) / i over sum_i (b_i + a_i) / i, levels i = 1..n_levels."""
    num = 0.0
    den = 0.0
    for i in range(n_levels):
        w = 1.0 / (i + 1)
        num += w * (bid_qty[i] - ask_qty[i])
        den += w * (bid_qty[i] + ask_qty[i])
    return num / den if den > 0.0 else NAN


@_inline
def mean_of(total: float, n: float) -> float:
    return total / n if n > 0.0 else NAN


@_inline
def difference(now: float, then: float) -> float:
    return now - then


@_inline
def ewma_update(mean: float, x: float, alpha: float) -> float:
    return mean + alpha * (x - mean)


@_inline
def ewm_moments(mean: float, var: float, x: float, alpha: float) -> tuple[float, float]:
    """Exponentially weighted mean and variance, updated in O(1) per observation (Welford-style, Finch 2009)."""
    delta = x - mean
    new_mean = mean + alpha * delta
    new_var = (1.0 - alpha) * (var + alpha * delta * delta)
    return new_mean, new_var


@_inline
def burstiness(mean: float, var: float) -> float:
    """Goh & Barabasi (2008) B = (sigma - mu) / (sigma + mu) of inter-arrival times: -1 regular, 0 Poisson, 1 bursty."""
    sd = math.sqrt(max(var, 0.0))
    return (sd - mean) / (sd + mean) if sd + mean > 0.0 else NAN


@_inline
def decayed(excitation: float, elapsed_s: float, decay_s: float) -> float:
    """An exponential-kernel excitation sum_i exp(-(t_last - t_i) / tau) carried forward by elapsed_s."""
    return excitation * math.exp(-elapsed_s / decay_s)


@_inline
def hawkes_intensity(excitation: float, elapsed_s: float, decay_s: float) -> float:
    """Exponential-kernel excitation sum_i exp(-(t - t_i) / tau) decayed to now and divided by tau: events/s."""
    return decayed(excitation, elapsed_s, decay_s) / decay_s


@_inline
def hawkes_branching(sum_counts: float, sum_counts_sq: float, n_bins: int) -> float:
    """Branching ratio n from the index of dispersion of trade counts per bin: VMR -> 1/(1-n)^2, so n = 1 - 1/sqrt(VMR).

    Poisson-like flow (VMR <= 1) gives 0. Approximate: exact only for bins much longer than the kernel's memory.
    """
    if n_bins <= 0:
        return NAN
    mean = sum_counts / n_bins
    if mean <= 0.0:
        return NAN
    vmr = max(sum_counts_sq / n_bins - mean * mean, 0.0) / mean
    return 1.0 - 1.0 / math.sqrt(vmr) if vmr > 1.0 else 0.0


@_inline
def seconds_since(now_us: int, then_us: int) -> float:
    return max(now_us - then_us, 0) / 1e6


@_inline
def hours_until(then_us: int, now_us: int) -> float:
    return max(then_us - now_us, 0) / 3.6e9


@_inline
def to_bps(x: float) -> float:
    return x * 1e4


@_inline
def relative_bps(x: float, reference: float) -> float:
    """(x - reference) / reference * 1e4."""
    return (x - reference) / reference * 1e4


@_inline
def time_of_day_sin(t_us: int) -> float:
    return math.sin(2.0 * math.pi * (t_us % DAY_US) / DAY_US)


@_inline
def time_of_day_cos(t_us: int) -> float:
    return math.cos(2.0 * math.pi * (t_us % DAY_US) / DAY_US)


@_inline
def fraction(part: float, whole: float) -> float:
    """part / whole clipped to [0, 1] (coverage)."""
    return min(max(part / whole, 0.0), 1.0)


@_inline
def tercile_index(x: float, q1: float, q2: float) -> int:
    if x < q1:
        return 0
    return 1 if x < q2 else 2


@_inline
def regime_index(rv: float, depth: float, vol_q1: float, vol_q2: float, depth_q1: float, depth_q2: float) -> int:
    """Index into REGIME_LABELS (volatility major, depth minor); -1 while rv or depth is unknown."""
    if math.isnan(rv) or math.isnan(depth):
        return -1
    return tercile_index(rv, vol_q1, vol_q2) * 3 + tercile_index(depth, depth_q1, depth_q2)


@_inline
def interpolated_quantile(sorted_values: FloatArray, q: float) -> float:
    """Quantile of sorted values with linear interpolation between order statistics (numpy's default)."""
    pos = q * (sorted_values.shape[0] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, sorted_values.shape[0] - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


@_inline
def quality_score(n_valid: float, n_applicable: float) -> float:
    """Share of the features that can exist for this input which have a value."""
    return n_valid / n_applicable if n_applicable > 0.0 else NAN


@_inline
def liquidation_notional(price: float, qty: float, avg_price: float, filled_qty: float) -> float:
    """Quote notional of one liquidation: avg_price * filled_qty (Binance ap * z), price * qty while unfilled."""
    if avg_price > 0.0 and filled_qty > 0.0:
        return avg_price * filled_qty
    return price * qty


@_inline
def window_count(n: float) -> float:
    """Number of events in the window."""
    return n


@_inline
def liquidation_imbalance(sell_notional: float, buy_notional: float) -> float:
    """(sell - buy) / (sell + buy) of liquidated notional: > 0 when longs are being force-sold; NaN without any."""
    total = sell_notional + buy_notional
    return (sell_notional - buy_notional) / total if total > 0.0 else NAN


@_inline
def relative_change(now: float, then: float) -> float:
    """now / then - 1."""
    return now / then - 1.0 if then > 0.0 else NAN


def regime_label(index: int) -> str:
    return REGIME_LABELS[index] if 0 <= index < len(REGIME_LABELS) else ""


# --- The feature table: a stable contract. New features are appended; names never change meaning. -------------


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One output column: its name (a stable contract), category, tier, window, unit, formula and doc."""

    name: str
    category: str
    tier: int
    window_s: float | None  # None: point-in-time
    unit: str
    formula: Callable[..., Any]
    doc: str


def _f(name: str, category: str, tier: int, window_s: float | None, unit: str, formula: Callable[..., Any],
       doc: str) -> FeatureDef:
    return FeatureDef(name, category, tier, window_s, unit, formula, doc)


FAST, MEDIUM, SLOW = TIER_FAST, TIER_MEDIUM, TIER_SLOW

FEATURES: tuple[FeatureDef, ...] = (
    # The original 15, unchanged.
    _f("spread_bps", "book", FAST, None, "bps", spread_bps, "(ask-bid)/mid*1e4 of the BookSnapshot"),
    _f("qi_l1", "book", FAST, None, "ratio [-1,1]", queue_imbalance, "queue imbalance at the best level"),
    _f("qi_l5", "book", FAST, None, "ratio [-1,1]", queue_imbalance,
       "queue imbalance of quantities summed over 5 levels"),
    _f("microprice_dev", "price", FAST, None, "fraction", microprice_dev,
       "(microprice-mid)/mid, microprice=(ask*bid_qty+bid*ask_qty)/(bid_qty+ask_qty)"),
    _f("ofi_1s", "flow", FAST, 1.0, "top depths", ofi_normalised,
       "sum of Cont OFI increments over 1 s / mean top depth"),
    _f("ofi_5s", "flow", FAST, 5.0, "top depths", ofi_normalised,
       "sum of Cont OFI increments over 5 s / mean top depth"),
    _f("trade_imbalance_5s", "flow", FAST, 5.0, "ratio [-1,1]", trade_imbalance,
       "(buy-sell)/(buy+sell) aggressor volume over 5 s"),
    _f("trade_intensity_5s", "flow", FAST, 5.0, "trades/s", trade_intensity, "trades per covered second over 5 s"),
    _f("ret_1s", "price", FAST, 1.0, "log return", log_return, "log price return over 1 s"),
    _f("ret_10s", "price", FAST, 10.0, "log return", log_return, "log price return over 10 s"),
    _f("ret_60s", "price", FAST, 60.0, "log return", log_return,
       "log price return over 60 s (klines: close over previous close)"),
    _f("rv_1m", "volatility", FAST, 60.0, "log return", realized_vol,
       "realized vol of 1 s log returns over 60 s, not annualised"),
    _f("vwap_gap_bps_30s", "price", FAST, 30.0, "bps", vwap_gap_bps, "(price-vwap)/vwap*1e4, vwap over 30 s of trades"),
    _f("depth_l10_log", "book", FAST, None, "log base qty", depth_log,
       "log of total quantity within 10 levels per side"),
    _f("time_since_trade_s", "time", FAST, None, "s", seconds_since, "seconds since the last trade (event time)"),
    # Order book.
    _f("qi_l10", "book", FAST, None, "ratio [-1,1]", queue_imbalance,
       "queue imbalance of quantities summed over 10 levels"),
    _f("depth_slope_bid", "book", FAST, None, "log(qty/bps)", depth_slope,
       "log(bid qty within 10 levels / bps from mid to the 10th bid)"),
    _f("depth_slope_ask", "book", FAST, None, "log(qty/bps)", depth_slope,
       "log(ask qty within 10 levels / bps from mid to the 10th ask)"),
    _f("depth_slope_imbalance", "book", FAST, None, "ratio [-1,1]", slope_imbalance,
       "(s_bid-s_ask)/(s_bid+s_ask) of the linear 10-level depth slopes"),
    _f("touch_void_bid_bps", "book", FAST, None, "bps", touch_void_bps,
       "near-touch void: (bid_1-bid_5)/mid*1e4, NaN with < 5 levels"),
    _f("touch_void_ask_bps", "book", FAST, None, "bps", touch_void_bps,
       "near-touch void: (ask_5-ask_1)/mid*1e4, NaN with < 5 levels"),
    _f("book_pressure", "book", FAST, None, "ratio [-1,1]", book_pressure,
       "sum (b_i-a_i)/i / sum (b_i+a_i)/i over levels i=1..10"),
    _f("spread_bps_mean_1m", "book", MEDIUM, 60.0, "bps", mean_of, "mean spread_bps of the book samples over 60 s"),
    _f("depth_change_1m", "book", MEDIUM, 60.0, "log ratio", difference,
       "depth_l10_log now minus at the sample 60 s ago"),
    # Order flow.
    _f("ofi_30s", "flow", MEDIUM, 30.0, "top depths", ofi_normalised,
       "sum of Cont OFI increments over 30 s / mean top depth"),
    _f("trade_imbalance_30s", "flow", MEDIUM, 30.0, "ratio [-1,1]", trade_imbalance,
       "(buy-sell)/(buy+sell) aggressor volume over 30 s"),
    _f("trade_imbalance_1m", "flow", MEDIUM, 60.0, "ratio [-1,1]", trade_imbalance,
       "(buy-sell)/(buy+sell) aggressor volume over 60 s (klines: taker buy vs rest)"),
    _f("trade_sign_imbalance_5s", "flow", FAST, 5.0, "ratio [-1,1]", count_imbalance,
       "(n_buy-n_sell)/(n_buy+n_sell) aggressor trade counts over 5 s"),
    _f("trade_sign_imbalance_1m", "flow", MEDIUM, 60.0, "ratio [-1,1]", count_imbalance,
       "(n_buy-n_sell)/(n_buy+n_sell) aggressor trade counts over 60 s"),
    _f("buy_intensity_5s", "flow", FAST, 5.0, "trades/s", trade_intensity,
       "aggressive buy trades per covered second over 5 s"),
    _f("sell_intensity_5s", "flow", FAST, 5.0, "trades/s", trade_intensity,
       "aggressive sell trades per covered second over 5 s"),
    _f("trade_intensity_1m", "flow", MEDIUM, 60.0, "trades/s", trade_intensity,
       "trades per covered second over 60 s"),
    _f("large_trade_share_30s", "flow", MEDIUM, 30.0, "fraction", share,
       "volume share over 30 s of trades >= 5x the EWMA trade size (alpha 0.02, after 50 trades)"),
    _f("notional_rate_log_1m", "flow", MEDIUM, 60.0, "log quote/s", log_rate, "log(quote volume per second) over 60 s"),
    _f("hawkes_buy_intensity", "flow", SLOW, None, "trades/s", hawkes_intensity,
       "exponential-kernel (tau=10 s) Hawkes excitation of aggressive buys"),
    _f("hawkes_sell_intensity", "flow", SLOW, None, "trades/s", hawkes_intensity,
       "exponential-kernel (tau=10 s) Hawkes excitation of aggressive sells"),
    _f("hawkes_imbalance", "flow", SLOW, None, "ratio [-1,1]", count_imbalance,
       "(buy-sell)/(buy+sell) of the two Hawkes intensities"),
    _f("hawkes_branching_5m", "flow", SLOW, 300.0, "ratio [0,1)", hawkes_branching,
       "1-1/sqrt(var/mean) of trade counts per second over 300 s"),
    _f("kyle_lambda_1h", "flow", SLOW, 3600.0, "bps per 1M quote", kyle_lambda,
       "slope of 1-min log returns on 1-min signed quote volume over 60 min"),
    _f("amihud_1h", "flow", SLOW, 3600.0, "bps per 1M quote", amihud,
       "mean |1-min log return| / 1-min quote volume over 60 min"),
    _f("volume_zscore_1h", "flow", SLOW, 3600.0, "z", zscore,
       "z-score of the last minute's log volume among the last 60 minutes"),
    # Price.
    _f("ret_accel_10s", "price", FAST, 20.0, "log return", acceleration,
       "log return over the last 10 s minus over the 10 s before"),
    _f("ret_5m", "price", MEDIUM, 300.0, "log return", log_return,
       "log close return over the last 5 completed minutes"),
    _f("ret_15m", "price", SLOW, 900.0, "log return", log_return,
       "log close return over the last 15 completed minutes"),
    _f("ret_1h", "price", SLOW, 3600.0, "log return", log_return,
       "log close return over the last 60 completed minutes"),
    _f("ret_accel_5m", "price", MEDIUM, 600.0, "log return", acceleration,
       "5-min return minus the 5-min return before it (completed minutes)"),
    _f("vwap_gap_bps_5m", "price", MEDIUM, 300.0, "bps", vwap_gap_bps,
       "(close-vwap)/vwap*1e4 over the last 5 completed minutes"),
    _f("price_zscore_1h", "price", SLOW, 3600.0, "z", zscore,
       "z-score of the last minute close among the last 60 minute closes"),
    # Volatility.
    _f("rv_5m", "volatility", MEDIUM, 300.0, "log return", realized_vol,
       "realized vol of 1 s log returns over 300 s, not annualised"),
    _f("rv_1h", "volatility", SLOW, 3600.0, "log return", realized_vol,
       "realized vol of 1-min log returns over 60 min, not annualised"),
    _f("parkinson_5m", "volatility", MEDIUM, 300.0, "log return", parkinson_vol,
       "Parkinson vol of the last 5 minute high/low ranges"),
    _f("parkinson_1h", "volatility", SLOW, 3600.0, "log return", parkinson_vol,
       "Parkinson vol of the last 60 minute high/low ranges"),
    _f("rv_ratio_5m_1h", "volatility", SLOW, 3600.0, "ratio", vol_ratio,
       "sqrt(mean r^2 last 5 min / mean r^2 last 60 min) of 1-min returns"),
    _f("variance_ratio_1h", "volatility", SLOW, 3600.0, "ratio", variance_ratio,
       "Lo-MacKinlay VR(5) of 1-min returns over 60 min (<1 mean-reverting, >1 trending)"),
    # Time.
    _f("trade_interarrival_s", "time", FAST, None, "s", ewm_moments,
       "EWMA (alpha 0.05) of the time between trades, after 20 intervals"),
    _f("trade_burstiness", "time", FAST, None, "ratio [-1,1]", burstiness,
       "(sd-mean)/(sd+mean) of the EWMA inter-arrival moments"),
    _f("tod_sin", "time", FAST, None, "[-1,1]", time_of_day_sin, "sin(2 pi UTC time of day)"),
    _f("tod_cos", "time", FAST, None, "[-1,1]", time_of_day_cos, "cos(2 pi UTC time of day)"),
    # Derivatives (USD-M markPrice@1s; NaN on spot and klines).
    _f("funding_rate_bps", "derivatives", MEDIUM, None, "bps", to_bps, "current funding rate * 1e4"),
    _f("basis_bps", "derivatives", MEDIUM, None, "bps", relative_bps, "(mark-index)/index*1e4"),
    _f("mark_mid_gap_bps", "derivatives", MEDIUM, None, "bps", relative_bps, "(mid-mark)/mark*1e4"),
    _f("time_to_funding_h", "derivatives", MEDIUM, None, "h", hours_until, "hours until the next funding"),
    # Meta.
    _f("book_age_s", "meta", FAST, None, "s", seconds_since,
       "batch time minus the book snapshot's exchange time"),
    _f("feature_age_medium_s", "meta", FAST, None, "s", seconds_since,
       "age of the held medium-tier values; NaN when the tier is dropped"),
    _f("feature_age_slow_s", "meta", FAST, None, "s", seconds_since,
       "age of the held slow-tier values; NaN when the tier is dropped"),
    _f("coverage_5s", "meta", FAST, 5.0, "fraction", fraction, "covered share of the 5 s window"),
    _f("coverage_1m", "meta", FAST, 60.0, "fraction", fraction, "covered share of the 60 s window"),
    _f("coverage_1h", "meta", SLOW, 3600.0, "fraction", fraction, "share of valid minute buckets in the last 60"),
    _f("quality_score", "meta", FAST, None, "fraction", quality_score,
       "share of the features applicable to this input that have a value"),
    # Derivatives, appended (USD-M forceOrder liquidations and REST open interest; NaN on spot and klines).
    _f("liq_notional_1m", "derivatives", MEDIUM, 60.0, "quote", liquidation_notional,
       "sum of liquidated notional (ap*z, else p*q) over 60 s"),
    _f("liq_count_5m", "derivatives", MEDIUM, 300.0, "count", window_count, "number of liquidations over 300 s"),
    _f("liq_imbalance_5m", "derivatives", MEDIUM, 300.0, "ratio [-1,1]", liquidation_imbalance,
       "(sell-buy)/(sell+buy) liquidated notional over 300 s; NaN without liquidations"),
    _f("oi_change_5m", "derivatives", MEDIUM, 300.0, "fraction", relative_change,
       "open interest now / 5 min ago - 1"),
    _f("oi_change_1h", "derivatives", MEDIUM, 3600.0, "fraction", relative_change,
       "open interest now / 1 h ago - 1"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
FEATURE_TIERS: tuple[int, ...] = tuple(f.tier for f in FEATURES)
CATEGORIES: tuple[str, ...] = ("book", "flow", "price", "volatility", "time", "derivatives", "meta")


def _ix(name: str) -> int:
    return FEATURE_NAMES.index(name)


# Column of each feature in a vector; compile-time constants for the kernel.
I_SPREAD = _ix("spread_bps")
I_QI_L1 = _ix("qi_l1")
I_QI_L5 = _ix("qi_l5")
I_MICRO = _ix("microprice_dev")
I_OFI_1S = _ix("ofi_1s")
I_OFI_5S = _ix("ofi_5s")
I_TI_5S = _ix("trade_imbalance_5s")
I_TINT_5S = _ix("trade_intensity_5s")
I_RET_1S = _ix("ret_1s")
I_RET_10S = _ix("ret_10s")
I_RET_60S = _ix("ret_60s")
I_RV_1M = _ix("rv_1m")
I_VWAP_30S = _ix("vwap_gap_bps_30s")
I_DEPTH = _ix("depth_l10_log")
I_TSINCE = _ix("time_since_trade_s")
I_QI_L10 = _ix("qi_l10")
I_SLOPE_B = _ix("depth_slope_bid")
I_SLOPE_A = _ix("depth_slope_ask")
I_SLOPE_IMB = _ix("depth_slope_imbalance")
I_VOID_B = _ix("touch_void_bid_bps")
I_VOID_A = _ix("touch_void_ask_bps")
I_PRESSURE = _ix("book_pressure")
I_SPREAD_MEAN = _ix("spread_bps_mean_1m")
I_DEPTH_CHG = _ix("depth_change_1m")
I_OFI_30S = _ix("ofi_30s")
I_TI_30S = _ix("trade_imbalance_30s")
I_TI_1M = _ix("trade_imbalance_1m")
I_TSI_5S = _ix("trade_sign_imbalance_5s")
I_TSI_1M = _ix("trade_sign_imbalance_1m")
I_BUY_INT = _ix("buy_intensity_5s")
I_SELL_INT = _ix("sell_intensity_5s")
I_TINT_1M = _ix("trade_intensity_1m")
I_LARGE = _ix("large_trade_share_30s")
I_NOTIONAL = _ix("notional_rate_log_1m")
I_HAWKES_B = _ix("hawkes_buy_intensity")
I_HAWKES_S = _ix("hawkes_sell_intensity")
I_HAWKES_IMB = _ix("hawkes_imbalance")
I_BRANCHING = _ix("hawkes_branching_5m")
I_KYLE = _ix("kyle_lambda_1h")
I_AMIHUD = _ix("amihud_1h")
I_VOLZ = _ix("volume_zscore_1h")
I_ACCEL_10S = _ix("ret_accel_10s")
I_RET_5M = _ix("ret_5m")
I_RET_15M = _ix("ret_15m")
I_RET_1H = _ix("ret_1h")
I_ACCEL_5M = _ix("ret_accel_5m")
I_VWAP_5M = _ix("vwap_gap_bps_5m")
I_PZ = _ix("price_zscore_1h")
I_RV_5M = _ix("rv_5m")
I_RV_1H = _ix("rv_1h")
I_PK_5M = _ix("parkinson_5m")
I_PK_1H = _ix("parkinson_1h")
I_RV_RATIO = _ix("rv_ratio_5m_1h")
I_VR = _ix("variance_ratio_1h")
I_IA = _ix("trade_interarrival_s")
I_BURST = _ix("trade_burstiness")
I_TOD_SIN = _ix("tod_sin")
I_TOD_COS = _ix("tod_cos")
I_FUNDING = _ix("funding_rate_bps")
I_BASIS = _ix("basis_bps")
I_MARK_GAP = _ix("mark_mid_gap_bps")
I_TO_FUNDING = _ix("time_to_funding_h")
I_BOOK_AGE = _ix("book_age_s")
I_AGE_MED = _ix("feature_age_medium_s")
I_AGE_SLOW = _ix("feature_age_slow_s")
I_COV_5S = _ix("coverage_5s")
I_COV_1M = _ix("coverage_1m")
I_COV_1H = _ix("coverage_1h")
I_QUALITY = _ix("quality_score")
I_LIQ_NOTIONAL_1M = _ix("liq_notional_1m")
I_LIQ_COUNT_5M = _ix("liq_count_5m")
I_LIQ_IMB_5M = _ix("liq_imbalance_5m")
I_OI_CHG_5M = _ix("oi_change_5m")
I_OI_CHG_1H = _ix("oi_change_1h")

# --- Kernel input rows (built by rows.py). ----------------------------------------------------------------------

KIND_TRADE, KIND_MARK, KIND_BATCH, KIND_BAR, KIND_LIQ, KIND_OI = 1, 2, 3, 4, 5, 6
# Trade rows.
X_PRICE, X_QTY, X_SELL = 0, 1, 2
# Mark-price rows (aux[0]: next funding time, µs).
X_MARK, X_INDEX, X_FUNDING = 0, 1, 2
# Liquidation rows (time: trade time) and open-interest rows (time: the sample's).
X_LIQ_PRICE, X_LIQ_QTY, X_LIQ_AVG, X_LIQ_FILLED, X_LIQ_SELL = 0, 1, 2, 3, 4
X_OI = 0
# Batch rows (aux[0]: sequence, aux[1]: book exchange time µs): the book after the batch, best first.
X_HAS_BOOK, X_NBID, X_NASK = 0, 1, 2
X_BID_PX = 3
X_BID_QTY = X_BID_PX + BOOK_LEVELS
X_ASK_PX = X_BID_QTY + BOOK_LEVELS
X_ASK_QTY = X_ASK_PX + BOOK_LEVELS
# Bar rows (time: open + BAR_US); NaN where the file lacks a column.
X_OPEN, X_HIGH, X_LOW, X_CLOSE, X_VOLUME, X_QUOTE, X_COUNT, X_TAKER_BASE, X_TAKER_QUOTE = range(9)
N_X = X_ASK_QTY + BOOK_LEVELS

# --- Kernel state. ------------------------------------------------------------------------------------------------

RING_CAPACITY = 8192  # power of two; > 60 s of 10 ms batches, the finest ingest micro-batch
RING_MASK = RING_CAPACITY - 1
RESUM_EVERY = 4096  # re-add window sums from the ring to bound float drift
SEC_SLOTS = 512  # >= RV5_WINDOW_SECONDS + 1
MIN_SLOTS = 128  # >= 61 minutes + the 5-min lookback
WINDOWS_US: tuple[int, ...] = (1 * US, 5 * US, 10 * US, 20 * US, 30 * US, 60 * US)
W1, W5, W10, W20, W30, W60 = range(6)
N_WINDOWS = len(WINDOWS_US)

# Summable columns of a ring sample.
C_COV = 0  # µs of window time this sample vouches for
C_BOOK = 1  # 1 if the batch had a valid BookSnapshot
C_OFI = 2  # OFI increment from the previous top of book
C_TOP_DEPTH = 3  # (bid_qty + ask_qty) / 2 at the best level
C_BUY = 4  # aggressor-buy volume
C_SELL = 5  # aggressor-sell volume
C_TRADES = 6
C_NOTIONAL = 7  # sum(price * qty)
C_VOLUME = 8
C_NBUY = 9
C_NSELL = 10
C_LARGE = 11  # volume of large trades
C_SPREAD = 12  # spread_bps when the batch had a book
C_ONE = 13  # 1 per sample
C_FLOW = 14  # 1 if buy/sell/count/notional are known (not for OHLCV-only klines)
N_COLS = 15

# Minute bucket columns.
M_OPEN, M_HIGH, M_LOW, M_CLOSE, M_COV, M_BUY, M_SELL, M_BUY_NOTIONAL, M_NOTIONAL, M_VOLUME, M_TRADES = range(11)
M_FLOW = 11  # 1 if every sample had flow information
M_BAD = 12  # 1 if a sequence break fell into the minute
N_MCOLS = 13

MODE_NONE, MODE_TICKS, MODE_BARS = 0, 1, 2
STATUS_INSUFFICIENT = 1  # a feature that can exist for the input is NaN (or the tick regime is unknown)
STATUS_TIERS_DROPPED = 2

# Integer scalars.
S_MODE = 0
S_LAST_T = 1
S_LAST_VALID_T = 2  # event time of the last batch with a valid book; -1: none since a gap
S_LAST_SEQ = 3
S_HAVE_SEQ = 4
S_APPENDS = 5
S_RING_START = 6
S_RING_END = 7
S_LAST_TRADE_US = 8
S_BREAK_T = 9  # event time of the last sequence break; -1: none
S_HAVE_TOP = 10
S_CUR_SEC = 11
S_PREV_SEC = 12
S_N60 = 13
S_N300 = 14
S_NCNT = 15
S_CUR_SEC_BAD = 16
S_CUR_MIN = 17
S_CUR_MIN_SEQ = 18
S_MED_BLOCK = 19
S_SLOW_BLOCK = 20
S_MED_T = 21
S_SLOW_T = 22
S_N_WARM = 23
S_HAVE_TH = 24
S_HAVE_MARK = 25
S_MARK_T = 26
S_NEXT_FUNDING = 27
S_TRADE_T = 28  # last trade time for inter-arrivals; -1: none
S_N_TRADES = 29
S_N_INTERVALS = 30
S_HAWKES_T = 31
S_BOOK_T = 32
S_MED_SEQ = 33  # first sequence behind the held medium / slow values
S_SLOW_SEQ = 34
S_DERIV_T0 = 35  # event time of the first mark price, liquidation or open-interest sample; -1: none
S_HAVE_LIQ = 36
S_LIQ_END = 37  # liquidations kept so far (absolute ring index of the next)
S_HAVE_OI = 38
S_OI_END = 39
N_SI = 40

# Float scalars.
F_PREV_BID, F_PREV_BQ, F_PREV_ASK, F_PREV_AQ = 0, 1, 2, 3
F_CUR_SEC_PX = 4
F_CUR_SEC_DEPTH = 5
F_PREV_SEC_PX = 6
F_SUM_R2_60 = 7
F_SUM_R2_300 = 8
F_SUM_C = 9
F_SUM_C2 = 10
F_CUR_SEC_TRADES = 11
F_B_BUY, F_B_SELL, F_B_NBUY, F_B_NSELL, F_B_NOTIONAL, F_B_BUY_NOTIONAL, F_B_VOLUME, F_B_LARGE, F_B_TRADES = range(
    12, 21)
F_SIZE_EWMA = 21
F_IA_MEAN = 22
F_IA_VAR = 23
F_HAWKES_BUY = 24
F_HAWKES_SELL = 25
F_MARK = 26
F_INDEX = 27
F_FUNDING = 28
F_VQ1, F_VQ2, F_DQ1, F_DQ2 = 29, 30, 31, 32
N_SF = 33


class KernelState(NamedTuple):
    """All streaming state of one symbol, in fixed-size numpy arrays the kernel updates in place."""

    si: IntArray
    sf: FloatArray
    ring_t: IntArray
    ring_seq: IntArray
    ring_px: FloatArray
    ring_depth: FloatArray
    ring_x: FloatArray  # [RING_CAPACITY, N_COLS]
    win_head: IntArray  # [N_WINDOWS] absolute ring index of each window's oldest sample
    win_sums: FloatArray  # [N_WINDOWS, N_COLS]
    sec_id: IntArray  # [SEC_SLOTS] second held by each slot, -1 empty
    sec_r2: FloatArray  # squared 1 s return of that second, NaN: none
    sec_cnt: FloatArray  # trade count of that second, NaN: unusable
    min_id: IntArray  # [MIN_SLOTS] minute held by each slot, -1 empty
    min_seq: IntArray  # first batch sequence of that minute
    min_x: FloatArray  # [MIN_SLOTS, N_MCOLS]
    cur_min: FloatArray  # [N_MCOLS] the minute being filled
    warm: FloatArray  # [2, REGIME_WARMUP_SECONDS] rv_1m and depth_l10_log samples for the regime terciles
    held: FloatArray  # [N_FEATURES] last evaluated medium/slow values
    held_app: BoolArray  # [N_FEATURES] whether each held value is applicable to the input
    tier: IntArray  # [N_FEATURES] FEATURE_TIERS (an array: runtime tuple indexing is slow in numba)
    covered: FloatArray  # scratch [N_WINDOWS]
    ok: BoolArray  # scratch [N_WINDOWS]
    sub: BoolArray  # scratch [N_WINDOWS]
    row: FloatArray  # scratch [N_COLS]
    vals: FloatArray  # scratch [N_FEATURES]
    app: BoolArray  # scratch [N_FEATURES]
    liq_t: IntArray  # [LIQ_CAPACITY] trade time of each liquidation
    liq_x: FloatArray  # [LIQ_CAPACITY, 2] notional, 1 if a sell
    oi_t: IntArray  # [OI_CAPACITY] time of each kept open-interest sample
    oi_v: FloatArray  # [OI_CAPACITY] its value


def new_kernel_state(thresholds: tuple[float, float, float, float] | None = None) -> KernelState:
    """Fresh state; ``thresholds`` (vol q1, q2, depth q1, q2) presets the regime cut points."""
    si = np.zeros(N_SI, np.int64)
    for k in (S_LAST_VALID_T, S_BREAK_T, S_CUR_SEC, S_PREV_SEC, S_CUR_MIN, S_CUR_MIN_SEQ, S_MED_BLOCK, S_SLOW_BLOCK,
              S_TRADE_T, S_MED_SEQ, S_SLOW_SEQ, S_DERIV_T0):
        si[k] = -1
    sf = np.zeros(N_SF, np.float64)
    sf[F_CUR_SEC_PX] = sf[F_CUR_SEC_DEPTH] = sf[F_PREV_SEC_PX] = NAN
    if thresholds is not None:
        sf[F_VQ1], sf[F_VQ2], sf[F_DQ1], sf[F_DQ2] = thresholds
        si[S_HAVE_TH] = 1
    st = KernelState(
        si=si, sf=sf,
        ring_t=np.zeros(RING_CAPACITY, np.int64), ring_seq=np.zeros(RING_CAPACITY, np.int64),
        ring_px=np.full(RING_CAPACITY, NAN), ring_depth=np.full(RING_CAPACITY, NAN),
        ring_x=np.zeros((RING_CAPACITY, N_COLS), np.float64),
        win_head=np.zeros(N_WINDOWS, np.int64), win_sums=np.zeros((N_WINDOWS, N_COLS), np.float64),
        sec_id=np.full(SEC_SLOTS, -1, np.int64), sec_r2=np.full(SEC_SLOTS, NAN), sec_cnt=np.full(SEC_SLOTS, NAN),
        min_id=np.full(MIN_SLOTS, -1, np.int64), min_seq=np.full(MIN_SLOTS, -1, np.int64),
        min_x=np.full((MIN_SLOTS, N_MCOLS), NAN), cur_min=np.zeros(N_MCOLS, np.float64),
        warm=np.zeros((2, REGIME_WARMUP_SECONDS), np.float64),
        held=np.full(N_FEATURES, NAN), held_app=np.ones(N_FEATURES, np.bool_),
        tier=np.array(FEATURE_TIERS, np.int64), covered=np.zeros(N_WINDOWS, np.float64),
        ok=np.zeros(N_WINDOWS, np.bool_), sub=np.zeros(N_WINDOWS, np.bool_),
        row=np.zeros(N_COLS, np.float64), vals=np.full(N_FEATURES, NAN), app=np.ones(N_FEATURES, np.bool_),
        liq_t=np.zeros(LIQ_CAPACITY, np.int64), liq_x=np.zeros((LIQ_CAPACITY, 2), np.float64),
        oi_t=np.zeros(OI_CAPACITY, np.int64), oi_v=np.zeros(OI_CAPACITY, np.float64),
    )
    _reset_minute(st.cur_min)
    return st


# --- The kernel. -------------------------------------------------------------------------------------------------


@_inline
def _reset_minute(cur: FloatArray) -> None:
    cur[:] = 0.0
    cur[M_OPEN] = cur[M_HIGH] = cur[M_LOW] = cur[M_CLOSE] = NAN
    cur[M_FLOW] = 1.0


@_inline
def _add_cols(dst: FloatArray, src: FloatArray, sign: float) -> None:
    for c in range(N_COLS):
        dst[c] += sign * src[c]


@_inline
def _append(st: KernelState, t: int, seq: int, px: float, depth: float) -> None:
    """Append st.row as a ring sample and slide every fine window: O(1) amortised per sample."""
    si = st.si
    start = si[S_RING_START]
    end = si[S_RING_END]
    if end - start > RING_MASK:  # full: the oldest sample leaves every window still holding it
        slot = start & RING_MASK
        for w in range(N_WINDOWS):
            if st.win_head[w] == start:
                _add_cols(st.win_sums[w], st.ring_x[slot], -1.0)
                st.win_head[w] += 1
        start += 1
        si[S_RING_START] = start
    slot = end & RING_MASK
    st.ring_t[slot] = t
    st.ring_seq[slot] = seq
    st.ring_px[slot] = px
    st.ring_depth[slot] = depth
    st.ring_x[slot, :] = st.row
    end += 1
    si[S_RING_END] = end
    for w in range(N_WINDOWS):
        sums = st.win_sums[w]
        _add_cols(sums, st.row, 1.0)
        cutoff = t - WINDOWS_US[w]
        h = st.win_head[w]
        while h < end and st.ring_t[h & RING_MASK] <= cutoff:
            _add_cols(sums, st.ring_x[h & RING_MASK], -1.0)
            h += 1
        st.win_head[w] = h
        if h == end:
            sums[:] = 0.0  # empty: exactly zero, whatever the drift
    si[S_APPENDS] += 1
    if si[S_APPENDS] % RESUM_EVERY == 0:
        for w in range(N_WINDOWS):
            sums = st.win_sums[w]
            sums[:] = 0.0
            for i in range(st.win_head[w], end):
                _add_cols(sums, st.ring_x[i & RING_MASK], 1.0)


@_inline
def _covered_us(st: KernelState, w: int, now: int) -> float:
    """Vouched time inside (now - width, now]; the first vouching sample is clipped at the window start."""
    end = st.si[S_RING_END]
    i = st.win_head[w]
    while i < end and st.ring_x[i & RING_MASK, C_COV] == 0.0:
        i += 1  # samples without a book vouch for nothing
    if i == end:
        return 0.0
    slot = i & RING_MASK
    c = st.ring_x[slot, C_COV]
    inside = float(st.ring_t[slot] - (now - WINDOWS_US[w]))
    return float(st.win_sums[w, C_COV] - c + min(c, inside))


@_inline
def _reference(st: KernelState, w: int, now: int) -> int:
    """Ring slot of the last sample at or before the window start if it is recent enough; -1 otherwise."""
    i = st.win_head[w] - 1
    if i < st.si[S_RING_START]:
        return -1
    slot = i & RING_MASK
    if st.ring_t[slot] < now - WINDOWS_US[w] - MAX_SAMPLE_GAP_US:
        return -1
    return int(slot)


@_jit
def _sec_push(si: IntArray, sf: FloatArray, sec_id: IntArray, sec_r2: FloatArray, sec_cnt: FloatArray, sec: int,
              r2: float, cnt: float) -> None:
    """Complete second ``sec`` (NaN: no return / no count) and slide the 60 s and 300 s sums."""
    old = sec - RV_WINDOW_SECONDS
    slot = old % SEC_SLOTS
    if sec_id[slot] == old and not math.isnan(sec_r2[slot]):
        sf[F_SUM_R2_60] -= sec_r2[slot]
        si[S_N60] -= 1
    old = sec - RV5_WINDOW_SECONDS
    slot = old % SEC_SLOTS
    if sec_id[slot] == old:
        if not math.isnan(sec_r2[slot]):
            sf[F_SUM_R2_300] -= sec_r2[slot]
            si[S_N300] -= 1
        if not math.isnan(sec_cnt[slot]):
            sf[F_SUM_C] -= sec_cnt[slot]
            sf[F_SUM_C2] -= sec_cnt[slot] * sec_cnt[slot]
            si[S_NCNT] -= 1
        sec_id[slot] = -1
    slot = sec % SEC_SLOTS
    sec_id[slot] = sec
    sec_r2[slot] = r2
    sec_cnt[slot] = cnt
    if not math.isnan(r2):
        sf[F_SUM_R2_60] += r2
        sf[F_SUM_R2_300] += r2
        si[S_N60] += 1
        si[S_N300] += 1
    if not math.isnan(cnt):
        sf[F_SUM_C] += cnt
        sf[F_SUM_C2] += cnt * cnt
        si[S_NCNT] += 1
    if si[S_N60] == 0:
        sf[F_SUM_R2_60] = 0.0
    if si[S_N300] == 0:
        sf[F_SUM_R2_300] = 0.0
    if si[S_NCNT] == 0:
        sf[F_SUM_C] = sf[F_SUM_C2] = 0.0


@_jit
def _sec_reset(st: KernelState) -> None:
    st.sec_id[:] = -1
    st.si[S_N60] = st.si[S_N300] = st.si[S_NCNT] = 0
    st.sf[F_SUM_R2_60] = st.sf[F_SUM_R2_300] = st.sf[F_SUM_C] = st.sf[F_SUM_C2] = 0.0


@_inline
def _rv_1m(st: KernelState) -> float:
    n = st.si[S_N60]
    if n < MIN_WINDOW_COVERAGE * RV_WINDOW_SECONDS:
        return NAN
    return realized_vol(st.sf[F_SUM_R2_60], n, RV_WINDOW_SECONDS)


@_inline
def _sec_observe(st: KernelState, t: int, px: float, depth: float, broke: bool, trades: float) -> float:
    """Advance the 1 s grid to t; returns the depth close of the second just completed with a price, else NaN."""
    si, sf = st.si, st.sf
    sec = t // US
    closed_depth = NAN
    cur = si[S_CUR_SEC]
    if cur >= 0 and sec > cur:
        has_close = not math.isnan(sf[F_CUR_SEC_PX])
        r2 = NAN
        if has_close and si[S_PREV_SEC] == cur - 1:
            r = log_return(sf[F_CUR_SEC_PX], sf[F_PREV_SEC_PX])
            r2 = r * r
        cnt = sf[F_CUR_SEC_TRADES] if has_close and si[S_CUR_SEC_BAD] == 0 else NAN
        _sec_push(si, sf, st.sec_id, st.sec_r2, st.sec_cnt, cur, r2, cnt)
        if has_close:
            si[S_PREV_SEC] = cur
            sf[F_PREV_SEC_PX] = sf[F_CUR_SEC_PX]
            closed_depth = sf[F_CUR_SEC_DEPTH]
        if sec - cur - 1 >= RV5_WINDOW_SECONDS:
            _sec_reset(st)  # a gap longer than every window: nothing inside survives
        else:
            for empty in range(cur + 1, sec):
                _sec_push(si, sf, st.sec_id, st.sec_r2, st.sec_cnt, empty, NAN, NAN)
        sf[F_CUR_SEC_PX] = sf[F_CUR_SEC_DEPTH] = NAN
        sf[F_CUR_SEC_TRADES] = 0.0
        si[S_CUR_SEC_BAD] = 0
    si[S_CUR_SEC] = sec
    if broke:
        si[S_PREV_SEC] = -1  # no 1 s return across a break
        si[S_CUR_SEC_BAD] = 1
    if not math.isnan(px):
        sf[F_CUR_SEC_PX] = px
        sf[F_CUR_SEC_DEPTH] = depth
    sf[F_CUR_SEC_TRADES] += trades
    return closed_depth


@_jit
def _sorted(values: FloatArray) -> FloatArray:
    """Insertion sort of a copy: run once per symbol on 120 values, and far cheaper to compile than np.sort."""
    out = values.copy()
    for i in range(1, out.shape[0]):
        v = out[i]
        j = i - 1
        while j >= 0 and out[j] > v:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = v
    return out


@_jit
def _warm_up(st: KernelState, depth: float) -> None:
    """Collect (rv_1m, depth) per completed second until the regime terciles can be frozen."""
    si, sf = st.si, st.sf
    rv = _rv_1m(st)
    if si[S_HAVE_TH] == 1 or math.isnan(rv) or math.isnan(depth):
        return
    n = si[S_N_WARM]
    st.warm[0, n] = rv
    st.warm[1, n] = depth
    n += 1
    si[S_N_WARM] = n
    if n == REGIME_WARMUP_SECONDS:
        v = _sorted(st.warm[0])
        dd = _sorted(st.warm[1])
        sf[F_VQ1] = interpolated_quantile(v, 1.0 / 3.0)
        sf[F_VQ2] = interpolated_quantile(v, 2.0 / 3.0)
        sf[F_DQ1] = interpolated_quantile(dd, 1.0 / 3.0)
        sf[F_DQ2] = interpolated_quantile(dd, 2.0 / 3.0)
        si[S_HAVE_TH] = 1


@_jit
def _min_close(st: KernelState) -> None:
    """File the minute being filled into its slot and start an empty one."""
    m = st.si[S_CUR_MIN]
    if m >= 0:
        slot = m % MIN_SLOTS
        st.min_id[slot] = m
        st.min_seq[slot] = st.si[S_CUR_MIN_SEQ]
        st.min_x[slot, :] = st.cur_min
    _reset_minute(st.cur_min)
    st.si[S_CUR_MIN_SEQ] = -1


@_inline
def _min_observe(st: KernelState, t: int, seq: int, px: float, broke: bool) -> None:
    """Fold a tick sample (st.row and the batch's buy notional) into its minute bucket."""
    si, sf = st.si, st.sf
    m = t // MINUTE_US
    if si[S_CUR_MIN] >= 0 and m > si[S_CUR_MIN]:
        _min_close(st)
    si[S_CUR_MIN] = m
    cur = st.cur_min
    if si[S_CUR_MIN_SEQ] < 0:
        si[S_CUR_MIN_SEQ] = seq
    if not math.isnan(px):
        if math.isnan(cur[M_OPEN]):
            cur[M_OPEN] = cur[M_HIGH] = cur[M_LOW] = px
        cur[M_HIGH] = max(cur[M_HIGH], px)
        cur[M_LOW] = min(cur[M_LOW], px)
        cur[M_CLOSE] = px
    row = st.row
    cur[M_COV] += row[C_COV]
    cur[M_BUY] += row[C_BUY]
    cur[M_SELL] += row[C_SELL]
    cur[M_BUY_NOTIONAL] += sf[F_B_BUY_NOTIONAL]
    cur[M_NOTIONAL] += row[C_NOTIONAL]
    cur[M_VOLUME] += row[C_VOLUME]
    cur[M_TRADES] += row[C_TRADES]
    if broke:
        cur[M_BAD] = 1.0


@_inline
def _on_trade(st: KernelState, t: int, price: float, qty: float, sell: bool) -> None:
    si, sf = st.si, st.sf
    notional = price * qty
    if sell:
        sf[F_B_SELL] += qty
        sf[F_B_NSELL] += 1.0
    else:
        sf[F_B_BUY] += qty
        sf[F_B_NBUY] += 1.0
        sf[F_B_BUY_NOTIONAL] += notional
    sf[F_B_TRADES] += 1.0
    sf[F_B_NOTIONAL] += notional
    sf[F_B_VOLUME] += qty
    n = si[S_N_TRADES]
    # "Large" is relative to the EWMA size before this trade.
    if n >= TRADE_SIZE_WARMUP and qty >= LARGE_TRADE_MULTIPLE * sf[F_SIZE_EWMA]:
        sf[F_B_LARGE] += qty
    sf[F_SIZE_EWMA] = qty if n == 0 else ewma_update(sf[F_SIZE_EWMA], qty, TRADE_SIZE_ALPHA)
    si[S_N_TRADES] = n + 1
    last = si[S_TRADE_T]
    tt = t if last < 0 else max(t, last)
    if last >= 0:
        dt = (tt - last) / 1e6
        if si[S_N_INTERVALS] == 0:
            sf[F_IA_MEAN], sf[F_IA_VAR] = dt, 0.0
        else:
            sf[F_IA_MEAN], sf[F_IA_VAR] = ewm_moments(sf[F_IA_MEAN], sf[F_IA_VAR], dt, INTERARRIVAL_ALPHA)
        si[S_N_INTERVALS] += 1
    si[S_TRADE_T] = tt
    if si[S_HAWKES_T] > 0:
        elapsed = (tt - si[S_HAWKES_T]) / 1e6
        sf[F_HAWKES_BUY] = decayed(sf[F_HAWKES_BUY], elapsed, HAWKES_DECAY_S)
        sf[F_HAWKES_SELL] = decayed(sf[F_HAWKES_SELL], elapsed, HAWKES_DECAY_S)
    if sell:
        sf[F_HAWKES_SELL] += 1.0
    else:
        sf[F_HAWKES_BUY] += 1.0
    si[S_HAWKES_T] = tt
    si[S_LAST_TRADE_US] = max(si[S_LAST_TRADE_US], t)


@_inline
def _on_mark(st: KernelState, t: int, next_funding: int, mark: float, index: float, funding: float) -> None:
    if st.si[S_DERIV_T0] < 0:
        st.si[S_DERIV_T0] = t
    st.sf[F_MARK] = mark
    st.sf[F_INDEX] = index
    st.sf[F_FUNDING] = funding
    st.si[S_MARK_T] = t
    st.si[S_NEXT_FUNDING] = next_funding
    st.si[S_HAVE_MARK] = 1


@_inline
def _on_liquidation(st: KernelState, t_raw: int, x: FloatArray) -> None:
    """Keep one liquidation's notional and side at its trade time (never before the previous one's)."""
    si = st.si
    end = si[S_LIQ_END]
    t = t_raw
    if end > 0:
        t = max(t, st.liq_t[(end - 1) & LIQ_MASK])
    if si[S_DERIV_T0] < 0:
        si[S_DERIV_T0] = t
    slot = end & LIQ_MASK
    st.liq_t[slot] = t
    st.liq_x[slot, 0] = liquidation_notional(x[X_LIQ_PRICE], x[X_LIQ_QTY], x[X_LIQ_AVG], x[X_LIQ_FILLED])
    st.liq_x[slot, 1] = x[X_LIQ_SELL]
    si[S_LIQ_END] = end + 1
    si[S_HAVE_LIQ] = 1


@_inline
def _on_open_interest(st: KernelState, t: int, value: float) -> None:
    """Keep an open-interest sample: a new slot once the newest kept one is OI_MIN_SPACING_US after its
    predecessor, else it replaces the newest. A sample no newer than the newest is ignored."""
    si = st.si
    if si[S_DERIV_T0] < 0:
        si[S_DERIV_T0] = t
    end = si[S_OI_END]
    if end > 0:
        newest = (end - 1) & OI_MASK
        if t <= st.oi_t[newest]:
            return
        if end > 1 and st.oi_t[newest] - st.oi_t[(end - 2) & OI_MASK] < OI_MIN_SPACING_US:
            st.oi_t[newest] = t
            st.oi_v[newest] = value
            return
    slot = end & OI_MASK
    st.oi_t[slot] = t
    st.oi_v[slot] = value
    si[S_OI_END] = end + 1
    si[S_HAVE_OI] = 1


@_inline
def _oi_at(st: KernelState, at: int) -> int:
    """Ring slot of the newest kept open-interest sample at or before ``at`` if at most OI_STALE_US older; -1."""
    end = st.si[S_OI_END]
    for i in range(end - 1, max(end - OI_CAPACITY, 0) - 1, -1):
        slot = i & OI_MASK
        if st.oi_t[slot] <= at:
            return slot if st.oi_t[slot] >= at - OI_STALE_US else -1
    return -1


@_jit
def _derivatives(st: KernelState, t: int, ticks: bool, ok: BoolArray) -> None:
    """The liquidation and open-interest features (medium tier)."""
    si = st.si
    vals, app = st.vals, st.app
    t0 = si[S_DERIV_T0]
    have_liq = ticks and si[S_HAVE_LIQ] == 1
    n1 = 0.0
    notional1 = 0.0
    n5 = 0.0
    sell5 = 0.0
    buy5 = 0.0
    end = si[S_LIQ_END]
    first = max(end - LIQ_CAPACITY, 0)
    reached1 = first == 0  # every liquidation since the start is still kept
    reached5 = first == 0
    for i in range(end - 1, first - 1, -1):
        slot = i & LIQ_MASK
        lt = st.liq_t[slot]
        if lt <= t - LIQ_LONG_US:
            reached1 = reached5 = True
            break
        if lt <= t - LIQ_SHORT_US:
            reached1 = True
        if lt > t:
            continue  # after this batch: counted once the batches get there
        notional = st.liq_x[slot, 0]
        n5 += 1.0
        if st.liq_x[slot, 1] > 0.5:
            sell5 += notional
        else:
            buy5 += notional
        if lt > t - LIQ_SHORT_US:
            n1 += 1.0
            notional1 += notional
    last = si[S_CUR_MIN] - 1
    valid1 = have_liq and 0 <= t0 <= t - LIQ_SHORT_US and reached1 and ok[W60]
    valid5 = (have_liq and 0 <= t0 <= t - LIQ_LONG_US and reached5
              and _n_valid_minutes(st.min_id, st.min_x, last, 5.0) >= MIN_WINDOW_COVERAGE * 5)
    _put(vals, app, I_LIQ_NOTIONAL_1M, notional1 if valid1 else NAN, have_liq)
    _put(vals, app, I_LIQ_COUNT_5M, window_count(n5) if valid5 else NAN, have_liq)
    _put(vals, app, I_LIQ_IMB_5M, liquidation_imbalance(sell5, buy5) if valid5 else NAN,
         have_liq and not (valid5 and n5 == 0.0))
    have_oi = ticks and si[S_HAVE_OI] == 1
    now = _oi_at(st, t) if have_oi else -1
    ref5 = _oi_at(st, t - OI_SHORT_US) if now >= 0 else -1
    ref1h = _oi_at(st, t - OI_LONG_US) if now >= 0 else -1
    _put(vals, app, I_OI_CHG_5M, relative_change(st.oi_v[now], st.oi_v[ref5]) if ref5 >= 0 else NAN, have_oi)
    _put(vals, app, I_OI_CHG_1H, relative_change(st.oi_v[now], st.oi_v[ref1h]) if ref1h >= 0 else NAN, have_oi)


@_inline
def _clear_batch(sf: FloatArray) -> None:
    for k in range(F_B_BUY, F_B_TRADES + 1):
        sf[k] = 0.0


@_inline
def _on_batch(st: KernelState, t_raw: int, seq: int, book_t: int, x: FloatArray) -> None:
    """Fold the end of one TickBatch (its book and the trades folded before it) into every structure."""
    si, sf = st.si, st.sf
    si[S_MODE] = MODE_TICKS
    t = max(t_raw, si[S_LAST_T])  # event time never goes backwards inside the state
    si[S_LAST_T] = t
    broke = si[S_HAVE_SEQ] == 1 and seq != si[S_LAST_SEQ] + 1
    si[S_HAVE_SEQ] = 1
    si[S_LAST_SEQ] = seq
    if broke:
        si[S_BREAK_T] = t
    row = st.row
    row[:] = 0.0
    px = NAN
    depth = NAN
    if x[X_HAS_BOOK] > 0.5:
        bid, bq, ask, aq = x[X_BID_PX], x[X_BID_QTY], x[X_ASK_PX], x[X_ASK_QTY]
        px = mid_price(bid, ask)
        last_valid = si[S_LAST_VALID_T]
        gap = t - last_valid if last_valid >= 0 else MAX_SAMPLE_GAP_US + 1
        in_stream = gap <= MAX_SAMPLE_GAP_US and not broke  # a longer gap is an outage: it covers nothing
        row[C_COV] = gap if in_stream else 0.0
        row[C_BOOK] = 1.0
        row[C_TOP_DEPTH] = (bq + aq) / 2.0
        if si[S_HAVE_TOP] == 1 and in_stream:
            row[C_OFI] = ofi_increment((sf[F_PREV_BID], sf[F_PREV_BQ], sf[F_PREV_ASK], sf[F_PREV_AQ]),
                                       (bid, bq, ask, aq))
        sf[F_PREV_BID], sf[F_PREV_BQ], sf[F_PREV_ASK], sf[F_PREV_AQ] = bid, bq, ask, aq
        si[S_HAVE_TOP] = 1
        si[S_LAST_VALID_T] = t
        row[C_SPREAD] = spread_bps(bid, ask)
        nb = min(int(x[X_NBID]), DEPTH_LEVELS)
        na = min(int(x[X_NASK]), DEPTH_LEVELS)
        qb = 0.0
        for i in range(nb):
            qb += x[X_BID_QTY + i]
        qa = 0.0
        for i in range(na):
            qa += x[X_ASK_QTY + i]
        depth = depth_log(qb + qa)
        si[S_BOOK_T] = book_t
    else:
        si[S_HAVE_TOP] = 0  # the book is unknown: OFI restarts from the next valid top
        si[S_LAST_VALID_T] = -1
        si[S_BOOK_T] = 0
    row[C_BUY] = sf[F_B_BUY]
    row[C_SELL] = sf[F_B_SELL]
    row[C_TRADES] = sf[F_B_TRADES]
    row[C_NOTIONAL] = sf[F_B_NOTIONAL]
    row[C_VOLUME] = sf[F_B_VOLUME]
    row[C_NBUY] = sf[F_B_NBUY]
    row[C_NSELL] = sf[F_B_NSELL]
    row[C_LARGE] = sf[F_B_LARGE]
    row[C_ONE] = 1.0
    row[C_FLOW] = 1.0
    _append(st, t, seq, px, depth)
    closed_depth = _sec_observe(st, t, px, depth, broke, sf[F_B_TRADES])
    if not math.isnan(closed_depth):
        _warm_up(st, closed_depth)
    _min_observe(st, t, seq, px, broke)
    _clear_batch(sf)


@_jit
def _on_bar(st: KernelState, t_raw: int, x: FloatArray) -> None:
    """Fold one 1-minute kline: one ring sample covering the whole bar, and one minute bucket."""
    si = st.si
    si[S_MODE] = MODE_BARS
    t = max(t_raw, si[S_LAST_T])
    si[S_LAST_T] = t
    seq = si[S_LAST_SEQ] + 1
    si[S_LAST_SEQ] = seq
    si[S_HAVE_SEQ] = 1
    volume = x[X_VOLUME]
    flow = not (math.isnan(x[X_QUOTE]) or math.isnan(x[X_COUNT]) or math.isnan(x[X_TAKER_BASE])
                or math.isnan(x[X_TAKER_QUOTE]))
    row = st.row
    row[:] = 0.0
    row[C_COV] = BAR_US
    row[C_VOLUME] = volume
    row[C_ONE] = 1.0
    if flow:
        row[C_BUY] = x[X_TAKER_BASE]
        row[C_SELL] = volume - x[X_TAKER_BASE]
        row[C_TRADES] = x[X_COUNT]
        row[C_NOTIONAL] = x[X_QUOTE]
        row[C_FLOW] = 1.0
    close = x[X_CLOSE]
    _append(st, t, seq, close, NAN)
    m = (t - BAR_US) // MINUTE_US
    si[S_CUR_MIN] = m
    cur = st.cur_min
    _reset_minute(cur)
    cur[M_OPEN] = x[X_OPEN]
    cur[M_HIGH] = x[X_HIGH]
    cur[M_LOW] = x[X_LOW]
    cur[M_CLOSE] = close
    cur[M_COV] = BAR_US
    cur[M_VOLUME] = volume
    if flow:
        cur[M_BUY] = row[C_BUY]
        cur[M_SELL] = row[C_SELL]
        cur[M_BUY_NOTIONAL] = x[X_TAKER_QUOTE]
        cur[M_NOTIONAL] = x[X_QUOTE]
        cur[M_TRADES] = x[X_COUNT]
    else:
        cur[M_FLOW] = 0.0
    si[S_CUR_MIN_SEQ] = seq
    _min_close(st)  # the bar is complete at its close
    si[S_CUR_MIN] = m + 1


@_inline
def _put(vals: FloatArray, app: BoolArray, i: int, value: float, applicable: bool) -> None:
    vals[i] = value
    app[i] = applicable


@_jit
def _mslot(min_id: IntArray, min_x: FloatArray, m: int) -> int:
    """Slot of minute m if it is filed and valid (a close, >= 50% coverage, no break); else -1."""
    if m < 0:
        return -1
    slot = m % MIN_SLOTS
    if min_id[slot] != m:
        return -1
    if math.isnan(min_x[slot, M_CLOSE]) or min_x[slot, M_COV] < MIN_WINDOW_COVERAGE * MINUTE_US or \
            min_x[slot, M_BAD] > 0.5:
        return -1
    return slot


@_jit
def _min_return(min_id: IntArray, min_x: FloatArray, m: int) -> float:
    a = _mslot(min_id, min_x, m)
    b = _mslot(min_id, min_x, m - 1)
    if a < 0 or b < 0:
        return NAN
    return log_return(min_x[a, M_CLOSE], min_x[b, M_CLOSE])


@_jit
def _n_valid_minutes(min_id: IntArray, min_x: FloatArray, last: int, n: float) -> float:
    k = 0.0
    for m in range(last - int(n) + 1, last + 1):
        if _mslot(min_id, min_x, m) >= 0:
            k += 1.0
    return k


@_jit
def _minute_ret(min_id: IntArray, min_x: FloatArray, last: int, n: float) -> float:
    """Log close return over the last n completed minutes (ending at minute ``last``)."""
    a = _mslot(min_id, min_x, last)
    b = _mslot(min_id, min_x, last - int(n))
    if a < 0 or b < 0 or _n_valid_minutes(min_id, min_x, last, n) < MIN_WINDOW_COVERAGE * n:
        return NAN
    return log_return(min_x[a, M_CLOSE], min_x[b, M_CLOSE])


@_jit
def _parkinson(min_id: IntArray, min_x: FloatArray, last: int, n: float) -> float:
    total = 0.0
    k = 0.0
    for m in range(last - int(n) + 1, last + 1):
        s = _mslot(min_id, min_x, m)
        if s >= 0:
            r = log_return(min_x[s, M_HIGH], min_x[s, M_LOW])
            total += r * r
            k += 1.0
    if k < MIN_WINDOW_COVERAGE * n:
        return NAN
    return parkinson_vol(total, k, n)


@_jit
def _first_seq_minutes(min_id: IntArray, min_seq: IntArray, last: int, n: float) -> int:
    for m in range(last - int(n), last + 1):
        slot = m % MIN_SLOTS
        if m >= 0 and min_id[slot] == m and min_seq[slot] >= 0:
            return int(min_seq[slot])
    return -1


@_inline
def _fast(st: KernelState, x: FloatArray, t: int, px: float, bars: bool, covered: FloatArray, ok: BoolArray,
          sub: BoolArray) -> None:
    si, sf = st.si, st.sf
    vals, app = st.vals, st.app
    ticks = not bars
    s5 = st.win_sums[W5]
    # Book, point in time.
    if ticks and x[X_HAS_BOOK] > 0.5:
        nb, na = int(x[X_NBID]), int(x[X_NASK])
        bid, bq, ask, aq = x[X_BID_PX], x[X_BID_QTY], x[X_ASK_PX], x[X_ASK_QTY]
        mid = mid_price(bid, ask)
        b5 = 0.0
        a5 = 0.0
        for i in range(min(nb, QI_LEVELS)):
            b5 += x[X_BID_QTY + i]
        for i in range(min(na, QI_LEVELS)):
            a5 += x[X_ASK_QTY + i]
        nb10, na10 = min(nb, DEPTH_LEVELS), min(na, DEPTH_LEVELS)
        b10 = 0.0
        a10 = 0.0
        for i in range(nb10):
            b10 += x[X_BID_QTY + i]
        for i in range(na10):
            a10 += x[X_ASK_QTY + i]
        _put(vals, app, I_SPREAD, spread_bps(bid, ask), True)
        _put(vals, app, I_QI_L1, queue_imbalance(bq, aq), True)
        _put(vals, app, I_QI_L5, queue_imbalance(b5, a5), True)
        _put(vals, app, I_QI_L10, queue_imbalance(b10, a10), True)
        _put(vals, app, I_MICRO, microprice_dev(bid, bq, ask, aq), True)
        _put(vals, app, I_DEPTH, depth_log(b10 + a10), True)
        bid_far = x[X_BID_PX + nb10 - 1]
        ask_far = x[X_ASK_PX + na10 - 1]
        _put(vals, app, I_SLOPE_B, depth_slope(b10, bid_far, mid), True)
        _put(vals, app, I_SLOPE_A, depth_slope(a10, ask_far, mid), True)
        _put(vals, app, I_SLOPE_IMB, slope_imbalance(b10, bid_far, a10, ask_far, mid), True)
        vb = touch_void_bps(bid, x[X_BID_PX + VOID_LEVELS - 1], mid) if nb >= VOID_LEVELS else NAN
        va = touch_void_bps(ask, x[X_ASK_PX + VOID_LEVELS - 1], mid) if na >= VOID_LEVELS else NAN
        _put(vals, app, I_VOID_B, vb, True)
        _put(vals, app, I_VOID_A, va, True)
        nl = min(nb10, na10)
        _put(vals, app, I_PRESSURE, book_pressure(x[X_BID_QTY:X_BID_QTY + nl], x[X_ASK_QTY:X_ASK_QTY + nl], nl), True)
        book_t = si[S_BOOK_T]
        _put(vals, app, I_BOOK_AGE, seconds_since(t, book_t) if book_t > 0 else NAN, True)
    else:
        for i in (I_SPREAD, I_QI_L1, I_QI_L5, I_QI_L10, I_MICRO, I_DEPTH, I_SLOPE_B, I_SLOPE_A, I_SLOPE_IMB, I_VOID_B,
                  I_VOID_A, I_PRESSURE, I_BOOK_AGE):
            _put(vals, app, i, NAN, ticks)
    # Order flow over 1 s and 5 s.
    s1 = st.win_sums[W1]
    _put(vals, app, I_OFI_1S, ofi_normalised(s1[C_OFI], s1[C_TOP_DEPTH], s1[C_BOOK]) if ok[W1] else NAN, ticks)
    _put(vals, app, I_OFI_5S, ofi_normalised(s5[C_OFI], s5[C_TOP_DEPTH], s5[C_BOOK]) if ok[W5] else NAN, ticks)
    flow5 = s5[C_FLOW] == s5[C_ONE]
    _put(vals, app, I_TI_5S, trade_imbalance(s5[C_BUY], s5[C_SELL], s5[C_TRADES]) if ok[W5] and flow5 else NAN,
         not sub[W5] and flow5)
    _put(vals, app, I_TINT_5S, trade_intensity(s5[C_TRADES], covered[W5] / 1e6) if ok[W5] and flow5 else NAN,
         not sub[W5] and flow5)
    _put(vals, app, I_TSI_5S, count_imbalance(s5[C_NBUY], s5[C_NSELL]) if ok[W5] else NAN, ticks)
    _put(vals, app, I_BUY_INT, trade_intensity(s5[C_NBUY], covered[W5] / 1e6) if ok[W5] else NAN, ticks)
    _put(vals, app, I_SELL_INT, trade_intensity(s5[C_NSELL], covered[W5] / 1e6) if ok[W5] else NAN, ticks)
    # Returns over fine windows.
    have_px = not math.isnan(px)
    r1 = _reference(st, W1, t)
    r10 = _reference(st, W10, t)
    r20 = _reference(st, W20, t)
    r60 = _reference(st, W60, t)
    valid = ok[W1] and have_px and r1 >= 0 and not math.isnan(st.ring_px[r1])
    _put(vals, app, I_RET_1S, log_return(px, st.ring_px[r1]) if valid else NAN, not sub[W1])
    valid = ok[W10] and have_px and r10 >= 0 and not math.isnan(st.ring_px[r10])
    _put(vals, app, I_RET_10S, log_return(px, st.ring_px[r10]) if valid else NAN, not sub[W10])
    valid = ok[W60] and have_px and r60 >= 0 and not math.isnan(st.ring_px[r60])
    _put(vals, app, I_RET_60S, log_return(px, st.ring_px[r60]) if valid else NAN, not sub[W60])
    valid = (ok[W10] and ok[W20] and have_px and r10 >= 0 and r20 >= 0 and not math.isnan(st.ring_px[r10])
             and not math.isnan(st.ring_px[r20]))
    _put(vals, app, I_ACCEL_10S, acceleration(px, st.ring_px[r10], st.ring_px[r20]) if valid else NAN, not sub[W20])
    _put(vals, app, I_RV_1M, _rv_1m(st), ticks)
    s30 = st.win_sums[W30]
    flow30 = s30[C_FLOW] == s30[C_ONE]
    vwap_ok = ok[W30] and have_px and flow30
    _put(vals, app, I_VWAP_30S, vwap_gap_bps(px, s30[C_NOTIONAL], s30[C_VOLUME], s30[C_TRADES]) if vwap_ok else NAN,
         not sub[W30] and flow30)
    # Trade timing.
    last_trade = si[S_LAST_TRADE_US]
    _put(vals, app, I_TSINCE, seconds_since(t, last_trade) if ticks and last_trade > 0 else NAN, ticks)
    ia_ok = ticks and ok[W30] and si[S_N_INTERVALS] >= INTERARRIVAL_WARMUP
    _put(vals, app, I_IA, sf[F_IA_MEAN] if ia_ok else NAN, ticks)
    _put(vals, app, I_BURST, burstiness(sf[F_IA_MEAN], sf[F_IA_VAR]) if ia_ok else NAN, ticks)
    _put(vals, app, I_TOD_SIN, time_of_day_sin(t), True)
    _put(vals, app, I_TOD_COS, time_of_day_cos(t), True)
    _put(vals, app, I_COV_5S, fraction(covered[W5], WINDOWS_US[W5]) if not sub[W5] else NAN, not sub[W5])
    _put(vals, app, I_COV_1M, fraction(covered[W60], WINDOWS_US[W60]), True)


@_jit
def _medium(st: KernelState, t: int, px: float, bars: bool, covered: FloatArray, ok: BoolArray,
            sub: BoolArray) -> int:
    """Evaluate the medium tier; returns the first sequence behind its minute-grid features (-1: none)."""
    si, sf = st.si, st.sf
    vals, app = st.vals, st.app
    ticks = not bars
    s30 = st.win_sums[W30]
    s60 = st.win_sums[W60]
    _put(vals, app, I_SPREAD_MEAN, mean_of(s60[C_SPREAD], s60[C_BOOK]) if ok[W60] else NAN, ticks)
    ref = _reference(st, W60, t)
    depth_now = st.ring_depth[(si[S_RING_END] - 1) & RING_MASK]
    valid = ok[W60] and ref >= 0
    _put(vals, app, I_DEPTH_CHG, difference(depth_now, st.ring_depth[ref]) if valid else NAN, ticks)
    _put(vals, app, I_OFI_30S, ofi_normalised(s30[C_OFI], s30[C_TOP_DEPTH], s30[C_BOOK]) if ok[W30] else NAN, ticks)
    flow30 = s30[C_FLOW] == s30[C_ONE]
    flow60 = s60[C_FLOW] == s60[C_ONE]
    _put(vals, app, I_TI_30S, trade_imbalance(s30[C_BUY], s30[C_SELL], s30[C_TRADES]) if ok[W30] and flow30 else NAN,
         not sub[W30] and flow30)
    _put(vals, app, I_TI_1M, trade_imbalance(s60[C_BUY], s60[C_SELL], s60[C_TRADES]) if ok[W60] and flow60 else NAN,
         flow60)
    _put(vals, app, I_TSI_1M, count_imbalance(s60[C_NBUY], s60[C_NSELL]) if ok[W60] else NAN, ticks)
    tint = trade_intensity(s60[C_TRADES], covered[W60] / 1e6) if ok[W60] and flow60 else NAN
    _put(vals, app, I_TINT_1M, tint, flow60)
    large_ok = ok[W30] and si[S_N_TRADES] >= TRADE_SIZE_WARMUP
    _put(vals, app, I_LARGE, share(s30[C_LARGE], s30[C_VOLUME]) if large_ok else NAN, ticks)
    rate = log_rate(s60[C_NOTIONAL], covered[W60] / 1e6) if ok[W60] and flow60 else NAN
    _put(vals, app, I_NOTIONAL, rate, flow60)
    n300 = si[S_N300]
    rv5 = realized_vol(sf[F_SUM_R2_300], n300, RV5_WINDOW_SECONDS) if n300 >= 0.5 * RV5_WINDOW_SECONDS else NAN
    _put(vals, app, I_RV_5M, rv5, ticks)
    # Minute grid: the last 5 (10) completed minutes.
    last = si[S_CUR_MIN] - 1
    mid, mx = st.min_id, st.min_x
    _put(vals, app, I_RET_5M, _minute_ret(mid, mx, last, 5.0), True)
    a = _mslot(mid, mx, last)
    b = _mslot(mid, mx, last - 5)
    c = _mslot(mid, mx, last - 10)
    valid = a >= 0 and b >= 0 and c >= 0 and _n_valid_minutes(mid, mx, last, 10.0) >= MIN_WINDOW_COVERAGE * 10
    _put(vals, app, I_ACCEL_5M, acceleration(st.min_x[a, M_CLOSE], st.min_x[b, M_CLOSE], st.min_x[c, M_CLOSE])
         if valid else NAN, True)
    notional = 0.0
    volume = 0.0
    trades = 0.0
    k = 0.0
    flow = True
    for m in range(last - 4, last + 1):
        s = _mslot(mid, mx, m)
        if s >= 0:
            k += 1.0
            flow = flow and mx[s, M_FLOW] > 0.5
            notional += mx[s, M_NOTIONAL]
            volume += mx[s, M_VOLUME]
            trades += mx[s, M_TRADES]
    valid = a >= 0 and flow and k >= MIN_WINDOW_COVERAGE * 5
    _put(vals, app, I_VWAP_5M, vwap_gap_bps(st.min_x[a, M_CLOSE], notional, volume, trades) if valid else NAN, flow)
    _put(vals, app, I_PK_5M, _parkinson(mid, mx, last, 5.0), True)
    # Derivatives.
    have_mark = ticks and si[S_HAVE_MARK] == 1
    fresh = have_mark and t - si[S_MARK_T] <= MARK_STALE_US
    _put(vals, app, I_FUNDING, to_bps(sf[F_FUNDING]) if fresh else NAN, have_mark)
    _put(vals, app, I_BASIS, relative_bps(sf[F_MARK], sf[F_INDEX]) if fresh else NAN, have_mark)
    _put(vals, app, I_MARK_GAP, relative_bps(px, sf[F_MARK]) if fresh and not math.isnan(px) else NAN, have_mark)
    _put(vals, app, I_TO_FUNDING, hours_until(si[S_NEXT_FUNDING], t) if fresh else NAN, have_mark)
    _derivatives(st, t, ticks, ok)
    return _first_seq_minutes(mid, st.min_seq, last, 10.0)


@_jit
def _slow(st: KernelState, t: int, bars: bool, ok: BoolArray) -> int:
    """Evaluate the slow tier; returns the first sequence behind its minute-grid features (-1: none)."""
    si, sf = st.si, st.sf
    vals, app = st.vals, st.app
    ticks = not bars
    elapsed = (t - si[S_HAWKES_T]) / 1e6 if si[S_HAWKES_T] > 0 else 0.0
    hb = hawkes_intensity(sf[F_HAWKES_BUY], elapsed, HAWKES_DECAY_S) if ok[W30] else NAN
    hs = hawkes_intensity(sf[F_HAWKES_SELL], elapsed, HAWKES_DECAY_S) if ok[W30] else NAN
    _put(vals, app, I_HAWKES_B, hb, ticks)
    _put(vals, app, I_HAWKES_S, hs, ticks)
    _put(vals, app, I_HAWKES_IMB, count_imbalance(hb, hs), ticks)
    ncnt = si[S_NCNT]
    branching = hawkes_branching(sf[F_SUM_C], sf[F_SUM_C2], ncnt) if ncnt >= 0.5 * RV5_WINDOW_SECONDS else NAN
    _put(vals, app, I_BRANCHING, branching, ticks)
    last = si[S_CUR_MIN] - 1
    mid, mx = st.min_id, st.min_x
    _put(vals, app, I_RET_15M, _minute_ret(mid, mx, last, 15.0), True)
    _put(vals, app, I_RET_1H, _minute_ret(mid, mx, last, 60.0), True)
    _put(vals, app, I_PK_1H, _parkinson(mid, mx, last, 60.0), True)
    # One pass over the last 60 minutes for the return-based statistics.
    sum_r2 = 0.0
    n_r = 0
    sum_r2_5 = 0.0
    n_r5 = 0
    sum_rq = 0.0
    sum_q2 = 0.0
    sum_amihud = 0.0
    n_amihud = 0
    flow = True
    n_valid = 0
    sum_c = 0.0
    sum_c2 = 0.0
    sum_lv = 0.0
    sum_lv2 = 0.0
    n_lv = 0
    returns = np.full(60, NAN)
    for k in range(60):
        m = last - 59 + k
        s = _mslot(mid, mx, m)
        if s < 0:
            continue
        n_valid += 1
        b = st.min_x[s]
        close = b[M_CLOSE]
        sum_c += close
        sum_c2 += close * close
        if b[M_VOLUME] > 0.0:
            lv = math.log(b[M_VOLUME])
            sum_lv += lv
            sum_lv2 += lv * lv
            n_lv += 1
        flow = flow and b[M_FLOW] > 0.5
        r = _min_return(mid, mx, m)
        if math.isnan(r):
            continue
        returns[k] = r
        sum_r2 += r * r
        n_r += 1
        if k >= 55:
            sum_r2_5 += r * r
            n_r5 += 1
        q = 2.0 * b[M_BUY_NOTIONAL] - b[M_NOTIONAL]  # buy minus sell quote volume
        sum_rq += r * q
        sum_q2 += q * q
        if b[M_NOTIONAL] > 0.0:
            sum_amihud += abs(r) / b[M_NOTIONAL]
            n_amihud += 1
    enough = n_r >= MIN_WINDOW_COVERAGE * 60
    _put(vals, app, I_RV_1H, realized_vol(sum_r2, n_r, 60) if enough else NAN, True)
    short_ok = enough and n_r5 >= MIN_WINDOW_COVERAGE * 5
    _put(vals, app, I_RV_RATIO, vol_ratio(sum_r2_5, n_r5, sum_r2, n_r) if short_ok else NAN, True)
    sum_q = 0.0
    n_q = 0
    for k in range(VR_LAG - 1, 60):
        total = 0.0
        for j in range(k - VR_LAG + 1, k + 1):
            total += returns[j]
        if not math.isnan(total):
            sum_q += total * total
            n_q += 1
    vr_ok = enough and n_q >= MIN_WINDOW_COVERAGE * (60 - VR_LAG + 1)
    _put(vals, app, I_VR, variance_ratio(sum_q, n_q, sum_r2, n_r, VR_LAG) if vr_ok else NAN, True)
    _put(vals, app, I_KYLE, kyle_lambda(sum_rq, sum_q2) if enough and flow else NAN, flow)
    amihud_ok = flow and n_amihud >= MIN_WINDOW_COVERAGE * 60
    _put(vals, app, I_AMIHUD, amihud(sum_amihud, n_amihud) if amihud_ok else NAN, flow)
    a = _mslot(mid, mx, last)
    pz = NAN
    if a >= 0 and n_valid >= MIN_WINDOW_COVERAGE * 60:
        mean = sum_c / n_valid
        pz = zscore(st.min_x[a, M_CLOSE], mean, math.sqrt(max(sum_c2 / n_valid - mean * mean, 0.0)))
    _put(vals, app, I_PZ, pz, True)
    vz = NAN
    if a >= 0 and st.min_x[a, M_VOLUME] > 0.0 and n_lv >= MIN_WINDOW_COVERAGE * 60:
        mean = sum_lv / n_lv
        vz = zscore(math.log(st.min_x[a, M_VOLUME]), mean, math.sqrt(max(sum_lv2 / n_lv - mean * mean, 0.0)))
    _put(vals, app, I_VOLZ, vz, True)
    _put(vals, app, I_COV_1H, fraction(n_valid, 60.0), True)
    return _first_seq_minutes(mid, st.min_seq, last, 60.0)


@_inline
def _evaluate(st: KernelState, x: FloatArray, tiers_on: bool, out: FloatArray) -> tuple[float, int, int, int]:
    """Write one vector into ``out``; returns (price, status bits, regime index, first sequence)."""
    si = st.si
    vals, app = st.vals, st.app
    t = si[S_LAST_T]
    bars = si[S_MODE] == MODE_BARS
    px = st.ring_px[(si[S_RING_END] - 1) & RING_MASK]
    vals[:] = NAN  # every feature is written below; a forgotten one would stay NaN, not stale
    app[:] = True
    covered, ok, sub = st.covered, st.ok, st.sub
    brk = si[S_BREAK_T]
    for w in range(N_WINDOWS):
        width = WINDOWS_US[w]
        covered[w] = _covered_us(st, w, t)
        sub[w] = bars and width < BAR_US  # a window shorter than the bar cannot exist on klines
        ok[w] = covered[w] >= MIN_WINDOW_COVERAGE * width and not (brk >= 0 and brk > t - width) and not sub[w]
    _fast(st, x, t, px, bars, covered, ok, sub)
    medium_due = tiers_on and t // MEDIUM_EVERY_US != si[S_MED_BLOCK]
    slow_due = tiers_on and t // SLOW_EVERY_US != si[S_SLOW_BLOCK]
    tier = st.tier
    if medium_due:
        si[S_MED_SEQ] = _medium(st, t, px, bars, covered, ok, sub)
        si[S_MED_BLOCK] = t // MEDIUM_EVERY_US
        si[S_MED_T] = t
    if slow_due:
        si[S_SLOW_SEQ] = _slow(st, t, bars, ok)
        si[S_SLOW_BLOCK] = t // SLOW_EVERY_US
        si[S_SLOW_T] = t
    if tiers_on:
        _put(vals, app, I_AGE_MED, seconds_since(t, si[S_MED_T]), True)
        _put(vals, app, I_AGE_SLOW, seconds_since(t, si[S_SLOW_T]), True)
    else:
        # Evaluated afresh on the first batch after the stage has caught up.
        si[S_MED_BLOCK] = si[S_SLOW_BLOCK] = -1
        _put(vals, app, I_AGE_MED, NAN, False)
        _put(vals, app, I_AGE_SLOW, NAN, False)
    regime = -1
    if not bars and si[S_HAVE_TH] == 1:
        sf = st.sf
        regime = regime_index(vals[I_RV_1M], vals[I_DEPTH], sf[F_VQ1], sf[F_VQ2], sf[F_DQ1], sf[F_DQ2])
    insufficient = not bars and regime < 0
    n_app = 0.0
    n_valid = 0.0
    for i in range(N_FEATURES):
        tr = tier[i]
        if tr != TIER_FAST:
            if (medium_due and tr == TIER_MEDIUM) or (slow_due and tr == TIER_SLOW):
                st.held[i] = vals[i]
                st.held_app[i] = app[i]
            # Between evaluations the held value; dropped: NaN (applicability as last known, for the quality score).
            vals[i] = st.held[i] if tiers_on else NAN
            app[i] = st.held_app[i]
        value = vals[i]
        out[i] = value
        if i == I_QUALITY or not app[i]:
            continue
        n_app += 1.0
        if not math.isnan(value):
            n_valid += 1.0
        elif tiers_on or tr == TIER_FAST:
            insufficient = True
    quality = quality_score(n_valid, n_app)
    _put(vals, app, I_QUALITY, quality, True)
    out[I_QUALITY] = quality
    first = st.ring_seq[st.win_head[W60] & RING_MASK]
    if tiers_on:
        if 0 <= si[S_MED_SEQ] < first:
            first = si[S_MED_SEQ]
        if 0 <= si[S_SLOW_SEQ] < first:
            first = si[S_SLOW_SEQ]
    status = (STATUS_INSUFFICIENT if insufficient else 0) | (0 if tiers_on else STATUS_TIERS_DROPPED)
    return px, status, regime, first


@_jit
def fold(st: KernelState, kinds: IntArray, times: IntArray, aux: IntArray, x: FloatArray, tiers_on: bool,
         out: FloatArray, out_px: FloatArray, out_t: IntArray, out_status: IntArray, out_regime: IntArray,
         out_first_seq: IntArray) -> int:
    """Fold rows into the state in order; one vector per batch or bar row. Returns the number of vectors.

    Chunking does not matter: folding rows in one call or in any split gives bit-identical vectors.
    """
    n_out = 0
    for r in range(kinds.shape[0]):
        kind = kinds[r]
        xr = x[r]
        if kind == KIND_TRADE:
            _on_trade(st, times[r], xr[X_PRICE], xr[X_QTY], xr[X_SELL] > 0.5)
            continue
        if kind == KIND_MARK:
            _on_mark(st, times[r], aux[r, 0], xr[X_MARK], xr[X_INDEX], xr[X_FUNDING])
            continue
        if kind == KIND_LIQ:
            _on_liquidation(st, times[r], xr)
            continue
        if kind == KIND_OI:
            _on_open_interest(st, times[r], xr[X_OI])
            continue
        if kind == KIND_BATCH:
            _on_batch(st, times[r], aux[r, 0], aux[r, 1], xr)
        elif kind == KIND_BAR:
            _on_bar(st, times[r], xr)
        else:
            continue
        px, status, regime, first = _evaluate(st, xr, tiers_on, out[n_out])  # the one call site: inlined once
        out_px[n_out] = px
        out_t[n_out] = st.si[S_LAST_T]
        out_status[n_out] = status
        out_regime[n_out] = regime
        out_first_seq[n_out] = first
        n_out += 1
    return n_out


# --- feature_version ----------------------------------------------------------------------------------------------


def code_text(source: str) -> str:
    """Source without docstrings, comments, blank lines and indentation: stable across Python versions."""
    source = textwrap.dedent(source)
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and first.end_lineno is not None):
                drop.update(range(first.lineno, first.end_lineno + 1))
    cut: dict[int, int] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            cut[tok.start[0]] = tok.start[1]
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        if number in drop:
            continue
        text = line[:cut[number]] if number in cut else line
        text = text.strip()
        if text:
            lines.append(text)
    return "\n".join(lines)


def _source(fn: Callable[..., Any]) -> str:
    return code_text(inspect.getsource(getattr(fn, "py_func", fn)))


_HERE = Path(__file__).resolve().parent


def feature_version(defs: Sequence[FeatureDef] = FEATURES) -> str:
    """Short sha256 over the table (names, tiers, windows, formula sources), the policy and the kernel code."""
    h = hashlib.sha256()
    policy = (
        MIN_WINDOW_COVERAGE, MAX_SAMPLE_GAP_US, RV_WINDOW_SECONDS, RV5_WINDOW_SECONDS, REGIME_WARMUP_SECONDS,
        QI_LEVELS, DEPTH_LEVELS, VOID_LEVELS, BOOK_LEVELS, MEDIUM_EVERY_US, SLOW_EVERY_US, MINUTE_US, BAR_US,
        HAWKES_DECAY_S, LARGE_TRADE_MULTIPLE, TRADE_SIZE_ALPHA, TRADE_SIZE_WARMUP, INTERARRIVAL_ALPHA,
        INTERARRIVAL_WARMUP, MARK_STALE_US, VR_LAG, REGIME_LABELS, WINDOWS_US, LIQ_CAPACITY, OI_CAPACITY,
        OI_MIN_SPACING_US, OI_STALE_US, LIQ_SHORT_US, LIQ_LONG_US, OI_SHORT_US, OI_LONG_US,
    )
    h.update(repr(policy).encode())
    for name in ("definitions.py", "rows.py"):
        h.update(code_text((_HERE / name).read_text(encoding="utf-8")).encode())
    for d in defs:
        h.update(f"\x00{d.name}\x00{d.tier}\x00{d.window_s!r}\x00".encode())
        h.update(_source(d.formula).encode())
    return h.hexdigest()[:12]


FEATURE_VERSION: str = feature_version()
