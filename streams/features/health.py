"""Feature health per tier (fast / medium / slow): kernel compute time, NaN ratio and window-insufficient rate.

Aggregated once per kernel call (one call per symbol per consumed batch), never per feature value: the NaN
counts of a call's vectors are one matrix product of their NaN mask with a [features x tiers] mask. The numba
kernel itself is not instrumented (its source is part of ``feature_version``; timing inside it would change the
version every served model is checked against), so compute time is measured around the call and labelled by the
slowest tier the call evaluated: ``fast`` (fast tier only), ``medium`` (medium tier due too) or ``slow``. The
cost of the medium tier is then the mean of the ``medium`` calls minus that of the ``fast`` calls, and so on.

Only applicable features count (the kernel's ``app`` mask after the call: a mark-price feature on spot, or a
sub-bar window on klines, is NaN by design), ``quality_score`` is left out, and the medium and slow tiers are
not counted in vectors where they were dropped under backpressure (those are counted as TIERS_DROPPED).
A vector is *insufficient in a tier* when an applicable feature of that tier is NaN; the vector-level rate (the
WINDOW_INSUFFICIENT flag itself) is kept beside it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from streams.features import definitions as d

N_TIERS = len(d.TIER_NAMES)
NAN_RATIO_ALPHA = 0.05  # EWMA weight of one kernel call in the NaN-ratio gauges


def _tier_mask() -> np.ndarray:
    mask = np.zeros((d.N_FEATURES, N_TIERS), np.float64)
    for i, tier in enumerate(d.FEATURE_TIERS):
        if i != d.I_QUALITY:
            mask[i, tier] = 1.0
    return mask


TIER_MASK = _tier_mask()


def _zeros() -> list[float]:
    return [0.0] * N_TIERS


@dataclass
class FeatureHealth:
    """Cumulative per-tier counters, written by ``process`` and read by the stage's collector at scrape time."""

    kernel_seconds: list[float] = field(default_factory=_zeros)  # by the slowest tier evaluated in the call
    kernel_calls: list[float] = field(default_factory=_zeros)
    tier_vectors: list[float] = field(default_factory=_zeros)  # vectors in which the tier was served (not dropped)
    tier_values: list[float] = field(default_factory=_zeros)  # applicable values of the tier in those vectors
    tier_nan: list[float] = field(default_factory=_zeros)  # ... of which NaN
    tier_insufficient: list[float] = field(default_factory=_zeros)  # vectors with an applicable NaN in the tier
    tier_nan_ratio: list[float] = field(default_factory=lambda: [math.nan] * N_TIERS)  # EWMA per call
    vectors: float = 0.0
    vectors_insufficient: float = 0.0  # vectors flagged WINDOW_INSUFFICIENT
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # The tier mask restricted to the applicable features, recomputed only when applicability changes.
    _app: bytes = field(default=b"", repr=False)
    _mask: np.ndarray = field(default_factory=lambda: TIER_MASK, repr=False)
    _applicable: list[float] = field(default_factory=_zeros, repr=False)

    def observe(self, values: np.ndarray, status: np.ndarray, app: np.ndarray, tiers_on: bool, seconds: float,
                slowest_tier: int) -> None:
        """One kernel call: ``values`` [n, N_FEATURES], ``status`` [n] STATUS_* bits, ``app`` [N_FEATURES] the
        kernel's applicability mask after the call."""
        n = values.shape[0]
        if n == 0:
            return
        app_key = app.tobytes()
        if app_key != self._app:
            self._app = app_key
            self._mask = TIER_MASK * app[:, None]
            self._applicable = self._mask.sum(axis=0).tolist()
        nan = np.isnan(values)
        if n == 1:
            counts: list[float] = (nan[0] @ self._mask).tolist()
            nan_total, insufficient = counts, [1.0 if c > 0.0 else 0.0 for c in counts]
            flagged = 1 if int(status[0]) & d.STATUS_INSUFFICIENT else 0
        else:
            per_vector = nan @ self._mask  # [n, N_TIERS]
            nan_total = per_vector.sum(axis=0).tolist()
            insufficient = (per_vector > 0.0).sum(axis=0).tolist()
            flagged = int(np.count_nonzero(status & d.STATUS_INSUFFICIENT))
        served = N_TIERS if tiers_on else 1  # TIER_FAST is 0; medium and slow are dropped together
        applicable = self._applicable
        with self.lock:
            self.kernel_seconds[slowest_tier] += seconds
            self.kernel_calls[slowest_tier] += 1.0
            self.vectors += n
            self.vectors_insufficient += flagged
            for k in range(served):
                per = applicable[k]
                if per <= 0.0:
                    continue
                self.tier_vectors[k] += n
                self.tier_values[k] += n * per
                self.tier_nan[k] += nan_total[k]
                self.tier_insufficient[k] += insufficient[k]
                ratio = nan_total[k] / (n * per)
                prev = self.tier_nan_ratio[k]
                self.tier_nan_ratio[k] = ratio if math.isnan(prev) else prev + NAN_RATIO_ALPHA * (ratio - prev)

    def snapshot(self) -> FeatureHealth:
        with self.lock:
            return FeatureHealth(list(self.kernel_seconds), list(self.kernel_calls), list(self.tier_vectors),
                                 list(self.tier_values), list(self.tier_nan), list(self.tier_insufficient),
                                 list(self.tier_nan_ratio), self.vectors, self.vectors_insufficient)


def slowest_tier_evaluated(si_before_med_t: int, si_before_slow_t: int, si: np.ndarray) -> int:
    """Which tiers a kernel call evaluated, from the state's medium/slow evaluation times before and after."""
    if int(si[d.S_SLOW_T]) != si_before_slow_t:
        return d.TIER_SLOW
    if int(si[d.S_MED_T]) != si_before_med_t:
        return d.TIER_MEDIUM
    return d.TIER_FAST
