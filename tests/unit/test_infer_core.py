"""Unit tests of the infer core and model loading, on a hand-built ONNX model with known outputs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, prediction_pb2
from streams.features.definitions import FEATURE_VERSION
from streams.infer.core import InferState, process
from streams.infer.model import MODEL_FORMAT, ModelError, load_model, physical_cores, session_options, wilson_interval
from streams.infer.stage import default_model_dir, spec
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs, StageContext
from streams.runtime.settings import Settings
from streams.runtime.topics import Topic

pytestmark = pytest.mark.unit

NAMES = ["a", "b", "c", "spread_bps"]
HORIZONS = [5, 10]
# p_raw[:, 0] = sigmoid(a), p_raw[:, 1] = sigmoid(-b); NaN inputs count as 0 in this toy graph.
WEIGHTS = np.array([[1.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32)
CAL = {
    "5": {"x": [0.0, 0.5, 1.0], "y": [0.1, 0.3, 0.9], "bin_edges": [0.0, 0.5, 1.0], "bin_counts": [0, 100],
          "z": 1.96},
    "10": {"x": [0.0, 1.0], "y": [0.0, 1.0], "bin_edges": [0.0, 1.0], "bin_counts": [400], "z": 1.96},
}
ATTRIBUTION = {"mean": [0.0, 1.0, 0.0, 2.0], "std": [1.0, 2.0, 4.0, 1.0], "importance": [0.5, 0.2, 0.2, 0.1]}
VERSION = "toy-1"


def write_model(folder: Path, feature_version: str = FEATURE_VERSION, **overrides: Any) -> Path:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(NAMES)])
    y = helper.make_tensor_value_info("p_up_raw", TensorProto.FLOAT, [None, len(HORIZONS)])
    nodes = [
        helper.make_node("IsNaN", ["features"], ["nan_mask"]),
        helper.make_node("Where", ["nan_mask", "zero", "features"], ["clean"]),
        helper.make_node("MatMul", ["clean", "w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_up_raw"]),
    ]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, list(WEIGHTS.shape), WEIGHTS.ravel().tolist()),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(nodes, "toy", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    raw = model.SerializeToString()
    (folder / "model.onnx").write_bytes(raw)
    meta = {
        "format": MODEL_FORMAT, "model_version": VERSION, "feature_version": feature_version, "features": NAMES,
        "horizons_min": HORIZONS,
        "onnx": {"file": "model.onnx", "input": "features", "output": "p_up_raw",
                 "sha256": hashlib.sha256(raw).hexdigest()},
        "calibration": CAL, "attribution": ATTRIBUTION, "training": {"source": "unit test"},
    }
    meta.update(overrides)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def state(tmp_path: Path) -> InferState:
    return InferState(load_model(write_model(tmp_path / "toy"), intra_op_threads=1))


def vector(i: int, values: dict[str, float] | None = None, feature_version: str = FEATURE_VERSION,
           names: list[str] | None = None) -> features_pb2.FeatureVector:
    vals = values if values is not None else {"a": 0.1 * i - 1.0, "b": 0.5, "c": 3.0, "spread_bps": 1.25}
    order = names if names is not None else list(vals)
    vec = features_pb2.FeatureVector(
        schema_version=SCHEMA_VERSION, vector_id=f"simulator:BTCUSDT:{i}", venue=common_pb2.SIMULATOR,
        symbol="BTCUSDT", feature_version=feature_version, names=order, values=[vals[n] for n in order],
        regime="vol_low_depth_thick", mid_price=100.25, data_window_id=f"BTCUSDT:1-{i}",
        quality_flags=[common_pb2.SIMULATED],
    )
    vec.ts.exchange_us, vec.ts.ingest_us, vec.ts.features_us = 1_000 + i, 2_000 + i, 3_000 + i
    return vec


def run(vecs: list[features_pb2.FeatureVector], state: InferState, now_us: int = 10_000) -> Outputs:
    return process([InRecord(value=v, key=v.symbol) for v in vecs], state, ManualClock(now_us))


def predictions(out: Outputs) -> list[prediction_pb2.Prediction]:
    preds = []
    for e in out.emits:
        assert isinstance(e.value, prediction_pb2.Prediction)
        preds.append(e.value)
    return preds


def sigmoid32(v: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float32(v), dtype=np.float32)))


def test_batch_of_32_gives_32_calibrated_predictions(state: InferState) -> None:
    vecs = [vector(i) for i in range(32)]
    out = run(vecs, state, now_us=99_000)
    assert not out.rejects and len(out.emits) == 32
    for vec, emit, pred in zip(vecs, out.emits, predictions(out), strict=True):
        assert emit.topic is Topic.PREDICTIONS and emit.key == "SIMULATOR:BTCUSDT"
        assert emit.exchange_us == vec.ts.exchange_us
        assert pred.prediction_id == f"{vec.vector_id}:{VERSION}"
        assert pred.model_version == VERSION and pred.feature_version == FEATURE_VERSION
        assert [h.horizon_min for h in pred.horizons] == HORIZONS
        for h in pred.horizons:
            assert 0.0 <= h.ci_low <= h.p_up <= h.ci_high <= 1.0
        assert (pred.regime, pred.mid_price, pred.spread_bps) == ("vol_low_depth_thick", 100.25, 1.25)
        assert pred.data_window_id == vec.data_window_id and list(pred.quality_flags) == [common_pb2.SIMULATED]
        assert (pred.ts.exchange_us, pred.ts.ingest_us, pred.ts.features_us, pred.ts.infer_us) == (
            vec.ts.exchange_us, vec.ts.ingest_us, vec.ts.features_us, 99_000)
        assert pred.schema_version == SCHEMA_VERSION and not pred.canary


def test_calibration_table_is_applied_and_monotone(state: InferState) -> None:
    a_values = [-3.0, -1.0, 0.0, 0.5, 2.0, 4.0]
    preds = predictions(run([vector(i, {"a": a, "b": 0.0, "c": 0.0, "spread_bps": 1.0})
                             for i, a in enumerate(a_values)], state))
    p5 = [p.horizons[0].p_up for p in preds]
    x = np.array([[a, 0.0, 0.0, 1.0] for a in a_values], dtype=np.float32)
    raw = state.model.predict_raw(x)[:, 0]
    np.testing.assert_allclose(raw, [sigmoid32(a) for a in a_values], atol=1e-6)
    assert p5 == [float(v) for v in np.interp(raw, [0.0, 0.5, 1.0], [0.1, 0.3, 0.9])]
    assert p5[2] == pytest.approx(0.3, abs=1e-12)  # raw 0.5 maps to the table's middle point
    assert p5 == sorted(p5) and p5[0] > 0.1 - 1e-12 and p5[-1] < 0.9 + 1e-12
    # Horizon 10 has the identity table on sigmoid(-b) = 0.5.
    assert all(p.horizons[1].p_up == pytest.approx(0.5, abs=1e-7) for p in preds)


def test_confidence_interval_is_wilson_with_the_bin_count(state: InferState) -> None:
    pred = predictions(run([vector(0, {"a": 1.0, "b": 0.0, "c": 0.0, "spread_bps": 1.0})], state))[0]
    h5 = pred.horizons[0]
    n, z, p = 100.0, 1.96, h5.p_up  # raw sigmoid(1) > 0.5: the second bin, 100 calibration samples
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert h5.ci_low == pytest.approx(center - half, abs=1e-12)
    assert h5.ci_high == pytest.approx(center + half, abs=1e-12)
    low = predictions(run([vector(1, {"a": -1.0, "b": 0.0, "c": 0.0, "spread_bps": 1.0})], state))[0]
    assert (low.horizons[0].ci_low, low.horizons[0].ci_high) == (0.0, 1.0)  # an empty bin knows nothing
    lo, hi = wilson_interval(np.array([0.0, 1.0, 0.3]), np.array([10, 10, 0]), 1.96)
    assert lo[0] == 0.0 and hi[1] == 1.0 and (lo[2], hi[2]) == (0.0, 1.0)


def test_names_are_mapped_to_model_order_and_missing_is_nan(state: InferState) -> None:
    ordered = vector(0, {"a": 0.7, "b": -0.4, "c": 1.0, "spread_bps": 2.0})
    shuffled = vector(1, {"spread_bps": 2.0, "c": 1.0, "extra": 9.0, "b": -0.4, "a": 0.7})
    missing = vector(2, {"a": 0.7, "b": float("nan"), "c": 1.0, "spread_bps": 2.0})
    lacking = vector(3, {"a": 0.7, "c": 1.0, "spread_bps": 2.0})
    p0, p1, p2, p3 = predictions(run([ordered, shuffled, missing, lacking], state))
    assert [h.p_up for h in p0.horizons] == [h.p_up for h in p1.horizons]
    assert [h.p_up for h in p2.horizons] == [h.p_up for h in p3.horizons]
    assert p3.horizons[1].p_up == pytest.approx(0.5, abs=1e-7)  # b missing -> NaN -> the toy graph's 0


def test_top_features_rank_standardised_value_times_importance(state: InferState) -> None:
    pred = predictions(run([vector(0, {"a": 0.4, "b": 5.0, "c": float("nan"), "spread_bps": 1.0})], state))[0]
    # (x - mean) / std * importance: a 0.2, b 0.4, c missing, spread_bps -0.1
    assert [(f.name, f.value) for f in pred.top_features] == [("b", 5.0), ("a", 0.4), ("spread_bps", 1.0)]
    assert [f.contribution for f in pred.top_features] == pytest.approx([0.4, 0.2, -0.1])


def test_feature_version_mismatch_is_rejected_not_scored(state: InferState) -> None:
    good, stale = vector(0), vector(1, feature_version="0123456789ab")
    out = run([good, stale], state)
    assert [p.prediction_id for p in predictions(out)] == [f"{good.vector_id}:{VERSION}"]
    (rej,) = out.rejects
    assert rej.error_type == "feature_version_mismatch" and rej.record.value is stale
    assert "0123456789ab" in rej.reason and FEATURE_VERSION in rej.reason


def test_malformed_vector_is_rejected(state: InferState) -> None:
    bad = vector(0)
    del bad.values[-1]
    out = run([bad], state)
    assert not out.emits and [r.error_type for r in out.rejects] == ["malformed_vector"]


def test_outputs_are_deterministic(state: InferState, tmp_path: Path) -> None:
    vecs = [vector(i) for i in range(8)]
    first = [p.SerializeToString() for p in predictions(run(vecs, state))]
    again = [p.SerializeToString() for p in predictions(run(vecs, state))]
    other = InferState(load_model(write_model(tmp_path / "copy"), intra_op_threads=2))
    assert first == again == [p.SerializeToString() for p in predictions(run(vecs, other))]


def test_label_barriers_travel_with_every_horizon(state: InferState, tmp_path: Path) -> None:
    for h in predictions(run([vector(1)], state))[0].horizons:  # the toy model states no labels
        assert (h.upper_barrier_bps, h.lower_barrier_bps, h.timeout_counts_as_not_up) == (0.0, 0.0, False)
    labels = {"kind": "triple_barrier_1m_bars", "theta_up": 0.006, "theta_dn": 0.004, "timeout": "not up"}
    stated = InferState(load_model(write_model(tmp_path / "labelled", labels=labels), intra_op_threads=1))
    for h in predictions(run([vector(1)], stated))[0].horizons:
        assert (h.upper_barrier_bps, h.lower_barrier_bps, h.timeout_counts_as_not_up) == (60.0, 40.0, True)
    with pytest.raises(ModelError, match="theta_up and theta_dn"):
        load_model(write_model(tmp_path / "bad", labels={"theta_up": "wide"}))
    with pytest.raises(ModelError, match="must be in"):
        load_model(write_model(tmp_path / "neg", labels={"theta_up": -0.01, "theta_dn": 0.004}))


def test_load_model_refuses_inconsistent_artifacts(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m")
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256"):
        load_model(folder)
    narrow = {"mean": [0.0, 0.0], "std": [1.0, 1.0], "importance": [0.5, 0.5]}
    with pytest.raises(ModelError, match="probe inference failed"):  # 2 names for a 4-column graph
        load_model(write_model(tmp_path / "n", features=["a", "b"], attribution=narrow))
    with pytest.raises(ModelError, match="calibration for horizon"):
        load_model(write_model(tmp_path / "p", calibration={"5": CAL["5"]}))
    bad_cal = {**CAL, "5": {**CAL["5"], "y": [0.5, 0.3, 0.9]}}
    with pytest.raises(ModelError, match="non-decreasing"):
        load_model(write_model(tmp_path / "o", calibration=bad_cal))


def test_session_uses_all_optimisations_and_physical_cores() -> None:
    import onnxruntime as ort

    opts = session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == physical_cores() >= 1
    assert opts.inter_op_num_threads == 1


def test_stage_spec_batches_by_the_infer_settings(tmp_path: Path) -> None:
    settings = Settings(model_dir=write_model(tmp_path / "toy"), infer_batch_rows=32, infer_batch_ms=25,
                        infer_registry=False)
    s = spec(settings)
    assert (s.name, s.input_topics, s.batch_max, s.batch_timeout_ms) == ("infer", (Topic.FEATURES,), 32, 25)
    state = s.make_state(StageContext.standalone("infer", settings))
    assert state.model.model_version == VERSION and state.serving.canary is None
    assert len(state.closers) == 1 and state.attribution is not None  # the SHAP worker's
    quiet = settings.model_copy(update={"attribution_interval_s": 0.0})
    assert not spec(quiet).make_state(StageContext.standalone("infer", quiet)).closers
    artifacts = Path(__file__).resolve().parents[2] / "streams" / "infer" / "artifacts"
    assert default_model_dir() == artifacts / "btcusdt-klines"  # trained on real klines (issue 12 item 4)


def test_shipped_default_model_matches_the_feature_code() -> None:
    model = load_model(default_model_dir())
    assert model.feature_version == FEATURE_VERSION, "features changed: retrain streams/infer/artifacts/*"
    assert model.horizons == (5, 10, 30)
    out = process([InRecord(value=vector(0, {n: 0.0 for n in model.feature_names}), key="BTCUSDT")],
                  InferState(model), ManualClock())
    (pred,) = predictions(out)
    assert all(0.0 <= h.ci_low <= h.p_up <= h.ci_high <= 1.0 for h in pred.horizons)
    assert sum(f.stat().st_size for f in default_model_dir().iterdir() if f.is_file()) < 2_500_000


def test_the_liquidated_notional_of_the_vector_travels_to_the_decision_stage(state: InferState) -> None:
    """liq_notional_1m (not a model input) is copied onto the prediction when it is a number; NaN leaves it unset."""
    burst = vector(1, {"a": 0.1, "b": 0.5, "c": 3.0, "spread_bps": 1.0, "liq_notional_1m": 312_500.0})
    quiet = vector(2, {"a": 0.1, "b": 0.5, "c": 3.0, "spread_bps": 1.0, "liq_notional_1m": float("nan")})
    first, second = predictions(run([burst, quiet], state))
    assert first.HasField("liquidation_notional_1m") and first.liquidation_notional_1m == 312_500.0
    assert not second.HasField("liquidation_notional_1m")
