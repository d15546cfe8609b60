"""Wiring of the decision core into a runnable stage."""

from __future__ import annotations

from streams.decision.core import DecisionState, process
from streams.runtime.core import StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic


def spec(settings: Settings) -> StageSpec[DecisionState]:
    return StageSpec(
        name="decision",
        input_topics=(Topic.PREDICTIONS,),
        make_state=lambda context: DecisionState.from_settings(context.settings),
        process=process,
        batch_timeout_ms=0,  # the decision is cheap; waiting to fill a batch would only add latency
    )
