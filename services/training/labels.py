"""Triple-barrier labels on 1-minute bars, a cooldown over labels, and class-imbalance weights.

Entry is the close of bar t. The upper barrier is entry x (1 + theta_up), the lower entry x (1 - theta_dn),
the vertical barrier H bars later. A later bar touches the upper barrier when its high >= upper and the lower
when its low <= lower; a bar touching both is labelled DOWN, because inside one bar the order is unknown and
the conservative reading protects a long signal. Neither within H is TIMEOUT, which counts as "not up"
(``outcome``), or, for a model whose ``1 - p_up`` must mean "lower barrier first", is decided by the sign of the
move at the vertical barrier (no label when it is zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import numpy.typing as npt

LABEL_DOWN = 0
LABEL_UP = 1
LABEL_TIMEOUT = 2
LABEL_INCOMPLETE = -1  # fewer than H bars left: no label, never used for training

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Timeout = Literal["not up", "sign"]
TIMEOUTS: tuple[Timeout, ...] = ("not up", "sign")


@dataclass(frozen=True)
class BarrierConfig:
    theta_up: float = 0.006
    theta_dn: float = 0.004
    horizon: int = 5  # bars (minutes on 1-minute klines)

    def __post_init__(self) -> None:
        if not (0 < self.theta_up < 1 and 0 < self.theta_dn < 1):
            raise ValueError(f"barrier widths must be in (0, 1): {self.theta_up}, {self.theta_dn}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 bar, got {self.horizon}")


@dataclass(frozen=True)
class BarrierLabels:
    label: IntArray           # LABEL_* per bar
    touch_index: IntArray     # bar index where the label was decided (t + H on timeout), -1 if incomplete
    touch_price: FloatArray   # barrier price touched, or the close at the vertical barrier
    mfe: FloatArray           # max favourable excursion (high / entry - 1) up to the touch
    time_to_peak: IntArray    # bars from entry to the highest high before the touch

    @property
    def is_up(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.label == LABEL_UP, dtype=np.bool_)

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.label != LABEL_INCOMPLETE, dtype=np.bool_)


@numba.njit(cache=True)
def _triple_barrier_kernel(
    close: FloatArray, high: FloatArray, low: FloatArray, theta_up: float, theta_dn: float, horizon: int
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, IntArray]:
    n = close.shape[0]
    label = np.full(n, -1, np.int64)
    touch = np.full(n, -1, np.int64)
    price = np.full(n, np.nan)
    mfe = np.full(n, np.nan)
    peak = np.full(n, -1, np.int64)
    for t in range(n - horizon):
        entry = close[t]
        upper = entry * (1.0 + theta_up)
        lower = entry * (1.0 - theta_dn)
        best_high = -np.inf
        best_j = t
        decided = False
        for j in range(t + 1, t + horizon + 1):
            if high[j] > best_high:
                best_high = high[j]
                best_j = j
            hit_up = high[j] >= upper
            hit_dn = low[j] <= lower
            if hit_up or hit_dn:
                touch[t] = j
                if hit_dn:  # both in one bar counts as DOWN (conservative)
                    label[t] = 0
                    price[t] = lower
                else:
                    label[t] = 1
                    price[t] = upper
                decided = True
                break
        if not decided:
            label[t] = 2
            touch[t] = t + horizon
            price[t] = close[t + horizon]
        mfe[t] = best_high / entry - 1.0
        peak[t] = best_j - t
    return label, touch, price, mfe, peak


def triple_barrier(close: FloatArray, high: FloatArray, low: FloatArray, config: BarrierConfig) -> BarrierLabels:
    close, high, low = (np.ascontiguousarray(a, dtype=np.float64) for a in (close, high, low))
    if not (close.shape == high.shape == low.shape):
        raise ValueError("close, high and low must have the same length")
    if np.any(~np.isfinite(close)) or np.any(close <= 0):
        raise ValueError("close prices must be finite and positive")
    label, touch, price, mfe, peak = _triple_barrier_kernel(
        close, high, low, config.theta_up, config.theta_dn, config.horizon)
    return BarrierLabels(label, touch, price, mfe, peak)


def outcome(label: IntArray, entry: FloatArray, touch_price: FloatArray, timeout: Timeout = "not up") -> FloatArray:
    """The 0/1 target of each label: 1.0 UP, 0.0 DOWN, NaN incomplete; a TIMEOUT is 0.0 ("not up") or, with
    ``timeout="sign"``, 1.0 / 0.0 as the close at the vertical barrier (``touch_price``) is above / below the
    entry, NaN when it is equal."""
    if timeout not in TIMEOUTS:
        raise ValueError(f"timeout must be one of {TIMEOUTS}, got {timeout!r}")
    up = label == LABEL_UP
    known = label != LABEL_INCOMPLETE
    if timeout == "sign":
        timed_out = label == LABEL_TIMEOUT
        up = up | (timed_out & (touch_price > entry))
        known = known & ~(timed_out & (touch_price == entry))
    return np.where(known, up.astype(np.float64), np.nan)


def cooldown_select(start_index: IntArray, end_index: IntArray, symbol_codes: IntArray | None = None) -> IntArray:
    """Indices of a non-overlapping subset: per symbol, a label starts only after the previous one ended."""
    n = start_index.shape[0]
    codes = np.zeros(n, np.int64) if symbol_codes is None else symbol_codes
    order = np.lexsort((start_index, codes))
    chosen: list[int] = []
    last_end: dict[int, int] = {}
    for i in order:
        if end_index[i] < 0:
            continue
        code = int(codes[i])
        if start_index[i] > last_end.get(code, -1):
            chosen.append(int(i))
            last_end[code] = int(end_index[i])
    return np.array(sorted(chosen), dtype=np.int64)


def balanced_weights(y: npt.NDArray[np.int_], base: FloatArray | None = None) -> FloatArray:
    """Weights n / (2 n_class) so both classes carry equal total weight.

    With ``base`` (e.g. uniqueness weights) the classes are balanced on their ``base`` totals instead:
    w_i = base_i * (sum(base) / 2) / sum(base of i's class), so the overall total stays sum(base).
    """
    y = np.asarray(y)
    n = y.shape[0]
    if base is None:
        pos = int(np.sum(y == 1))
        neg = n - pos
        if pos == 0 or neg == 0:
            return np.ones(n)
        return np.asarray(np.where(y == 1, n / (2.0 * pos), n / (2.0 * neg)), dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    if b.shape != y.shape or np.any(b < 0):
        raise ValueError("base weights must be non-negative, one per sample")
    w_pos = float(b[y == 1].sum())
    w_neg = float(b[y != 1].sum())
    if w_pos == 0 or w_neg == 0:
        return b.copy()
    half = (w_pos + w_neg) / 2.0
    return np.asarray(np.where(y == 1, b * half / w_pos, b * half / w_neg), dtype=np.float64)


def average_uniqueness(start: IntArray, end: IntArray) -> FloatArray:
    """AFML 4.4: per label span [start, end] (inclusive bar indices), the mean over its bars of
    1 / (number of spans covering the bar). Overlapping labels share their information, so a sample whose
    window is covered by many others counts less. Spans with end < 0 (incomplete) get 0."""
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    ok = end >= 0
    out = np.zeros(start.shape[0])
    if not ok.any():
        return out
    if np.any(end[ok] < start[ok]) or np.any(start[ok] < 0):
        raise ValueError("spans need 0 <= start <= end")
    size = int(end[ok].max()) + 2
    cover = np.zeros(size, np.int64)
    np.add.at(cover, start[ok], 1)
    np.add.at(cover, end[ok] + 1, -1)
    concurrency = np.cumsum(cover)[:-1]
    inv = np.zeros(size, np.float64)
    inv[1:] = np.cumsum(np.where(concurrency > 0, 1.0 / np.maximum(concurrency, 1), 0.0))
    s, e = start[ok], end[ok]
    out[ok] = (inv[e + 1] - inv[s]) / (e - s + 1)
    return out


@dataclass(frozen=True)
class SegmentedLabels:
    """Triple-barrier labels of bars that may hold several symbols and gaps, aligned to the input rows."""

    label: IntArray          # LABEL_*; LABEL_INCOMPLETE where fewer than H contiguous bars follow
    touch_row: IntArray      # input row of the deciding bar, -1 if incomplete
    touch_price: FloatArray
    mfe: FloatArray
    time_to_peak: IntArray


def triple_barrier_segmented(
    ts: IntArray, close: FloatArray, high: FloatArray, low: FloatArray, config: BarrierConfig,
    step: int, groups: IntArray | None = None,
) -> SegmentedLabels:
    """``triple_barrier`` per group (symbol) and per run of bars exactly ``step`` apart, so a missing bar never
    makes "H bars later" mean more than H x step of time, and one symbol's bars never label another's."""
    ts = np.asarray(ts, dtype=np.int64)
    n = ts.shape[0]
    codes = np.zeros(n, np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    label = np.full(n, LABEL_INCOMPLETE, np.int64)
    touch = np.full(n, -1, np.int64)
    price = np.full(n, np.nan)
    mfe = np.full(n, np.nan)
    peak = np.full(n, -1, np.int64)
    order = np.lexsort((ts, codes))
    t_sorted, c_sorted = ts[order], codes[order]
    if n and np.any((np.diff(t_sorted) == 0) & (np.diff(c_sorted) == 0)):
        raise ValueError("duplicate bar times within a group")
    breaks = np.flatnonzero((np.diff(t_sorted) != step) | (np.diff(c_sorted) != 0)) + 1
    for run in np.split(order, breaks):
        if run.shape[0] == 0:
            continue
        out = triple_barrier(np.asarray(close)[run], np.asarray(high)[run], np.asarray(low)[run], config)
        label[run] = out.label
        ok = out.touch_index >= 0
        touch[run[ok]] = run[out.touch_index[ok]]
        price[run] = out.touch_price
        mfe[run] = out.mfe
        peak[run] = out.time_to_peak
    return SegmentedLabels(label, touch, price, mfe, peak)
