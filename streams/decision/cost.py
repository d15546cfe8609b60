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

Expected move: the model gives ``p``, the probability that the upper barrier (+U bps) is hit before the lower
one (-D bps) within the horizon. U and D come with the prediction when the model states its labels; otherwise
both are the table value B(horizon) (``HORIZON_MOVE_BPS``; other horizons scale the 5-minute B by sqrt(h / 5),
as a random walk's typical move does).

* LONG:  ``p x U - (1 - p) x D``. When the model counts timeouts as "not up", a timeout is charged as a full
  loss of D: conservative, since a timed-out position usually closes nearer its entry.
* SHORT: ``(1 - p) x D - p x U``, only when ``1 - p`` is the probability of the lower barrier first. A model
  whose "not up" includes timeouts says nothing about how often the lower barrier comes first, so it prices
  no SHORT at all (reading its small p_up as a confident SHORT is exactly the error to avoid).
* Break-even ``p* = D / (U + D)``: the p at which the LONG's expectation is zero (0.5 for symmetric barriers).

With symmetric barriers both reduce to ``|2p - 1| x B`` for the favoured side (cost-v1's formula).

Any change to these numbers must bump ``COST_MODEL_VERSION``: it is stamped on every signal so outcomes can be
attributed to the model that priced them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

COST_MODEL_VERSION: Final = "cost-v2"

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
class ExpectedMoves:
    """Expected return (bps) of each side for one probability; ``short_bps`` is None when it cannot be priced."""

    long_bps: float
    short_bps: float | None
    breakeven_p: float
    upper_bps: float
    lower_bps: float


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

    def expected_moves(self, p_up: float, horizon_min: int, *, upper_bps: float = 0.0, lower_bps: float = 0.0,
                       timeout_counts_as_not_up: bool = False) -> ExpectedMoves:
        """Expected LONG and SHORT returns (bps) for ``p_up`` under the label's barriers; see the module doc."""
        if upper_bps > 0.0 and lower_bps > 0.0:
            up, down = upper_bps, lower_bps
        else:
            up = down = self.horizon_move_bps(horizon_min)
        long_bps = p_up * up - (1.0 - p_up) * down
        short_bps = None if timeout_counts_as_not_up else (1.0 - p_up) * down - p_up * up
        return ExpectedMoves(long_bps, short_bps, down / (up + down), up, down)
