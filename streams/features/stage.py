"""The features stage: ticks.v1 -> features.v1."""

from __future__ import annotations

from streams.features.core import FeatureState, process
from streams.runtime.core import StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic


def spec(settings: Settings) -> StageSpec[FeatureState]:
    """Consumer-driven stage spec; per-symbol state is rebuilt from the stream (windows refill in <= 60 s)."""
    del settings  # the features need no knob beyond the runner's batching
    return StageSpec(
        name="features",
        input_topics=(Topic.TICKS,),
        make_state=FeatureState,
        process=process,
    )
