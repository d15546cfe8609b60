"""SHAP attribution cost (make bench, not make test). Results: bench/results/shap.json.

The infer stage's attribution worker (streams/infer/shap.py) on the shipped default model (btcusdt-klines: 3
horizons x 300 rounds x 15 leaves, 25 inputs): ``pred_contrib`` on one thread for a full batch
(2,000 predictions -> 6,000 rows; the default ``SURGE_ATTRIBUTION_BATCH_MAX`` is 200, chosen from this number),
the top-5 selection, and the ONNX call on the same rows for scale. The inputs are the shipped model's training
means plus noise of its training std, so the trees take realistic paths; the numbers say how many predictions per
second one core can explain.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import pytest

from schemas import common_pb2, prediction_pb2
from streams.infer.artifacts import shipped
from streams.infer.model import load_model
from streams.infer.shap import ShapExplainer, ShapQueue
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.bench

RESULTS = REPO_ROOT / "bench" / "results"
BATCH = 2_000
REPEATS = 5


def test_shap_worker_throughput() -> None:
    model = load_model(shipped("btcusdt-klines"))
    explainer = ShapExplainer.for_model(model)
    assert explainer is not None
    att = model.attribution
    x = att.mean + np.random.default_rng(3).normal(size=(BATCH, model.n_features)) * att.std
    queue = ShapQueue()
    for i in range(BATCH):
        queue.offer(model, prediction_pb2.Prediction(prediction_id=f"p{i}", symbol="BTCUSDT",
                                                     venue=common_pb2.BINANCE_SPOT), x[i])
    batch, _ = queue.drain(BATCH)

    def best(fn: object) -> float:
        assert callable(fn)
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    contrib_s = best(lambda: explainer.contributions(x))
    rows_s = best(lambda: explainer.rows(batch, 0))
    onnx_s = best(lambda: model.predict_raw(np.ascontiguousarray(x, dtype=np.float32)))
    results = {
        "model_version": model.model_version,
        "batch_predictions": BATCH,
        "horizons": len(model.horizons),
        "pred_contrib_s": round(contrib_s, 4),
        "rows_with_top5_s": round(rows_s, 4),
        "onnx_same_rows_s": round(onnx_s, 5),
        "predictions_per_s_one_core": round(BATCH / rows_s),
        "us_per_prediction_all_horizons": round(rows_s / BATCH * 1e6, 1),
        "load_average": os.getloadavg()[0],
        "machine": platform.machine(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "shap.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    assert len(explainer.rows(batch[:10], 0)) == 10 * len(model.horizons)
