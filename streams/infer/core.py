"""Infer core: a micro-batch of FeatureVectors -> one ONNX Runtime call per served model -> calibrated Predictions.

Vectors are mapped by name onto the model's input order (names the vector lacks are NaN, which the trees
treat as missing). A vector built with a different feature_version is rejected to the DLQ rather than scored:
its numbers would mean something else than what the model was trained on.

Values are checked before anything is scored (``streams.runtime.validate``), and a vector that fails is
rejected whichever model would serve it: a +-inf feature value (the features stage writes NaN, never inf, where
a value cannot exist), a vector with no finite value at all (only the model's prior could come out; a NaN among
finite values is normal: an insufficient window or a dropped tier), a mid_price that is not a finite positive
price, or timestamps outside ``InferState.bounds`` of the clock.

Serving set: the active model, and optionally a canary that serves the symbols ``canary.is_canary_symbol``
picks. Canary rows are also scored by the active model (shadow): that is the drift metric of the rollback
guard, and the fallback when the canary cannot serve a row (invalid output or refused vector), so a broken
canary never reaches the decision stage. The serving set is swapped atomically by the registry watcher
(``streams.infer.lifecycle``); ``process`` reads it once per batch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, prediction_pb2
from streams.infer.canary import CanaryGuard, CanaryPolicy, Verdict, is_canary_symbol
from streams.infer.metrics import InferMetrics
from streams.infer.model import FloatArray, IntArray, Model, Prediction, feature_index
from streams.infer.shap import ShapQueue
from streams.runtime import validate as v
from streams.runtime.clock import Clock
from streams.runtime.core import Emit, InRecord, Outputs, Reject
from streams.runtime.instrument import key_of
from streams.runtime.topics import Topic

TOP_FEATURES = 3
MAX_NAME_LAYOUTS = 16  # distinct (model, vector name list) layouts remembered; in practice one or two

ACTIVE = "active"
CANARY = "canary"


@dataclass(frozen=True, slots=True)
class Serving:
    """What is served right now; replaced as a whole, never mutated."""

    active: Model
    canary: Model | None = None
    canary_share: float = 0.0
    canary_id: str = ""  # version + deployment time: the routing salt and the guard's key

    def canary_for(self, symbol: str) -> Model | None:
        if self.canary is None or not is_canary_symbol(self.canary_id, symbol, self.canary_share):
            return None
        return self.canary


CanaryFailureHook = Callable[[str, str, str], None]  # (canary_id, model_version, reason)


class InferState:
    """The serving set plus per-process bookkeeping. ``serving`` is written under ``lock`` by the watcher and
    by an automatic canary withdrawal; ``process`` only reads the reference."""

    def __init__(
        self,
        model: Model,
        *,
        canary: Model | None = None,
        canary_share: float = 0.0,
        canary_id: str = "",
        policy: CanaryPolicy | None = None,
        metrics: InferMetrics | None = None,
        on_canary_failure: CanaryFailureHook | None = None,
        bounds: v.TimeBounds = v.UNBOUNDED,
        stale_after_us: int = 0,
    ) -> None:
        self.lock = threading.Lock()
        self.bounds = bounds  # vector timestamps vs the clock (the stage wires the settings)
        # A prediction whose exchange time is older than this by the clock carries STALE_INPUT (0: never).
        self.stale_after_us = stale_after_us
        self.serving = Serving(model, canary, canary_share, canary_id or (canary.model_version if canary else ""))
        self.guard = CanaryGuard(policy or CanaryPolicy())
        self.metrics = metrics or InferMetrics.create()
        self.on_canary_failure = on_canary_failure
        self.withdrawn: set[str] = set()  # canary ids withdrawn by this process; never served again
        self.layouts: dict[tuple[str, tuple[str, ...]], tuple[IntArray, IntArray]] = {}
        self.passed_index: dict[tuple[str, ...], tuple[int, ...]] = {}
        self.closers: list[Callable[[], None]] = []
        # Emitted predictions with their input rows, for the SHAP worker (the stage sets it; None: no SHAP).
        self.attribution: ShapQueue | None = None
        self._publish(self.serving, None)

    @property
    def model(self) -> Model:
        return self.serving.active

    def layout(self, model: Model, names: tuple[str, ...]) -> tuple[IntArray, IntArray]:
        key = (model.model_version, names)
        hit = self.layouts.get(key)
        if hit is None:
            if len(self.layouts) >= MAX_NAME_LAYOUTS:
                self.layouts.clear()  # bounded memory against a producer that varies its name lists
            hit = self.layouts[key] = feature_index(model.feature_names, names)
        return hit

    def passed_through(self, names: tuple[str, ...]) -> tuple[int, ...]:
        hit = self.passed_index.get(names)
        if hit is None:
            if len(self.passed_index) >= MAX_NAME_LAYOUTS:
                self.passed_index.clear()  # bounded, as the layouts are
            hit = self.passed_index[names] = passed_through_index(names)
        return hit

    def swap(self, serving: Serving) -> bool:
        """Serve ``serving`` from the next batch on (a withdrawn canary is dropped); True if anything changed."""
        with self.lock:
            if serving.canary is not None and serving.canary_id in self.withdrawn:
                serving = Serving(serving.active)
            old = self.serving
            if (old.active is serving.active and old.canary is serving.canary
                    and old.canary_share == serving.canary_share):
                return False
            self.serving = serving
            self._publish(serving, old)
            return True

    def withdraw_canary(self, verdict: Verdict) -> bool:
        """Stop serving the canary at once (locally); the registry rollback is the hook's job."""
        with self.lock:
            old = self.serving
            if old.canary is None or old.canary_id != verdict.canary_id:
                return False
            self.withdrawn.add(verdict.canary_id)
            self.serving = Serving(old.active)
            self._publish(self.serving, old)
            version = old.canary.model_version
        self.metrics.canary_rollbacks.labels(version).inc()
        if self.on_canary_failure is not None:
            self.on_canary_failure(verdict.canary_id, version, verdict.reason)
        return True

    def _publish(self, new: Serving, old: Serving | None) -> None:
        g = self.metrics.serving
        if old is not None:
            g.labels(old.active.model_version, ACTIVE, old.active.feature_version).set(0)
            if old.canary is not None:
                g.labels(old.canary.model_version, CANARY, old.canary.feature_version).set(0)
        g.labels(new.active.model_version, ACTIVE, new.active.feature_version).set(1)
        if new.canary is not None:
            g.labels(new.canary.model_version, CANARY, new.canary.feature_version).set(1)

    def close(self) -> None:
        for fn in self.closers:
            fn()


def _check(vec: features_pb2.FeatureVector, model: Model) -> tuple[str, str] | None:
    if len(vec.names) != len(vec.values):
        return "malformed_vector", f"{len(vec.names)} names but {len(vec.values)} values"
    if vec.feature_version != model.feature_version:
        return (
            "feature_version_mismatch",
            f"vector feature_version {vec.feature_version!r}, model {model.model_version} expects "
            f"{model.feature_version!r}",
        )
    return None


def check_values(vec: features_pb2.FeatureVector, values: FloatArray, now_us: int,
                 bounds: v.TimeBounds) -> v.Problem | None:
    """What makes a (well-formed) vector unusable by any model; see the module doc. ``values``: the vector's
    values as an array (made once, and scored from the same array)."""
    finite = np.isfinite(values)
    if not finite.all():
        inf = np.isinf(values)
        if inf.any():
            k = int(np.argmax(inf))
            return v.INVALID_VALUE, f"feature {vec.names[k]} is {float(values[k])!r}: must be finite or NaN"
        if not finite.any():
            return v.INVALID_VALUE, f"all {len(values)} feature values are NaN: nothing to score"
    if not len(values):
        return v.INVALID_VALUE, "the vector has no feature values: nothing to score"
    return (v.finite_positive_price("mid_price", vec.mid_price)
            or v.timestamps_within(vec.ts, now_us, bounds, ("ingest_us", "features_us")))


PASSED_THROUGH = ("spread_bps", "liq_notional_1m")  # vector values a Prediction carries for the decision stage


def passed_through_index(names: tuple[str, ...]) -> tuple[int, ...]:
    """Where each of ``PASSED_THROUGH`` is in a vector's names (-1: absent)."""
    return tuple(names.index(name) if name in names else -1 for name in PASSED_THROUGH)


def _value_at(vec: features_pb2.FeatureVector, index: int) -> float:
    return float(vec.values[index]) if index >= 0 else math.nan


@dataclass(slots=True)
class _Scored:
    """One model's outputs for a list of vectors."""

    model: Model
    x: FloatArray
    pred: Prediction
    valid: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    passed: list[tuple[int, ...]] = field(default_factory=list)  # per row: passed_through_index of its names
    # Per row, as Python lists made once per batch (reading numpy scalars one by one costs more than the messages):
    # the probabilities, and the top features' indices, inputs and contributions.
    p_up_rows: list[list[float]] = field(default_factory=list)
    ci_low_rows: list[list[float]] = field(default_factory=list)
    ci_high_rows: list[list[float]] = field(default_factory=list)
    top_rows: list[list[int]] = field(default_factory=list)
    top_values: list[list[float]] = field(default_factory=list)    # x at the top features (NaN: missing)
    top_contrib: list[list[float]] = field(default_factory=list)


def _score(state: InferState, model: Model, vecs: Sequence[tuple[features_pb2.FeatureVector, FloatArray]],
           role: str) -> _Scored:
    """``vecs``: each vector with its values as an array (made once, in ``process``)."""
    x: FloatArray = np.full((len(vecs), model.n_features), np.nan, dtype=np.float64)
    passed: list[tuple[int, ...]] = []
    for i, (vec, values) in enumerate(vecs):
        names = tuple(vec.names)
        src, dst = state.layout(model, names)
        x[i, dst] = values[src]
        passed.append(state.passed_through(names))
    started = time.perf_counter()  # a duration for the latency histogram, not a timestamp
    pred = model.predict(x)
    state.metrics.model_seconds.labels(model.model_version, role).observe(time.perf_counter() - started)
    valid: npt.NDArray[np.bool_] = np.asarray(
        np.isfinite(pred.raw).all(axis=1) & np.isfinite(pred.p_up).all(axis=1)
        & ((pred.p_up >= 0.0) & (pred.p_up <= 1.0)).all(axis=1), dtype=np.bool_)
    contrib = model.attribution.contributions(x)
    # Missing inputs cannot be a reason; they sort last. One argsort for the whole batch.
    rank_key = np.where(np.isnan(x), -1.0, np.abs(contrib))
    top = np.argsort(-rank_key, axis=1, kind="stable")[:, :TOP_FEATURES]
    return _Scored(model, x, pred, valid, passed, pred.p_up.tolist(), pred.ci_low.tolist(),
                   pred.ci_high.tolist(), top.tolist(), np.take_along_axis(x, top, axis=1).tolist(),
                   np.take_along_axis(contrib, top, axis=1).tolist())


def _prediction(vec: features_pb2.FeatureVector, s: _Scored, i: int, canary: bool,
                now_us: int, stale_after_us: int = 0) -> prediction_pb2.Prediction:
    model = s.model
    p = prediction_pb2.Prediction(
        schema_version=SCHEMA_VERSION,
        prediction_id=f"{vec.vector_id}:{model.model_version}",
        venue=vec.venue,
        symbol=vec.symbol,
        model_version=model.model_version,
        feature_version=vec.feature_version,
        regime=vec.regime,
        mid_price=vec.mid_price,
        spread_bps=_value_at(vec, s.passed[i][0]),
        data_window_id=vec.data_window_id,
        canary=canary,
        quality_flags=vec.quality_flags,
        book_bids=vec.book_bids,
        book_asks=vec.book_asks,
    )
    if vec.HasField("funding_rate"):
        p.funding_rate = vec.funding_rate
    liquidated = _value_at(vec, s.passed[i][1])
    if math.isfinite(liquidated):
        p.liquidation_notional_1m = liquidated
    if (stale_after_us and vec.ts.exchange_us and now_us - vec.ts.exchange_us > stale_after_us
            and common_pb2.STALE_INPUT not in p.quality_flags):
        p.quality_flags.append(common_pb2.STALE_INPUT)
    barriers = model.barriers
    p_up, ci_low, ci_high = s.p_up_rows[i], s.ci_low_rows[i], s.ci_high_rows[i]
    for j, h in enumerate(model.horizons):
        p.horizons.add(horizon_min=h, p_up=p_up[j], ci_low=ci_low[j], ci_high=ci_high[j],
                       upper_barrier_bps=barriers.upper_bps, lower_barrier_bps=barriers.lower_bps,
                       timeout_counts_as_not_up=barriers.timeout_counts_as_not_up)
    names = model.feature_names
    for k, value, contribution in zip(s.top_rows[i], s.top_values[i], s.top_contrib[i], strict=True):
        if math.isnan(value):
            continue  # a missing input is never a reason
        p.top_features.add(name=names[k], value=value, contribution=contribution)
    p.ts.CopyFrom(vec.ts)
    p.ts.infer_us = now_us
    return p


def _emit(out: Outputs, state: InferState, vec: features_pb2.FeatureVector, s: _Scored, i: int, canary: bool,
          now_us: int) -> None:
    prediction = _prediction(vec, s, i, canary, now_us, state.stale_after_us)
    out.emits.append(Emit(Topic.PREDICTIONS, key_of(vec), prediction, vec.ts.exchange_us))
    if state.attribution is not None:  # SHAP later, off this path (shap.py)
        state.attribution.offer(s.model, prediction, s.x[i])


def _drift(canary: _Scored, ci: int, active: _Scored, ai: int) -> float:
    """Mean |p_canary - p_active| over the horizons both models predict."""
    a_cols = {h: j for j, h in enumerate(active.model.horizons)}
    diffs = [abs(float(canary.pred.p_up[ci, j]) - float(active.pred.p_up[ai, a_cols[h]]))
             for j, h in enumerate(canary.model.horizons) if h in a_cols]
    return sum(diffs) / len(diffs) if diffs else math.nan


def process(batch: Sequence[InRecord[features_pb2.FeatureVector]], state: InferState, clock: Clock) -> Outputs:
    """Score every valid vector of the batch (one session run per served model); one Prediction per vector."""
    out = Outputs()
    serving = state.serving
    active = serving.active
    metrics = state.metrics
    now_us = clock.now_us()
    # (record, served by the canary?, can the active model take it?) in input order; refused vectors go to
    # the DLQ at once.
    plan: list[tuple[InRecord[features_pb2.FeatureVector], bool, bool, FloatArray]] = []
    canary_refused = 0
    for rec in batch:
        vec = rec.value
        problem = _check(vec, active)
        canary = serving.canary_for(vec.symbol)
        if problem is not None and problem[0] == "malformed_vector":
            out.rejects.append(Reject(rec, *problem))  # the input's fault, not the canary's
            continue
        values = np.asarray(vec.values, dtype=np.float64)
        invalid = check_values(vec, values, now_us, state.bounds)
        if invalid is not None:
            out.rejects.append(Reject(rec, *invalid))  # neither model may score it
            continue
        if canary is not None:
            if _check(vec, canary) is None:
                plan.append((rec, True, problem is None, values))
                continue
            canary_refused += 1  # the canary cannot take it: the active model serves it, counted as invalid
        if problem is not None:
            out.rejects.append(Reject(rec, *problem))
        else:
            plan.append((rec, False, True, values))
    if not plan and not canary_refused:
        return out

    act_idx = [k for k, (_, _, ok, _) in enumerate(plan) if ok]
    can_idx = [k for k, (_, c, _, _) in enumerate(plan) if c]
    act = _score(state, active, [(plan[k][0].value, plan[k][3]) for k in act_idx], ACTIVE) if act_idx else None
    can = (_score(state, serving.canary, [(plan[k][0].value, plan[k][3]) for k in can_idx], CANARY)
           if can_idx and serving.canary is not None else None)
    act_pos = {k: i for i, k in enumerate(act_idx)}
    can_pos = {k: i for i, k in enumerate(can_idx)}
    canary_invalid = canary_refused
    drift_sum, drift_n = 0.0, 0
    served = {ACTIVE: 0, CANARY: 0}
    for k, (rec, use_canary, _, _) in enumerate(plan):
        vec = rec.value
        ai = act_pos.get(k)
        if use_canary and can is not None:
            ci = can_pos[k]
            if ai is not None and act is not None and can.valid[ci] and act.valid[ai]:
                d = _drift(can, ci, act, ai)
                if not math.isnan(d):
                    drift_sum += d
                    drift_n += 1
            if can.valid[ci]:
                _emit(out, state, vec, can, ci, True, now_us)
                served[CANARY] += 1
                continue
            canary_invalid += 1
            if ai is None:  # nothing valid to fall back on
                out.rejects.append(Reject(rec, "invalid_model_output", f"canary {can.model.model_version} returned "
                                          f"{can.pred.raw[ci].tolist()} for {vec.vector_id}"))
                continue
        if act is None or ai is None:
            continue
        if not act.valid[ai]:
            # A NaN probability must not reach the decision stage as if it were a number.
            metrics.invalid_outputs.labels(active.model_version, ACTIVE).inc()
            out.rejects.append(Reject(rec, "invalid_model_output", f"model {active.model_version} "
                                      f"returned {act.pred.raw[ai].tolist()} for {vec.vector_id}"))
            continue
        _emit(out, state, vec, act, ai, False, now_us)
        served[ACTIVE] += 1
    if served[ACTIVE]:
        metrics.predictions.labels(active.model_version, ACTIVE).inc(served[ACTIVE])
    if serving.canary is not None:
        _guard(state, serving, now_us, served[CANARY] + canary_invalid, canary_invalid, drift_sum, drift_n,
               served[CANARY])
    return out


def _guard(state: InferState, serving: Serving, now_us: int, rows: int, invalid: int, drift_sum: float,
           drift_n: int, served: int) -> None:
    assert serving.canary is not None
    version = serving.canary.model_version
    metrics = state.metrics
    if served:
        metrics.predictions.labels(version, CANARY).inc(served)
    if invalid:
        metrics.invalid_outputs.labels(version, CANARY).inc(invalid)
    verdict = state.guard.observe(now_us, serving.canary_id, rows, invalid, drift_sum, drift_n)
    _, rate, drift = state.guard.snapshot()
    metrics.canary_invalid_rate.labels(version).set(rate)
    if drift is not None:
        metrics.canary_drift.labels(version).set(drift)
    if verdict is not None:
        state.withdraw_canary(verdict)
