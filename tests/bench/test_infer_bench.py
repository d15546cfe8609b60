"""Inference latency and infer-stage throughput (make bench, not make test). Results: bench/results/infer.json.

* Engines on the same trees: ONNX Runtime (the served graph, session options of the infer stage), native
  LightGBM (one ``Booster.predict`` per horizon) and treelite's GTIL interpreter; per row and per batch of 32.
  The model has the shape ``surge train`` ships (3 horizons x 300 rounds x 15 leaves) on synthetic data with
  the feature count of the shipped klines model, so the numbers do not depend on which artifact is around.
* "served" adds what the infer stage does after the graph: calibration tables and Wilson intervals.
* Stage throughput: ``streams.infer.core.process`` on batches of 32 FeatureVectors, including protobuf
  decode of the input and encode of the output (the stage's CPU path without the broker), with and without
  a canary (which adds the shadow scoring of canary rows).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import features_pb2
from streams.infer.core import InferState, process
from streams.infer.model import load_model, physical_cores
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.bench

RESULTS = REPO_ROOT / "bench" / "results"
SHIPPED = REPO_ROOT / "streams" / "infer" / "artifacts" / "btcusdt-klines"
HORIZONS = (5, 10, 30)
BATCH = 32
ROW_REPEATS = 2000
BATCH_REPEATS = 1000
STAGE_BATCHES = 400


def percentiles(samples_s: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 4), "p99_ms": round(float(np.percentile(arr, 99)), 4),
            "mean_ms": round(float(arr.mean()), 4), "n": len(samples_s)}


def timed(fn: Callable[[], object], repeats: int, warmup: int = 50) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def build_model(folder: Path, n_features: int) -> tuple[list[Any], np.ndarray]:
    """Shipped-shape boosters on synthetic data, exported with the training code; returns (boosters, X)."""
    from services.training.default_model import round_thresholds, to_onnx
    from services.training.train import TrainConfig, fit_booster

    rng = np.random.default_rng(3)
    n = 20_000
    x = rng.normal(size=(n, n_features)).astype(np.float32).astype(np.float64)
    x[rng.random(x.shape) < 0.02] = np.nan
    cfg = TrainConfig()
    names = [f"f{i}" for i in range(n_features)]
    boosters = []
    for j, _ in enumerate(HORIZONS):
        logit = np.nan_to_num(x[:, j] + 0.5 * x[:, j + 1]) + rng.normal(size=n)
        y = (logit > 1.5).astype(np.float64)
        boosters.append(round_thresholds(fit_booster(x, y, np.ones(n), names, cfg, "logloss")))
    proto = to_onnx(boosters, n_features)
    folder.mkdir(parents=True, exist_ok=True)
    raw = proto.SerializeToString()
    import hashlib

    (folder / "model.onnx").write_bytes(raw)
    cal = {"x": [0.0, 1.0], "y": [0.0, 1.0], "bin_edges": [0.0, 0.5, 1.0], "bin_counts": [100, 100], "z": 1.96}
    meta = {"format": "surge-model/1", "model_version": "bench", "feature_version": "bench", "features": names,
            "horizons_min": list(HORIZONS),
            "onnx": {"file": "model.onnx", "input": "features", "output": "p_up_raw",
                     "sha256": hashlib.sha256(raw).hexdigest()},
            "calibration": {str(h): cal for h in HORIZONS},
            "attribution": {"mean": [0.0] * n_features, "std": [1.0] * n_features,
                            "importance": [1.0 / n_features] * n_features}}
    (folder / "model.json").write_text(json.dumps(meta))
    return boosters, x


def vectors(x: np.ndarray, names: list[str], feature_version: str, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        vec = features_pb2.FeatureVector(schema_version=1, vector_id=f"bench:{i}", symbol=f"S{i % 64:02d}USDT",
                                         feature_version=feature_version, names=names,
                                         values=[float(v) for v in x[i % len(x)]], mid_price=100.0)
        vec.ts.exchange_us = 1_000 + i
        out.append(vec.SerializeToString())
    return out


def stage_throughput(state: InferState, payloads: list[bytes]) -> dict[str, Any]:
    clock = ManualClock(1)
    batches = [payloads[i:i + BATCH] for i in range(0, len(payloads), BATCH)]
    latencies = []
    t_start = time.perf_counter()
    rows = 0
    for raw_batch in batches:
        t0 = time.perf_counter()
        recs = [InRecord(value=features_pb2.FeatureVector.FromString(b), key="") for b in raw_batch]
        out = process(recs, state, clock)
        for e in out.emits:
            e.value.SerializeToString()
        latencies.append(time.perf_counter() - t0)
        rows += len(out.emits)
    elapsed = time.perf_counter() - t_start
    return {"rows_per_s": round(rows / elapsed, 1), "batch_ms": percentiles(latencies), "rows": rows}


def test_infer_latency_and_throughput(tmp_path: Path) -> None:
    n_features = 50
    shipped_meta: dict[str, Any] | None = None
    if (SHIPPED / "model.json").exists():
        shipped_meta = json.loads((SHIPPED / "model.json").read_text())
        n_features = len(shipped_meta["features"])
    boosters, x = build_model(tmp_path / "bench-model", n_features)
    threads = physical_cores()
    model = load_model(tmp_path / "bench-model")  # the infer stage's session options
    one_thread = load_model(tmp_path / "bench-model", intra_op_threads=1)
    row = x[:1]
    batch = x[:BATCH]
    row32, batch32 = row.astype(np.float32), batch.astype(np.float32)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "physical_cores": threads, "onnx_intra_op_threads": threads,
                    "load_average_1m_at_start": round(os.getloadavg()[0], 2)},
        "model": {"horizons": list(HORIZONS), "rounds_per_horizon": boosters[0].num_trees(),
                  "num_leaves": 15, "features": n_features},
        "per_row": {}, "per_batch_32": {},
    }
    engines: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "onnxruntime": (lambda: model.predict_raw(row32), lambda: model.predict_raw(batch32)),
        "onnxruntime_served": (lambda: model.predict(row), lambda: model.predict(batch)),
        "onnxruntime_1_thread": (lambda: one_thread.predict_raw(row32), lambda: one_thread.predict_raw(batch32)),
        # One thread: OpenMP start-up costs more than it saves on 1-32 rows.
        "lightgbm_native": (lambda: [b.predict(row, num_threads=1) for b in boosters],
                            lambda: [b.predict(batch, num_threads=1) for b in boosters]),
    }
    try:
        import treelite

        tl_models = [treelite.frontend.from_lightgbm(b) for b in boosters]
        engines["treelite_gtil"] = (lambda: [treelite.gtil.predict(m, row32, nthread=threads) for m in tl_models],
                                    lambda: [treelite.gtil.predict(m, batch32, nthread=threads) for m in tl_models])
        results["treelite_version"] = treelite.__version__
        gtil = np.column_stack([treelite.gtil.predict(m, batch32).reshape(BATCH) for m in tl_models])
        results["treelite_max_abs_diff_vs_native"] = float(np.max(np.abs(
            gtil - np.column_stack([b.predict(batch) for b in boosters]))))
    except ImportError:
        results["treelite_version"] = None
    for name, (per_row, per_batch) in engines.items():
        results["per_row"][name] = timed(per_row, ROW_REPEATS)
        results["per_batch_32"][name] = timed(per_batch, BATCH_REPEATS)
    onnx_raw = model.predict_raw(x[:2000].astype(np.float32))
    native = np.column_stack([b.predict(x[:2000]) for b in boosters])
    results["onnx_parity_max_abs_diff"] = float(np.max(np.abs(onnx_raw - native)))

    names = list(model.feature_names)
    payloads = vectors(x, names, "bench", STAGE_BATCHES * BATCH)
    results["stage"] = {"active_only": stage_throughput(InferState(model), payloads)}
    canary = load_model(tmp_path / "bench-model")
    with_canary = InferState(model, canary=canary, canary_share=0.1, canary_id="bench@1")
    results["stage"]["canary_10pct"] = stage_throughput(with_canary, payloads)

    if shipped_meta is not None:
        shipped = load_model(SHIPPED)
        xs = np.random.default_rng(5).normal(size=(BATCH, shipped.n_features))
        results["shipped_model"] = {
            "model_version": shipped.model_version,
            "per_row": timed(lambda: shipped.predict(xs[:1]), ROW_REPEATS),
            "per_batch_32": timed(lambda: shipped.predict(xs), BATCH_REPEATS),
        }
    results["target"] = {"p99_ms_per_batch_32": 5.0,
                         "met_by_onnxruntime_served": results["per_batch_32"]["onnxruntime_served"]["p99_ms"] <= 5.0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "infer.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    assert results["onnx_parity_max_abs_diff"] < 1e-5
    assert results["stage"]["active_only"]["rows"] == STAGE_BATCHES * BATCH
