"""The feature contract: names, windows, formulas, policy constants and the ``feature_version`` hash over them.

Everything a model depends on is declared here. ``feature_version`` hashes the names, the windows, the
normalised source of each formula function and the windowing policy constants, so any change of meaning
gives a new version, and the infer stage refuses vectors whose version differs from its model's.

Windowing policy (implemented in ``core.py``):

* Time is exchange event time: a TickBatch's ``ts.exchange_us`` (clamped to be non-decreasing per symbol).
* A window of width W at time t holds the batches with event time in ``(t - W, t]``.
* Coverage: each batch with a valid book "vouches" for the time since the previous valid batch if that gap
  is at most ``MAX_SAMPLE_GAP_US``; a longer gap is an outage and vouches for nothing (and OFI does not
  difference across it). Coverage is the vouched time inside the window divided by W. Below
  ``MIN_WINDOW_COVERAGE`` the feature is NaN and the vector carries WINDOW_INSUFFICIENT.
* A return over W compares the mid now with the mid of the last batch at or before ``t - W``; that batch
  must be at most ``MAX_SAMPLE_GAP_US`` older than the window start.
* ``rv_1m`` uses the last mid of each completed exchange-time second; a 1 s return exists when both
  seconds have a mid. It needs >= 50% of the 60 returns of the last 60 completed seconds.
* Any NaN value in a vector means the vector carries WINDOW_INSUFFICIENT (no quiet NaN, no quiet number).

Regime: ``vol_{low,medium,high}_depth_{thin,medium,thick}``. Per symbol, the first
``REGIME_WARMUP_SECONDS`` completed seconds with a valid ``rv_1m`` are collected; their terciles (1/3 and
2/3 quantiles) of ``rv_1m`` and of ``depth_l10_log`` become that symbol's thresholds, frozen for the life
of the state (or preset thresholds are given to the state). ``x < q1`` is low/thin, ``q1 <= x < q2``
medium, ``x >= q2`` high/thick. Until then, or while ``rv_1m`` is NaN, the regime is "" and the vector
carries WINDOW_INSUFFICIENT.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Windowing policy; part of the feature_version hash.
MIN_WINDOW_COVERAGE = 0.5
MAX_SAMPLE_GAP_US = 1_000_000
RV_WINDOW_SECONDS = 60
REGIME_WARMUP_SECONDS = 120
QI_LEVELS = 5
DEPTH_LEVELS = 10
# Bump when core.py changes what a window, a reference sample or a coverage means (not for refactors).
SEMANTICS_REVISION = 1

VOL_LABELS = ("low", "medium", "high")
DEPTH_LABELS = ("thin", "medium", "thick")
REGIME_LABELS: tuple[str, ...] = tuple(f"vol_{v}_depth_{d}" for v in VOL_LABELS for d in DEPTH_LABELS)

NAN = float("nan")


# --- Formulas. Each is the single definition of its feature's arithmetic; core.py only feeds them. ---


def mid_price(bid: float, ask: float) -> float:
    return (bid + ask) / 2.0


def spread_bps(bid: float, ask: float) -> float:
    """(ask - bid) / mid * 1e4."""
    return (ask - bid) / mid_price(bid, ask) * 1e4


def queue_imbalance(bid_qty: float, ask_qty: float) -> float:
    """(bid_qty - ask_qty) / (bid_qty + ask_qty); for qi_l1 at the best level, for qi_l5 summed over 5 levels."""
    total = bid_qty + ask_qty
    return (bid_qty - ask_qty) / total if total > 0.0 else NAN


def microprice_dev(bid: float, bid_qty: float, ask: float, ask_qty: float) -> float:
    """(microprice - mid) / mid with microprice = (ask * bid_qty + bid * ask_qty) / (bid_qty + ask_qty)."""
    total = bid_qty + ask_qty
    if total <= 0.0:
        return NAN
    micro = (ask * bid_qty + bid * ask_qty) / total
    mid = mid_price(bid, ask)
    return (micro - mid) / mid


TopOfBook = tuple[float, float, float, float]  # (bid, bid_qty, ask, ask_qty)


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


def ofi_normalised(ofi_sum: float, top_depth_sum: float, n_books: float) -> float:
    """Summed OFI over the window divided by the window's mean top depth ((bid_qty + ask_qty) / 2 at L1)."""
    if n_books <= 0.0 or top_depth_sum <= 0.0:
        return NAN
    return ofi_sum / (top_depth_sum / n_books)


def trade_imbalance(buy_volume: float, sell_volume: float, n_trades: float) -> float:
    """Signed (aggressor) volume / total volume; NaN without trades (no flow is not zero imbalance)."""
    total = buy_volume + sell_volume
    if n_trades <= 0.0 or total <= 0.0:
        return NAN
    return (buy_volume - sell_volume) / total


def trade_intensity(n_trades: float, covered_s: float) -> float:
    """Trades per second of covered window time."""
    return n_trades / covered_s if covered_s > 0.0 else NAN


def log_return(mid_now: float, mid_then: float) -> float:
    return math.log(mid_now / mid_then)


def realized_vol(sum_sq_returns: float, n_returns: int, n_slots: int) -> float:
    """sqrt(sum r^2) of 1 s log returns, scaled to n_slots returns when some are missing; not annualised."""
    if n_returns <= 0:
        return NAN
    return math.sqrt(max(sum_sq_returns, 0.0) * n_slots / n_returns)


def vwap_gap_bps(mid: float, notional: float, volume: float, n_trades: float) -> float:
    """(mid - vwap) / vwap * 1e4 with vwap = sum(price * qty) / sum(qty) over the window's trades."""
    if n_trades <= 0.0 or volume <= 0.0:
        return NAN
    vwap = notional / volume
    return (mid - vwap) / vwap * 1e4


def depth_log(total_qty: float) -> float:
    """log of the total quantity (base asset) within DEPTH_LEVELS levels of both sides."""
    return math.log(total_qty) if total_qty > 0.0 else NAN


def seconds_since(now_us: int, then_us: int) -> float:
    return max(now_us - then_us, 0) / 1e6


def tercile_label(x: float, q1: float, q2: float, labels: tuple[str, str, str]) -> str:
    if x < q1:
        return labels[0]
    return labels[1] if x < q2 else labels[2]


def regime_label(rv: float, depth: float, vol_q: tuple[float, float], depth_q: tuple[float, float]) -> str:
    if math.isnan(rv) or math.isnan(depth):
        return ""
    vol = tercile_label(rv, vol_q[0], vol_q[1], VOL_LABELS)
    dep = tercile_label(depth, depth_q[0], depth_q[1], DEPTH_LABELS)
    return f"vol_{vol}_depth_{dep}"


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One output column: its name (a stable contract), its window (None: point-in-time) and its formula."""

    name: str
    window_s: float | None
    formula: Callable[..., float]
    doc: str


FEATURES: tuple[FeatureDef, ...] = (
    FeatureDef("spread_bps", None, spread_bps, "(ask-bid)/mid*1e4 of the BookSnapshot"),
    FeatureDef("qi_l1", None, queue_imbalance, "queue imbalance at the best level"),
    FeatureDef("qi_l5", None, queue_imbalance, "queue imbalance of quantities summed over 5 levels"),
    FeatureDef("microprice_dev", None, microprice_dev, "(microprice-mid)/mid"),
    FeatureDef("ofi_1s", 1.0, ofi_normalised, "sum of OFI increments over 1 s / mean top depth"),
    FeatureDef("ofi_5s", 5.0, ofi_normalised, "sum of OFI increments over 5 s / mean top depth"),
    FeatureDef("trade_imbalance_5s", 5.0, trade_imbalance, "(buy-sell)/(buy+sell) aggressor volume over 5 s"),
    FeatureDef("trade_intensity_5s", 5.0, trade_intensity, "trades per second over 5 s"),
    FeatureDef("ret_1s", 1.0, log_return, "log mid return over 1 s"),
    FeatureDef("ret_10s", 10.0, log_return, "log mid return over 10 s"),
    FeatureDef("ret_60s", 60.0, log_return, "log mid return over 60 s"),
    FeatureDef("rv_1m", 60.0, realized_vol, "realized vol of 1 s mid log returns over 60 s, not annualised"),
    FeatureDef("vwap_gap_bps_30s", 30.0, vwap_gap_bps, "(mid-vwap)/vwap*1e4, vwap over 30 s of trades"),
    FeatureDef("depth_l10_log", None, depth_log, "log of total quantity within 10 levels per side"),
    FeatureDef("time_since_trade_s", None, seconds_since, "seconds since the last trade (event time)"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
# The longest window defines data_window_id.
LONGEST_WINDOW_S = max(f.window_s for f in FEATURES if f.window_s is not None)


def _normalised_source(fn: Callable[..., object]) -> str:
    """Source lines stripped of indentation, blank lines and comment lines: stable across Python versions."""
    lines = (line.strip() for line in inspect.getsource(fn).splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#"))


def feature_version(defs: Sequence[FeatureDef] = FEATURES) -> str:
    """Short sha256 over names, windows, formula sources and the windowing/regime policy."""
    h = hashlib.sha256()
    policy = (
        MIN_WINDOW_COVERAGE, MAX_SAMPLE_GAP_US, RV_WINDOW_SECONDS, REGIME_WARMUP_SECONDS, QI_LEVELS,
        DEPTH_LEVELS, SEMANTICS_REVISION, REGIME_LABELS,
    )
    h.update(repr(policy).encode())
    helpers: tuple[Callable[..., object], ...] = (mid_price, tercile_label, regime_label)
    for fn in helpers:
        h.update(_normalised_source(fn).encode())
    for d in defs:
        h.update(f"\x00{d.name}\x00{d.window_s!r}\x00".encode())
        h.update(_normalised_source(d.formula).encode())
    return h.hexdigest()[:12]


FEATURE_VERSION: str = feature_version()
