"""Canary routing and the automatic canary rollback rule.

Routing: a symbol is served by the canary when ``canary_bucket(canary_id, symbol) < share``. The bucket is a
SHA-256 of the canary's identity and the symbol, so every infer replica and restart agrees on the split
without coordination, and each new canary deployment gets its own sample of symbols.

Rollback rule. Two core metrics of the canary, over a sliding window of ``window_s`` of event processing
(evaluated once the window holds ``min_rows`` canary rows):

1. **invalid-output rate**: the share of canary rows the canary could not serve: a non-finite or
   out-of-[0, 1] probability, or a vector it refused (e.g. feature_version mismatch). Such rows are served by
   the active model instead, so users never see them.
2. **prediction drift vs the active model**: every canary row is also scored by the active model (shadow);
   the mean over rows and shared horizons of |p_canary - p_active|. A retrained model moves probabilities by
   a few points; a broken one (misaligned features, wrong calibration table) moves them by tens. When no
   row has two valid outputs to compare, drift is unmeasurable and counts as breached.

``rule="any"`` (default) withdraws the canary as soon as one metric is past its threshold (withdrawing a
canary only costs the candidate its trial, so the conservative reading wins); ``rule="all"`` requires both.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Literal

RolloutRule = Literal["any", "all"]


def canary_bucket(canary_id: str, symbol: str) -> float:
    """A stable number in [0, 1) per (canary, symbol)."""
    digest = hashlib.sha256(f"{canary_id}\x00{symbol}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


def is_canary_symbol(canary_id: str, symbol: str, share: float) -> bool:
    return canary_bucket(canary_id, symbol) < share


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    window_s: float = 300.0
    min_rows: int = 200
    max_invalid_rate: float = 0.01
    max_drift: float = 0.15
    rule: RolloutRule = "any"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's decision to withdraw a canary, with the numbers behind it (for the audit log)."""

    canary_id: str
    rows: int
    invalid_rate: float
    drift: float | None
    breached: tuple[str, ...]

    @property
    def reason(self) -> str:
        drift = "unmeasurable" if self.drift is None else f"{self.drift:.4f}"
        return (f"automatic canary rollback: {', '.join(self.breached)} past threshold over {self.rows} canary rows "
                f"(invalid-output rate {self.invalid_rate:.4f}, mean |p_canary - p_active| {drift})")


@dataclass(slots=True)
class _Obs:
    at_us: int
    rows: int
    invalid: int
    drift_sum: float
    drift_n: int


class CanaryGuard:
    """Windowed canary metrics and the rollback decision; one instance per infer state, fed by ``process``."""

    def __init__(self, policy: CanaryPolicy) -> None:
        self.policy = policy
        self._id = ""
        self._window: deque[_Obs] = deque()
        self._fired = False

    def observe(self, now_us: int, canary_id: str, rows: int, invalid: int, drift_sum: float,
                drift_n: int) -> Verdict | None:
        """Add one batch's canary rows; returns a Verdict the first time the rule says withdraw."""
        if canary_id != self._id:  # a new canary starts with a clean window
            self._id = canary_id
            self._window.clear()
            self._fired = False
        if self._fired or rows <= 0:
            return None
        self._window.append(_Obs(now_us, rows, invalid, drift_sum, drift_n))
        horizon = now_us - round(self.policy.window_s * 1_000_000)
        while self._window and self._window[0].at_us < horizon:
            self._window.popleft()
        total = sum(o.rows for o in self._window)
        if total < self.policy.min_rows:
            return None
        invalid_rate = sum(o.invalid for o in self._window) / total
        n_drift = sum(o.drift_n for o in self._window)
        drift = sum(o.drift_sum for o in self._window) / n_drift if n_drift else None
        breached: list[str] = []
        if invalid_rate > self.policy.max_invalid_rate:
            breached.append("invalid-output rate")
        if drift is None or drift > self.policy.max_drift:
            breached.append("prediction drift")
        if (self.policy.rule == "any" and breached) or len(breached) == 2:
            self._fired = True
            return Verdict(canary_id, total, invalid_rate, drift, tuple(breached))
        return None

    def snapshot(self) -> tuple[int, float, float | None]:
        """(rows, invalid rate, drift) of the current window, for metrics."""
        total = sum(o.rows for o in self._window)
        if not total:
            return 0, 0.0, None
        n_drift = sum(o.drift_n for o in self._window)
        return (total, sum(o.invalid for o in self._window) / total,
                sum(o.drift_sum for o in self._window) / n_drift if n_drift else None)
