"""From fitted boosters and out-of-fold scores to what the infer stage serves, for every dataset the pipeline
trains on (``train.py``): float32 thresholds, one ONNX graph, isotonic calibration tables, and the parity check
of the graph against the native boosters.

Thresholds: LightGBM splits on float64 thresholds but ONNX TreeEnsemble compares float32; each threshold t is
replaced by the largest float32 <= t before export, which leaves every decision on float32 inputs unchanged and
makes the graph exact up to float32 summation of leaf values (``parity`` measures it; the card states it).

Calibration: a monotone map of out-of-fold raw scores, held as ``streams.infer.model.Calibration`` (the infer
stage's own class, a piecewise-linear table), so training scores calibrated probabilities with the function that
serves them. ``isotonic`` is the table itself; the parametric maps (``platt``: sigmoid(a z + b) of the raw logit z,
``beta``: Kull et al.'s sigmoid(a ln r - b ln(1 - r) + c) with a, b >= 0, ``temperature``: sigmoid(z / T)) are
tabulated on ``PARAMETRIC_GRID`` points evenly spaced in logit, where linear interpolation is exact to ~1e-5.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression

from streams.infer.model import Calibration, Model

FloatArray = npt.NDArray[np.float64]

INPUT_NAME = "features"
OUTPUT_NAME = "p_up_raw"
CAL_BINS = 20  # raw-p bins whose calibration-sample counts size the served confidence interval
Z_95 = 1.959963984540054
PROBE_NAN_SHARE = 0.05
CALIBRATIONS = ("isotonic", "platt", "beta", "temperature")
PARAMETRIC_GRID = 801
_LOGIT_EDGE = 12.0  # grid spans raw logits in [-12, 12]; the table is flat beyond (raw p < 6e-6 or > 1 - 6e-6)


def float32_floor(t: float) -> float:
    """Largest float32 <= t: for float32 x, x <= t  <=>  x <= float32_floor(t)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def round_thresholds(booster: lgb.Booster) -> lgb.Booster:
    """The same model with float32-representable thresholds (no decision changes on float32 inputs)."""

    def fix(match: re.Match[str]) -> str:
        values = " ".join(repr(float32_floor(float(v))) for v in match.group(1).split())
        return f"threshold={values}"

    text = re.sub(r"^threshold=(.*)$", fix, booster.model_to_string(), flags=re.MULTILINE)
    # tree_sizes holds byte offsets of the trees, stale now; without it LightGBM parses the trees in order.
    text = re.sub(r"^tree_sizes=.*\n", "", text, flags=re.MULTILINE)
    return lgb.Booster(model_str=text)


def to_onnx(boosters: Sequence[lgb.Booster], n_features: int) -> onnx.ModelProto:
    """One graph: shared float32 input, one TreeEnsembleClassifier per horizon, class-1 columns concatenated."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    ml_opset = 1
    columns: list[str] = []
    for j, booster in enumerate(boosters):
        sub = onnxmltools.convert_lightgbm(
            booster, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))], zipmap=False, target_opset=15
        )
        prefix = f"h{j}_"
        sub = onnx.compose.add_prefix(sub, prefix)
        for node in sub.graph.node:
            node.input[:] = [INPUT_NAME if i == prefix + INPUT_NAME else i for i in node.input]
            nodes.append(node)
        initializers.extend(sub.graph.initializer)
        ml_opset = max([ml_opset, *(o.version for o in sub.opset_import if o.domain == "ai.onnx.ml")])
        probs = prefix + "probabilities"
        col = f"{prefix}p_up"
        nodes.append(helper.make_node("Slice", [probs, "one", "two", "one"], [col], name=f"{prefix}slice_class1"))
        columns.append(col)
    initializers += [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("two", TensorProto.INT64, [1], [2]),
    ]
    nodes.append(helper.make_node("Concat", columns, [OUTPUT_NAME], axis=1, name="stack_horizons"))
    graph = helper.make_graph(
        nodes,
        "surge_default",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, len(boosters)])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", ml_opset)],
        producer_name="surge.services.training.export",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _logit(p: FloatArray) -> FloatArray:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


def _sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def _logistic_fit(design: FloatArray, y: FloatArray, nonneg: int = 0) -> FloatArray:
    """Max-likelihood coefficients of sigmoid(design @ [w, c]); the first ``nonneg`` slopes kept >= 0."""
    d = np.column_stack([design, np.ones(len(y))])

    def nll(w: FloatArray) -> tuple[float, FloatArray]:
        z = d @ w
        p = _sigmoid(z)
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        return loss, np.asarray(d.T @ (p - y) / len(y), dtype=np.float64)

    start = np.zeros(d.shape[1])
    start[:design.shape[1]] = 1.0
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    start[-1] = math.log(rate / (1 - rate)) if design.shape[1] == 0 else 0.0
    bounds = [(0.0, None) if j < nonneg else (None, None) for j in range(d.shape[1])]
    res = minimize(nll, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(res.x, dtype=np.float64)


def calibration_map(method: str, raw: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(x, y) of the monotone table of ``method`` fitted on raw scores and 0/1 outcomes."""
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(raw, y)
        return np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
    z = _logit(raw)
    grid_z = np.linspace(-_LOGIT_EDGE, _LOGIT_EDGE, PARAMETRIC_GRID)
    grid = _sigmoid(grid_z)
    if method == "temperature":
        w = _logistic_fit(z[:, None], y, nonneg=1)  # slope 1/T; fitted without an offset below
        t_inv = float(minimize(lambda v: float(np.mean(np.logaddexp(0.0, v[0] * z) - y * v[0] * z)), [w[0]],
                               bounds=[(1e-3, 50.0)], method="L-BFGS-B").x[0])
        table = _sigmoid(t_inv * grid_z)
    elif method == "platt":
        w = _logistic_fit(z[:, None], y, nonneg=1)
        table = _sigmoid(w[0] * grid_z + w[1])
    else:  # beta
        feats = np.column_stack([np.log(np.clip(raw, 1e-12, 1.0)), -np.log(np.clip(1 - raw, 1e-12, 1.0))])
        w = _logistic_fit(feats, y, nonneg=2)
        table = _sigmoid(w[0] * np.log(grid) - w[1] * np.log1p(-grid) + w[2])
    return grid, np.clip(np.maximum.accumulate(table), 0.0, 1.0)


def fit_calibration(horizon_min: int, raw: FloatArray, y: FloatArray, method: str = "isotonic") -> Calibration:
    """Monotone map (``method``, one of ``CALIBRATIONS``) of raw scores to outcome frequencies, with the counts of
    ``raw`` per raw-p bin."""
    x_table, y_table = calibration_map(method, raw, y)
    counts, edges = np.histogram(raw, bins=CAL_BINS, range=(0.0, 1.0))
    return Calibration(horizon_min, x_table, y_table, edges.astype(np.float64), counts.astype(np.int64), Z_95)


def calibration_json(cal: Calibration) -> dict[str, Any]:
    """The model.json entry of one horizon: the table the infer stage loads, and how many scores fitted it."""
    return {**cal.to_json(), "n_oof": int(cal.bin_counts.sum())}


def parity(served: Model, boosters: Sequence[lgb.Booster], probe: FloatArray, seed: int) -> dict[str, Any]:
    """Largest |served - native| over ``probe`` and a copy of it with ``PROBE_NAN_SHARE`` of the inputs missing,
    raw and calibrated (the served model's tables applied to the native scores)."""
    nan_probe = probe.copy()
    nan_probe[np.random.default_rng(seed).random(nan_probe.shape) < PROBE_NAN_SHARE] = np.nan
    worst = 0.0
    worst_cal = 0.0
    for batch in (probe, nan_probe):
        if not len(batch):
            continue
        native = np.column_stack([b.predict(batch) for b in boosters])
        worst = max(worst, float(np.max(np.abs(served.predict_raw(batch.astype(np.float32)) - native))))
        cal_native = np.column_stack([cal.apply(native[:, j]) for j, cal in enumerate(served.calibrations)])
        worst_cal = max(worst_cal, float(np.max(np.abs(served.predict(batch).p_up - cal_native))))
    return {"rows": int(2 * len(probe)), "nan_share_of_half": PROBE_NAN_SHARE, "max_abs_diff_raw": worst,
            "max_abs_diff_calibrated": worst_cal}
