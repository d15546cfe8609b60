"""Triple-barrier labels on 1-minute bars, a cooldown over labels, and class-imbalance weights.

Entry is the close of bar t. The upper barrier is entry x (1 + theta_up), the lower entry x (1 - theta_dn),
the vertical barrier H bars later. A later bar touches the upper barrier when its high >= upper and the lower
when its low <= lower; a bar touching both is labelled DOWN, because inside one bar the order is unknown and
the conservative reading protects a long signal. Neither within H is TIMEOUT, which counts as "not up".
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

LABEL_DOWN = 0
LABEL_UP = 1
LABEL_TIMEOUT = 2
LABEL_INCOMPLETE = -1  # fewer than H bars left: no label, never used for training

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


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


def balanced_weights(y: npt.NDArray[np.int_]) -> FloatArray:
    """Weights n / (2 n_class) so both classes carry equal total weight."""
    y = np.asarray(y)
    n = y.shape[0]
    pos = int(np.sum(y == 1))
    neg = n - pos
    if pos == 0 or neg == 0:
        return np.ones(n)
    return np.asarray(np.where(y == 1, n / (2.0 * pos), n / (2.0 * neg)), dtype=np.float64)
