"""The infer stage: features.v1 -> predictions.v1, micro-batched for one ONNX Runtime call per batch."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from streams.infer.core import InferState, process
from streams.infer.model import load_model
from streams.runtime.core import StageSpec
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic


def default_model_dir() -> Path:
    """The model shipped in the repository, built by ``python -m services.training.default_model``."""
    return Path(__file__).resolve().parents[2] / "models" / "default"


def model_dir(settings: Settings) -> Path:
    return settings.model_dir if settings.model_dir is not None else default_model_dir()


def make_state(folder: Path) -> InferState:
    return InferState(load_model(folder))


def spec(settings: Settings) -> StageSpec[InferState]:
    return StageSpec(
        name="infer",
        input_topics=(Topic.FEATURES,),
        make_state=partial(make_state, model_dir(settings)),
        process=process,
        batch_max=settings.infer_batch_rows,
        batch_timeout_ms=settings.infer_batch_ms,
    )
