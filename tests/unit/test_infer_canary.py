"""Canary routing, the automatic rollback rule and per-version metrics of the infer core, on toy ONNX models.

``toy_model`` is also used by the lifecycle unit and integration tests.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from schemas import SCHEMA_VERSION, common_pb2, features_pb2, prediction_pb2
from streams.infer.canary import CanaryGuard, CanaryPolicy, Verdict, canary_bucket, is_canary_symbol
from streams.infer.core import InferState, Serving, process
from streams.infer.model import MODEL_FORMAT, Model, load_model
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord, Outputs

pytestmark = pytest.mark.unit

TOY_FEATURES = ("a", "b")
TOY_HORIZONS = (5, 10)
TOY_FV = "toyfv"


def toy_model(folder: Path, version: str, *, weight: float = 1.0, bias: float = 0.0,
              feature_version: str = TOY_FV) -> Path:
    """p_up_raw[:, 0] = sigmoid(weight * a + bias), p_up_raw[:, 1] = sigmoid(weight * b + bias); NaN inputs
    count as 0; identity calibration; ``bias=nan`` gives a model whose every output is NaN."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("p_up_raw", TensorProto.FLOAT, [None, 2])
    nodes = [
        helper.make_node("IsNaN", ["features"], ["nan_mask"]),
        helper.make_node("Where", ["nan_mask", "zero", "features"], ["clean"]),
        helper.make_node("MatMul", ["clean", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_up_raw"]),
    ]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [weight, 0.0, 0.0, weight]),
             helper.make_tensor("bias", TensorProto.FLOAT, [2], [bias, bias]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    model = helper.make_model(helper.make_graph(nodes, "toy", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    raw = model.SerializeToString()
    (folder / "model.onnx").write_bytes(raw)
    cal = {"x": [0.0, 1.0], "y": [0.0, 1.0], "bin_edges": [0.0, 1.0], "bin_counts": [400], "z": 1.96}
    meta = {
        "format": MODEL_FORMAT, "model_version": version, "feature_version": feature_version,
        "features": list(TOY_FEATURES), "horizons_min": list(TOY_HORIZONS),
        "onnx": {"file": "model.onnx", "input": "features", "output": "p_up_raw",
                 "sha256": hashlib.sha256(raw).hexdigest()},
        "calibration": {str(h): cal for h in TOY_HORIZONS},
        "attribution": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "importance": [0.5, 0.5]},
    }
    (folder / "model.json").write_text(json.dumps(meta))
    (folder / "card.json").write_text(json.dumps({"metrics": {"eval": {"5": {"ece": 0.01}}}, "config": {}}))
    return folder


def feature_vector(i: int, symbol: str, a: float = 0.5, b: float = -0.5,
                   feature_version: str = TOY_FV) -> features_pb2.FeatureVector:
    vec = features_pb2.FeatureVector(
        schema_version=SCHEMA_VERSION, vector_id=f"test:{symbol}:{i}", venue=common_pb2.SIMULATOR, symbol=symbol,
        feature_version=feature_version, names=list(TOY_FEATURES), values=[a, b], regime="vol_low_depth_thin",
        mid_price=100.0, data_window_id=f"{symbol}:{i}-{i}")
    vec.ts.exchange_us = 1_000 + i
    return vec


def sigmoid(v: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float32(v), dtype=np.float32)))


def run(state: InferState, vecs: list[features_pb2.FeatureVector], now_us: int = 5_000) -> Outputs:
    return process([InRecord(value=v, key=v.symbol) for v in vecs], state, ManualClock(now_us))


def preds(out: Outputs) -> list[prediction_pb2.Prediction]:
    return [e.value for e in out.emits if isinstance(e.value, prediction_pb2.Prediction)]


SYMBOLS = [f"S{i:02d}USDT" for i in range(40)]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Model]:
    return {
        "m1": load_model(toy_model(tmp_path / "m1", "m1"), intra_op_threads=1),
        "m2": load_model(toy_model(tmp_path / "m2", "m2", weight=2.0), intra_op_threads=1),
        "nan": load_model(toy_model(tmp_path / "nan", "nan", bias=float("nan")), intra_op_threads=1),
        "far": load_model(toy_model(tmp_path / "far", "far", bias=6.0), intra_op_threads=1),
        "otherfv": load_model(toy_model(tmp_path / "o", "otherfv", feature_version="other"), intra_op_threads=1),
    }


def sample(value: float | None) -> float:
    assert value is not None
    return value


def test_canary_bucket_is_a_stable_hash_of_canary_and_symbol() -> None:
    digest = hashlib.sha256(b"m2@7\x00BTCUSDT").digest()
    assert canary_bucket("m2@7", "BTCUSDT") == int.from_bytes(digest[:8], "big") / 2.0**64
    assert canary_bucket("m2@7", "BTCUSDT") == canary_bucket("m2@7", "BTCUSDT")
    assert canary_bucket("m2@8", "BTCUSDT") != canary_bucket("m2@7", "BTCUSDT")  # a new trial, a new sample
    chosen = [s for s in (f"X{i}" for i in range(20_000)) if is_canary_symbol("m2@7", s, 0.1)]
    assert 1_900 <= len(chosen) <= 2_100
    assert not is_canary_symbol("m2@7", "BTCUSDT", 0.0) and is_canary_symbol("m2@7", "BTCUSDT", 1.0)


def test_canary_symbols_get_the_canary_and_the_rest_the_active(models: dict[str, Model]) -> None:
    state = InferState(models["m1"], canary=models["m2"], canary_share=0.3, canary_id="m2@1")
    vecs = [feature_vector(i, s, a=0.25 * (i % 5)) for i, s in enumerate(SYMBOLS)]
    out = run(state, vecs)
    expected = {s for s in SYMBOLS if is_canary_symbol("m2@1", s, 0.3)}
    assert 0 < len(expected) < len(SYMBOLS)
    assert not out.rejects
    for vec, p in zip(vecs, preds(out), strict=True):
        served = "m2" if vec.symbol in expected else "m1"
        weight = 2.0 if served == "m2" else 1.0
        assert (p.model_version, p.canary, p.prediction_id) == (served, served == "m2", f"{vec.vector_id}:{served}")
        assert p.horizons[0].p_up == pytest.approx(sigmoid(weight * vec.values[0]), abs=1e-6)
    reg = state.metrics.registry
    assert reg.get_sample_value("surge_infer_predictions_total",
                                {"model_version": "m2", "role": "canary"}) == len(expected)
    assert reg.get_sample_value("surge_infer_predictions_total",
                                {"model_version": "m1", "role": "active"}) == len(SYMBOLS) - len(expected)
    assert reg.get_sample_value("surge_infer_model_serving",
                                {"model_version": "m2", "role": "canary", "feature_version": TOY_FV}) == 1.0
    # Drift = mean over horizons of |sigmoid(2x) - sigmoid(x)| on the canary rows.
    drifts = [(abs(sigmoid(2 * v.values[0]) - sigmoid(v.values[0])) + abs(sigmoid(2 * v.values[1])
               - sigmoid(v.values[1]))) / 2 for v in vecs if v.symbol in expected]
    assert sample(reg.get_sample_value("surge_infer_canary_drift", {"model_version": "m2"})) == pytest.approx(
        sum(drifts) / len(drifts), abs=1e-6)


def test_a_broken_canary_is_served_by_the_active_and_withdrawn(models: dict[str, Model]) -> None:
    calls: list[tuple[str, str, str]] = []
    policy = CanaryPolicy(window_s=60, min_rows=10, max_invalid_rate=0.01, max_drift=0.15, rule="all")
    state = InferState(models["m1"], canary=models["nan"], canary_share=1.0, canary_id="nan@5", policy=policy,
                       on_canary_failure=lambda *a: calls.append(a))
    first = run(state, [feature_vector(i, SYMBOLS[i]) for i in range(6)])
    # Every row falls back to the active model; 6 rows are below min_rows, so the canary stays for now.
    assert [(p.model_version, p.canary) for p in preds(first)] == [("m1", False)] * 6 and not first.rejects
    assert state.serving.canary is not None and not calls
    second = run(state, [feature_vector(i, SYMBOLS[i]) for i in range(6, 12)], now_us=6_000)
    assert [p.model_version for p in preds(second)] == ["m1"] * 6
    assert state.serving.canary is None and state.withdrawn == {"nan@5"}
    (cid, version, reason), = calls
    assert (cid, version) == ("nan@5", "nan")
    assert reason == ("automatic canary rollback: invalid-output rate, prediction drift past threshold over 12 "
                      "canary rows (invalid-output rate 1.0000, mean |p_canary - p_active| unmeasurable)")
    reg = state.metrics.registry
    assert reg.get_sample_value("surge_infer_invalid_outputs_total", {"model_version": "nan", "role": "canary"}) == 12
    assert reg.get_sample_value("surge_infer_canary_rollbacks_total", {"model_version": "nan"}) == 1
    # The same canary deployment is never served again by this process, even if the registry still lists it.
    assert not state.swap(Serving(models["m1"], models["nan"], 1.0, "nan@5"))
    assert state.swap(Serving(models["m1"], models["nan"], 1.0, "nan@9"))  # a new deployment is a new trial


def test_drifting_canary_is_withdrawn_under_rule_any(models: dict[str, Model]) -> None:
    calls: list[str] = []
    policy = CanaryPolicy(window_s=60, min_rows=4, max_invalid_rate=0.01, max_drift=0.15, rule="any")
    state = InferState(models["m1"], canary=models["far"], canary_share=1.0, canary_id="far@1", policy=policy,
                       on_canary_failure=lambda cid, v, reason: calls.append(reason))
    out = run(state, [feature_vector(i, SYMBOLS[i], a=0.0, b=0.0) for i in range(4)])
    assert [p.model_version for p in preds(out)] == ["far"] * 4  # valid outputs are served while on trial
    drift = sigmoid(6.0) - 0.5
    assert calls == [f"automatic canary rollback: prediction drift past threshold over 4 canary rows "
                     f"(invalid-output rate 0.0000, mean |p_canary - p_active| {drift:.4f})"]
    assert [p.model_version for p in preds(run(state, [feature_vector(9, SYMBOLS[0])]))] == ["m1"]


def test_canary_refusing_the_feature_version_counts_as_invalid(models: dict[str, Model]) -> None:
    policy = CanaryPolicy(min_rows=3, rule="any")
    state = InferState(models["m1"], canary=models["otherfv"], canary_share=1.0, canary_id="o@1", policy=policy)
    out = run(state, [feature_vector(i, SYMBOLS[i]) for i in range(3)])
    assert [p.model_version for p in preds(out)] == ["m1"] * 3 and not out.rejects
    assert state.serving.canary is None
    assert state.metrics.registry.get_sample_value(
        "surge_infer_invalid_outputs_total", {"model_version": "otherfv", "role": "canary"}) == 3


def test_malformed_vector_is_not_held_against_the_canary(models: dict[str, Model]) -> None:
    state = InferState(models["m1"], canary=models["m2"], canary_share=1.0, canary_id="m2@1",
                       policy=CanaryPolicy(min_rows=1, rule="any"))
    bad = feature_vector(0, "BTCUSDT")
    del bad.values[-1]
    out = run(state, [bad])
    assert [r.error_type for r in out.rejects] == ["malformed_vector"] and not out.emits
    assert state.serving.canary is not None and state.guard.snapshot() == (0, 0.0, None)


def test_active_invalid_output_is_rejected_not_emitted(models: dict[str, Model]) -> None:
    state = InferState(models["nan"])
    out = run(state, [feature_vector(0, "BTCUSDT")])
    assert not out.emits and [r.error_type for r in out.rejects] == ["invalid_model_output"]
    assert state.metrics.registry.get_sample_value(
        "surge_infer_invalid_outputs_total", {"model_version": "nan", "role": "active"}) == 1


def test_guard_window_min_rows_and_rules() -> None:
    guard = CanaryGuard(CanaryPolicy(window_s=10, min_rows=100, max_invalid_rate=0.05, max_drift=0.1, rule="all"))
    assert guard.observe(0, "c1", 60, 6, 3.0, 54) is None  # 60 rows < 100
    # 40 more rows 20 s later: the first 60 left the window, 40 < 100 again.
    assert guard.observe(20_000_000, "c1", 40, 4, 2.0, 36) is None
    rows, rate, drift = guard.snapshot()
    assert (rows, rate) == (40, 0.1) and drift == pytest.approx(2.0 / 36)
    # Invalid rate 0.1 > 0.05 but drift 0.0556 < 0.1: under "all" no rollback.
    assert guard.observe(21_000_000, "c1", 60, 6, 3.0, 54) is None
    verdict = guard.observe(22_000_000, "c1", 100, 10, 20.0, 90)
    assert verdict == Verdict("c1", 200, 0.1, 25.0 / 180, ("invalid-output rate", "prediction drift"))
    assert guard.observe(23_000_000, "c1", 100, 100, 0.0, 0) is None  # fires once per canary
    assert guard.observe(23_000_000, "c2", 100, 0, 0.0, 100) is None  # a new canary starts clean
    assert guard.snapshot() == (100, 0.0, 0.0)
    strict = CanaryGuard(CanaryPolicy(min_rows=1, max_invalid_rate=0.0, max_drift=1.0, rule="any"))
    got = strict.observe(0, "c", 1, 1, 0.0, 0)
    assert got is not None and got.breached == ("invalid-output rate", "prediction drift") and got.drift is None
    assert math.isclose(got.invalid_rate, 1.0)
