"""Features stage: per-symbol streaming microstructure features from TickBatches (ticks.v1 -> features.v1)."""

from streams.features.core import FeatureState, RegimeThresholds, compute_frame, process
from streams.features.definitions import FEATURE_NAMES, FEATURE_VERSION, FEATURES, feature_version

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "FeatureState",
    "RegimeThresholds",
    "compute_frame",
    "feature_version",
    "process",
]
