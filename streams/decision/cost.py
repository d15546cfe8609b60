"""Versioned transaction-cost model and expected-move table used by the decision stage.

Round-trip cost in bps for entering and leaving a position with taker orders:

    cost = 2 x fee_bps            (fee on each side)
         + 2 x spread_bps / 2     (cross half the spread on entry and again on exit = one full spread)
         + slippage_bps[regime]   (round-trip market impact beyond the touch, from the table below)

Slippage (round trip, bps) by ``vol_{low,medium,high}_depth_{thin,medium,thick}`` regime: impact grows with
volatility (the book moves while we trade) and shrinks with depth (more size at the touch).

    ================  =====  ======  =====
    vol \\ depth       thick  medium  thin
    ================  =====  ======  =====
    low               0.5    1.0     2.0
    medium            1.0    1.5     3.0
    high              2.0    3.0     5.0
    ================  =====  ======  =====

An unknown or empty regime is charged the worst entry (5.0): when we do not know the market, assume it is bad.

Expected move: the model predicts the probability ``p`` that the upper triple barrier (+B bps) is hit before
the lower one (-B bps) within the horizon, so the expected return of a position in the favoured direction is
``|2p - 1| x B``. B per horizon (minutes -> bps) is ``HORIZON_MOVE_BPS``; other horizons scale B from the
5-minute value by sqrt(h / 5), as a random walk's typical move does.

Any change to these numbers must bump ``COST_MODEL_VERSION``: it is stamped on every signal so outcomes can be
attributed to the model that priced them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

COST_MODEL_VERSION: Final = "cost-v1"

REGIMES: Final = tuple(
    f"vol_{vol}_depth_{depth}" for vol in ("low", "medium", "high") for depth in ("thin", "medium", "thick")
)

SLIPPAGE_BPS: Final[Mapping[str, float]] = MappingProxyType({
    "vol_low_depth_thick": 0.5,
    "vol_low_depth_medium": 1.0,
    "vol_low_depth_thin": 2.0,
    "vol_medium_depth_thick": 1.0,
    "vol_medium_depth_medium": 1.5,
    "vol_medium_depth_thin": 3.0,
    "vol_high_depth_thick": 2.0,
    "vol_high_depth_medium": 3.0,
    "vol_high_depth_thin": 5.0,
})

# Triple-barrier half-width B (bps) per horizon in minutes.
HORIZON_MOVE_BPS: Final[Mapping[int, float]] = MappingProxyType({
    1: 10.0,
    3: 15.0,
    5: 20.0,
    10: 28.0,
    15: 35.0,
    30: 50.0,
    60: 70.0,
})
_REFERENCE_HORIZON_MIN: Final = 5


@dataclass(frozen=True, slots=True)
class CostModel:
    """Round-trip cost and expected move; immutable so a running stage prices every signal the same way."""

    fee_bps: float
    version: str = COST_MODEL_VERSION
    slippage_bps: Mapping[str, float] = field(default_factory=lambda: SLIPPAGE_BPS)
    move_bps: Mapping[int, float] = field(default_factory=lambda: HORIZON_MOVE_BPS)

    @property
    def worst_slippage_bps(self) -> float:
        return max(self.slippage_bps.values())

    def slippage_for(self, regime: str) -> float:
        return self.slippage_bps.get(regime, self.worst_slippage_bps)

    def round_trip_cost_bps(self, regime: str, spread_bps: float) -> float:
        """2 x fee + 2 x half spread + regime slippage. ``spread_bps`` must be finite and >= 0."""
        return 2.0 * self.fee_bps + 2.0 * (spread_bps / 2.0) + self.slippage_for(regime)

    def horizon_move_bps(self, horizon_min: int) -> float:
        if horizon_min in self.move_bps:
            return self.move_bps[horizon_min]
        reference = self.move_bps.get(_REFERENCE_HORIZON_MIN, HORIZON_MOVE_BPS[_REFERENCE_HORIZON_MIN])
        return reference * math.sqrt(max(horizon_min, 1) / _REFERENCE_HORIZON_MIN)

    def expected_return_bps(self, p_up: float, horizon_min: int) -> float:
        """Expected return of a position in the favoured direction: |2p - 1| x B(horizon)."""
        return abs(2.0 * p_up - 1.0) * self.horizon_move_bps(horizon_min)
