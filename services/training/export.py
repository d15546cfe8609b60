"""From fitted boosters and out-of-fold scores to what the infer stage serves, for every dataset the pipeline
trains on (``train.py``): float32 thresholds, one ONNX graph, isotonic calibration tables, and the parity check
of the graph against the native boosters.

Thresholds: LightGBM splits on float64 thresholds but ONNX TreeEnsemble compares float32; each threshold t is
replaced by the largest float32 <= t before export, which leaves every decision on float32 inputs unchanged and
makes the graph exact up to float32 summation of leaf values (``parity`` measures it; the card states it).

Calibration: isotonic regression on out-of-fold raw scores, held as ``streams.infer.model.Calibration``, the
infer stage's own class, so training scores calibrated probabilities with the function that serves them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper
from sklearn.isotonic import IsotonicRegression

from streams.infer.model import Calibration, Model

FloatArray = npt.NDArray[np.float64]

INPUT_NAME = "features"
OUTPUT_NAME = "p_up_raw"
CAL_BINS = 20  # raw-p bins whose calibration-sample counts size the served confidence interval
Z_95 = 1.959963984540054
PROBE_NAN_SHARE = 0.05


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


def fit_calibration(horizon_min: int, raw: FloatArray, y: FloatArray) -> Calibration:
    """Isotonic map of raw scores to outcome frequencies, with the counts of ``raw`` per raw-p bin."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(raw, y)
    counts, edges = np.histogram(raw, bins=CAL_BINS, range=(0.0, 1.0))
    return Calibration(horizon_min, np.asarray(iso.X_thresholds_, dtype=np.float64),
                       np.asarray(iso.y_thresholds_, dtype=np.float64), edges.astype(np.float64),
                       counts.astype(np.int64), Z_95)


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
