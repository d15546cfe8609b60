"""Infer core: a micro-batch of FeatureVectors -> one ONNX Runtime call -> calibrated Predictions.

Vectors are mapped by name onto the model's input order (names the vector lacks are NaN, which the trees
treat as missing). A vector built with a different feature_version is rejected to the DLQ rather than scored:
its numbers would mean something else than what the model was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas import SCHEMA_VERSION, features_pb2, prediction_pb2
from streams.infer.model import FloatArray, IntArray, Model, feature_index
from streams.runtime.clock import Clock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.topics import Topic

TOP_FEATURES = 3
MAX_NAME_LAYOUTS = 16  # distinct vector name lists remembered; in practice there is one


@dataclass(slots=True)
class InferState:
    model: Model
    layouts: dict[tuple[str, ...], tuple[IntArray, IntArray]] = field(default_factory=dict)

    def layout(self, names: tuple[str, ...]) -> tuple[IntArray, IntArray]:
        hit = self.layouts.get(names)
        if hit is None:
            if len(self.layouts) >= MAX_NAME_LAYOUTS:
                self.layouts.clear()  # bounded memory against a producer that varies its name lists
            hit = self.layouts[names] = feature_index(self.model.feature_names, names)
        return hit


def _check(vec: features_pb2.FeatureVector, model: Model) -> tuple[str, str] | None:
    if vec.feature_version != model.feature_version:
        return (
            "feature_version_mismatch",
            f"vector feature_version {vec.feature_version!r}, model {model.model_version} expects "
            f"{model.feature_version!r}",
        )
    if len(vec.names) != len(vec.values):
        return "malformed_vector", f"{len(vec.names)} names but {len(vec.values)} values"
    return None


def _value_of(vec: features_pb2.FeatureVector, name: str) -> float:
    for n, v in zip(vec.names, vec.values, strict=True):
        if n == name:
            return float(v)
    return math.nan


def process(batch: Sequence[InRecord[features_pb2.FeatureVector]], state: InferState, clock: Clock) -> Outputs:
    """Score every valid vector of the batch in a single session run; one Prediction per accepted vector."""
    out = Outputs()
    model = state.model
    records: list[InRecord[features_pb2.FeatureVector]] = []
    for rec in batch:
        problem = _check(rec.value, model)
        if problem is not None:
            out.rejects.append(Reject(rec, *problem))
        else:
            records.append(rec)
    accepted = [rec.value for rec in records]
    if not accepted:
        return out

    x: FloatArray = np.full((len(accepted), model.n_features), np.nan, dtype=np.float64)
    for i, vec in enumerate(accepted):
        src, dst = state.layout(tuple(vec.names))
        x[i, dst] = np.asarray(vec.values, dtype=np.float64)[src]
    pred = model.predict(x)
    finite = [bool(np.isfinite(row).all()) for row in pred.raw]
    contrib = model.attribution.contributions(x)
    # Missing inputs cannot be a reason; they sort last.
    rank_key = np.where(np.isnan(x), -1.0, np.abs(contrib))
    top = np.argsort(-rank_key, axis=1, kind="stable")[:, :TOP_FEATURES]

    now_us = clock.now_us()
    for i, vec in enumerate(accepted):
        if not finite[i]:
            # A NaN probability must not reach the decision stage as if it were a number.
            out.rejects.append(Reject(records[i], "invalid_model_output", f"model {model.model_version} "
                                      f"returned {pred.raw[i].tolist()} for {vec.vector_id}"))
            continue
        p = prediction_pb2.Prediction(
            schema_version=SCHEMA_VERSION,
            prediction_id=f"{vec.vector_id}:{model.model_version}",
            venue=vec.venue,
            symbol=vec.symbol,
            model_version=model.model_version,
            feature_version=vec.feature_version,
            regime=vec.regime,
            mid_price=vec.mid_price,
            spread_bps=_value_of(vec, "spread_bps"),
            data_window_id=vec.data_window_id,
            canary=False,
            quality_flags=vec.quality_flags,
        )
        for j, h in enumerate(model.horizons):
            p.horizons.add(
                horizon_min=h,
                p_up=float(pred.p_up[i, j]),
                ci_low=float(pred.ci_low[i, j]),
                ci_high=float(pred.ci_high[i, j]),
            )
        for k in top[i]:
            if math.isnan(x[i, k]):
                continue
            p.top_features.add(name=model.feature_names[k], value=float(x[i, k]), contribution=float(contrib[i, k]))
        p.ts.CopyFrom(vec.ts)
        p.ts.infer_us = now_us
        out.emits.append(Emit(topic=Topic.PREDICTIONS, key=vec.symbol, value=p, exchange_us=vec.ts.exchange_us))
    return out
