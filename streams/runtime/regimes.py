"""The one list of market regimes: ``vol_{low,medium,high}_depth_{thin,medium,thick}``, volatility major.

The features stage assigns them (``streams.features.definitions.regime_index`` indexes this order) and the
decision stage prices them (``streams.decision.cost``). This module has no dependency, so the decision stage
can import it without pulling in the numba feature kernel.
"""

from __future__ import annotations

from typing import Final

VOL_LABELS: Final = ("low", "medium", "high")
DEPTH_LABELS: Final = ("thin", "medium", "thick")
REGIME_LABELS: Final[tuple[str, ...]] = tuple(f"vol_{v}_depth_{d}" for v in VOL_LABELS for d in DEPTH_LABELS)
UNKNOWN_REGIME: Final = ""  # the features stage's label while the regime is not known yet (warm-up, no book)
