"""Quantization and compilers for the shipped klines model (issue 12 item 5). Results:
bench/results/quantization.json. Not part of ``make test`` (marker bench).

Candidates against the current session (the served ONNX graph in ONNX Runtime with the infer stage's session
options), each on the same inputs: May 2026 BTCUSDT bars from the features stage's batch driver.

* ``onnx_fp16_values``: every tree threshold and leaf value rounded to float16 (what a float16 tree graph
  stores; ONNX Runtime's TreeEnsemble kernels compute in float32/float64, so the op itself stays float32).
* ``onnx_int8_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights). It quantizes MatMul /
  Gemm / Conv / attention weights; a tree ensemble has none of those, which the result records.
* ``treelite_gtil``: the same boosters in treelite's GTIL interpreter (``treelite.gtil.predict``).

Per candidate: latency of a batch of 32 rows (p50/p99 over repeated calls, one thread), the largest raw
difference to the current session, and PR-AUC per horizon on May's labels against the current session's.
Adoption rule (the reference plan): only if no horizon loses more than 1 pp PR-AUC, and only if it is faster.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sklearn.metrics import average_precision_score

from streams.infer.model import load_model, session_options
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.bench

RESULTS = REPO_ROOT / "bench" / "results"
SHIPPED = REPO_ROOT / "streams" / "infer" / "artifacts" / "btcusdt-klines"
BATCH = 32
REPEATS = 400
MAX_PR_AUC_LOSS = 0.01
FLOAT_ATTRS = ("nodes_values", "class_weights", "base_values")


def timed(fn: Callable[[], object], repeats: int = REPEATS, warmup: int = 30) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def fp16_values(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        for attr in node.attribute:
            if attr.name in FLOAT_ATTRS and attr.floats:
                vals = np.asarray(attr.floats, dtype=np.float32).astype(np.float16).astype(np.float32)
                del attr.floats[:]
                attr.floats.extend(float(v) for v in vals)
            if attr.name.endswith("_as_tensor") and attr.t.dims:
                original = numpy_helper.to_array(attr.t)
                arr = original.astype(np.float16).astype(original.dtype)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
    return out


def test_quantization(shared_data: Path, tmp_path: Path) -> None:
    from services.training.dataset import LabelSpec, label_frame
    from streams.features.batch import compute_klines_frame

    served = load_model(SHIPPED, intra_op_threads=1)
    names = list(served.feature_names)
    klines = shared_data / "klines_1m"
    frame = compute_klines_frame([klines / "BTCUSDT-1m-2026-04.zip", klines / "BTCUSDT-1m-2026-05.zip"])
    horizons = tuple(served.horizons)
    lab = label_frame(frame, LabelSpec.minute_bars(horizons, 0.006, 0.004))
    may = lab.ts >= 1_777_593_600_000
    x = lab.frame[names].to_numpy(dtype=np.float32)[may]
    ys = {h: lab.y[h][may] for h in horizons}
    batch = np.ascontiguousarray(x[:BATCH])

    graph = onnx.load(str(SHIPPED / "model.onnx"))
    sessions: dict[str, ort.InferenceSession] = {}

    def session_of(proto: onnx.ModelProto, name: str) -> ort.InferenceSession:
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        return ort.InferenceSession(str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"])

    sessions["current_session"] = session_of(graph, "current")
    sessions["onnx_fp16_values"] = session_of(fp16_values(graph), "fp16")
    results: dict[str, Any] = {"model": served.model_version, "batch": BATCH, "threads": 1,
                               "eval_rows": len(x), "platform": platform.platform(),
                               "onnxruntime": ort.__version__, "candidates": {}}
    int8_note = ""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = tmp_path / "int8.onnx"
        quantize_dynamic(str(tmp_path / "current.onnx"), str(q_path), weight_type=QuantType.QInt8)
        q = onnx.load(str(q_path))
        quantized_nodes = [n.op_type for n in q.graph.node if "Integer" in n.op_type or "Quant" in n.op_type]
        int8_note = (f"{len(quantized_nodes)} node(s) quantized: tree ensembles have no MatMul/Gemm/Conv weights, "
                     "so the graph is unchanged" if not quantized_nodes else f"quantized {quantized_nodes}")
        sessions["onnx_int8_dynamic"] = ort.InferenceSession(str(q_path), sess_options=session_options(1),
                                                             providers=["CPUExecutionProvider"])
    except Exception as exc:  # quantization tooling missing or refusing the graph: recorded, not fatal
        int8_note = f"quantize_dynamic failed: {type(exc).__name__}: {exc}"
    inp = served.input_name
    out_name = served.output_name

    def run(sess: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([out_name], {inp: rows})[0], dtype=np.float64)

    reference = run(sessions["current_session"], x)
    ref_pr = {str(h): float(average_precision_score(ys[h][np.isfinite(ys[h])],
                                                    reference[np.isfinite(ys[h]), j]))
              for j, h in enumerate(horizons)}

    def record(name: str, predict_all: Callable[[], np.ndarray], predict_batch: Callable[[], object],
               note: str = "") -> None:
        pred = predict_all()
        pr = {str(h): float(average_precision_score(ys[h][np.isfinite(ys[h])], pred[np.isfinite(ys[h]), j]))
              for j, h in enumerate(horizons)}
        loss = {h: ref_pr[h] - pr[h] for h in pr}
        latency = timed(predict_batch)
        results["candidates"][name] = {
            "latency_batch32": latency, "max_abs_diff_raw": float(np.max(np.abs(pred - reference))),
            "pr_auc": pr, "pr_auc_lost_pp": {h: 100 * v for h, v in loss.items()}, "note": note,
        }

    for name, sess in sessions.items():
        record(name, lambda s=sess: run(s, x), lambda s=sess: run(s, batch),  # type: ignore[misc]
               int8_note if name == "onnx_int8_dynamic" else "")
    try:
        import treelite
    except ImportError:
        results["candidates"]["treelite_gtil"] = {"note": "treelite not installed"}
    else:
        # The artifact ships ONNX only, so treelite gets a booster of the same recipe fitted here (on April, one
        # horizon: 30 min) and is compared with that booster's own ONNX graph in the current session.
        from services.training import export
        from services.training.train import TrainConfig, fit_booster

        cfg = TrainConfig(horizons=(30,), class_weight="none", lambda_l2=270.0, objective="logloss",
                          monotone_increasing=("parkinson_5m", "parkinson_1h", "rv_1h"))
        april = (lab.ts < 1_777_593_600_000) & np.isfinite(lab.y[30])
        xa = lab.frame[names].to_numpy(dtype=np.float32)[april].astype(np.float64)
        booster = export.round_thresholds(fit_booster(xa, lab.y[30][april], np.ones(int(april.sum())), names, cfg,
                                                      "logloss"))
        one = session_of(export.to_onnx([booster], len(names)), "one_horizon")
        tl = treelite.frontend.from_lightgbm(booster)
        y30 = ys[30]
        ok = np.isfinite(y30)

        def gtil(rows: np.ndarray) -> np.ndarray:
            return np.asarray(treelite.gtil.predict(tl, rows, nthread=1), dtype=np.float64).reshape(len(rows))

        onnx_pred = run(one, x)[:, 0]
        tl_pred = gtil(x)
        pr_onnx = float(average_precision_score(y30[ok], onnx_pred[ok]))
        pr_tl = float(average_precision_score(y30[ok], tl_pred[ok]))
        results["candidates"]["treelite_gtil"] = {
            "latency_batch32": timed(lambda: gtil(batch)),
            "same_model_onnx_latency_batch32": timed(lambda: run(one, batch)),
            "max_abs_diff_raw": float(np.max(np.abs(tl_pred - onnx_pred))),
            "pr_auc": {"30": pr_tl}, "pr_auc_same_model_onnx": {"30": pr_onnx},
            "pr_auc_lost_pp": {"30": 100 * (pr_onnx - pr_tl)},
            "note": f"treelite {treelite.__version__}; one horizon (30 min) booster of the shipped recipe fitted on "
                    "April in the bench, against its own ONNX graph (the shipped graph has 3 horizons)",
        }

    current = results["candidates"]["current_session"]["latency_batch32"]["p50_ms"]
    adopted = None
    for name, c in results["candidates"].items():
        if name == "current_session" or "latency_batch32" not in c:
            continue
        baseline = c.get("same_model_onnx_latency_batch32", {}).get("p50_ms", current)
        c["speedup_p50"] = baseline / c["latency_batch32"]["p50_ms"]
        c["within_1pp"] = max(c["pr_auc_lost_pp"].values()) <= 100 * MAX_PR_AUC_LOSS
        c["adopt"] = bool(c["within_1pp"] and c["speedup_p50"] > 1.1)
        if c["adopt"] and (adopted is None or c["speedup_p50"] > results["candidates"][adopted]["speedup_p50"]):
            adopted = name
    results["adopted"] = adopted or "none: keep the current session"
    results["rule"] = "adopt only if PR-AUC lost <= 1 pp on every horizon and p50 latency at least 10 % lower"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    assert results["candidates"]["current_session"]["max_abs_diff_raw"] == 0.0
