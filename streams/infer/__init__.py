"""Infer stage: calibrated multi-horizon probabilities from feature vectors (features.v1 -> predictions.v1)."""

from streams.infer.core import InferState, process
from streams.infer.model import Model, ModelError, load_model

__all__ = ["InferState", "Model", "ModelError", "load_model", "process"]
