"""SHAP attribution off the hot path (streams/infer/shap.py): the shipped boosters are the served graph, the top
features are the largest |SHAP| with missing inputs never a reason, the queue's cap keeps the newest of every
instrument, and the worker's rows reach /reports/attribution and /predictions/{id} through the real warehouse.
Real May 2026 BTCUSDT klines through the features batch driver and the infer core."""

from __future__ import annotations

import shutil
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas import common_pb2, features_pb2, prediction_pb2
from services.backtest.engine import kline_vectors
from streams.features.batch import compute_klines_frame
from streams.infer.artifacts import shipped
from streams.infer.core import InferState, process
from streams.infer.model import Model, ModelError, load_model
from streams.infer.shap import COLUMNS, TOP_K, ShapExplainer, ShapQueue, ShapWorker
from streams.runtime.clock import ManualClock
from streams.runtime.core import InRecord
from streams.sink import stage as sink_stage
from tests.unit.test_gateway_api import make_env, signal

pytestmark = pytest.mark.unit
ROWS = 3 * 1440


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model(shipped("btcusdt-klines"))


@pytest.fixture(scope="module")
def may_vectors(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[features_pb2.FeatureVector]:
    """Three real May days through the features stage's batch driver; the last day's vectors (warmed up)."""
    folder = tmp_path_factory.mktemp("klines")
    with zipfile.ZipFile(shared_data / "klines_1m" / "BTCUSDT-1m-2026-05.zip") as z:
        frame = pd.read_csv(z.open(z.namelist()[0]), header=None, nrows=ROWS)
    path = folder / "BTCUSDT-1m-2026-05.csv"
    frame.to_csv(path, header=False, index=False)
    return kline_vectors(compute_klines_frame([path]), "spot", 1.0)[-1440:]


def _scored(model: Model, vectors: list[features_pb2.FeatureVector],
            queue: ShapQueue) -> list[prediction_pb2.Prediction]:
    state = InferState(model)
    state.attribution = queue
    now = vectors[-1].ts.exchange_us + 1_000
    out = process([InRecord(value=v, key=v.symbol) for v in vectors], state, ManualClock(now))
    preds = [e.value for e in out.emits]
    assert all(isinstance(p, prediction_pb2.Prediction) for p in preds)
    return preds  # type: ignore[return-value]  # Emit.value is a Message; checked just above


def test_the_shipped_boosters_are_the_served_graph_and_shap_adds_up(model: Model,
                                                                      may_vectors: list[features_pb2.FeatureVector]
                                                                      ) -> None:
    explainer = ShapExplainer.for_model(model)
    assert explainer is not None and sorted(explainer.boosters) == [5, 10, 30]
    queue = ShapQueue()
    preds = _scored(model, may_vectors, queue)
    batch, skipped = queue.drain(10_000)
    assert skipped == 0 and [p.prediction_id for p in batch] == [p.prediction_id for p in preds]
    x = np.vstack([p.row for p in batch])
    raw = model.predict_raw(np.ascontiguousarray(x, dtype=np.float32))
    for j, (h, phi) in enumerate(explainer.contributions(x).items()):
        assert h == model.horizons[j]
        # Efficiency: SHAP values plus the base value are the booster's raw score, which is the ONNX graph's.
        logit = np.log(raw[:, j]) - np.log1p(-raw[:, j])
        np.testing.assert_allclose(phi.sum(axis=1), logit, atol=2e-4)
        assert np.all(phi[:, :-1][np.isnan(x)] == 0.0)  # a missing input contributes nothing


def test_rows_keep_the_top_k_by_abs_shap_and_never_a_missing_input(model: Model,
                                                                     may_vectors: list[features_pb2.FeatureVector]
                                                                     ) -> None:
    explainer = ShapExplainer.for_model(model)
    assert explainer is not None
    queue = ShapQueue()
    _scored(model, may_vectors[:50], queue)
    batch, _ = queue.drain(10_000)
    batch[0].row[:] = np.where(np.arange(model.n_features) < 3, np.nan, batch[0].row)  # three inputs missing
    rows = explainer.rows(batch, now_us=42)
    assert len(rows) == len(batch) * len(model.horizons)
    phi = explainer.contributions(np.vstack([p.row for p in batch]))
    names = model.feature_names
    for row in rows:
        i = next(k for k, p in enumerate(batch) if p.prediction_id == row[0])
        h = row[5]
        contrib = phi[h][i, :-1]
        present = [k for k in range(model.n_features) if not np.isnan(batch[i].row[k])]
        expected = sorted(present, key=lambda k: -abs(contrib[k]))[:TOP_K]
        assert row[6] == [names[k] for k in expected]
        assert row[8] == pytest.approx([contrib[k] for k in expected])
        assert row[9] == pytest.approx(phi[h][i, -1]) and row[12] == 42
    assert not set(rows[0][6]) & set(names[:3])


def test_a_corrupt_booster_costs_that_model_its_shap_rows_only(tmp_path: Path, model: Model) -> None:
    """Tried: a booster file that is not gzip. The model still loads and serves; the worker counts its
    predictions as skipped and goes on."""
    folder = tmp_path / "broken"
    shutil.copytree(model.folder, folder)
    (folder / "booster_30.txt.gz").write_bytes(b"not gzip")
    broken = load_model(folder)
    with pytest.raises(ModelError, match=r"booster_30\.txt\.gz unreadable"):
        ShapExplainer.for_model(broken)
    queue = ShapQueue()
    queue.offer(broken, prediction_pb2.Prediction(prediction_id="p1", symbol="BTCUSDT"), np.zeros(model.n_features))
    seen: list[tuple[int, int]] = []
    worker = ShapWorker(queue, lambda rows: None, lambda: 1, on_batch=lambda r, s, t: seen.append((r, s)))
    assert worker.run_once() == 0 and seen == [(0, 1)]


def test_the_cap_keeps_the_newest_of_every_instrument_then_the_newest(model: Model) -> None:
    queue = ShapQueue(capacity=8)
    row = np.zeros(model.n_features)
    for i, symbol in enumerate(["A", "A", "B", "A", "C", "A", "A", "A", "A", "A"]):
        pred = prediction_pb2.Prediction(prediction_id=f"{symbol}{i}", symbol=symbol, venue=common_pb2.BINANCE_SPOT)
        queue.offer(model, pred, row)
    assert queue.dropped == 2  # capacity 8: A0 and A1 fell out
    batch, skipped = queue.drain(4)
    # Newest of B, C and A first (B2, C4, A9), then the newest of the rest (A8); in arrival order.
    assert [p.prediction_id for p in batch] == ["B2", "C4", "A8", "A9"] and skipped == 4
    assert queue.drain(4) == ([], 0)


def test_worker_rows_reach_reports_and_predictions(tmp_path: Path, redis_url: str, model: Model,
                                                   may_vectors: list[features_pb2.FeatureVector]) -> None:
    # The reports look back from now (at most 30 days): May's bars are moved to the last two hours, values kept.
    now_us = (pd.Timestamp.now(tz="UTC").value // 1000 // 60_000_000) * 60_000_000
    shift = now_us - 60_000_000 - may_vectors[-1].ts.exchange_us
    vectors = []
    for v in may_vectors[-120:]:
        moved = features_pb2.FeatureVector()
        moved.CopyFrom(v)
        for field in ("exchange_us", "ingest_us", "features_us"):
            if getattr(moved.ts, field):
                setattr(moved.ts, field, getattr(moved.ts, field) + shift)
        vectors.append(moved)
    for env in make_env(tmp_path, redis_url, cache_l1_ttl_ms=0, gateway_cache_ttl_s=0):
        insert = env.warehouse.insert
        queue = ShapQueue()
        preds = _scored(model, vectors, queue)
        rt = env.sink()
        sink_stage.process([InRecord(value=p, key=p.symbol) for p in preds], rt, ManualClock(now_us))
        assert sink_stage.flush(rt) == []
        seen: list[tuple[int, int, float]] = []
        worker = ShapWorker(queue, partial(insert, "attributions", column_names=list(COLUMNS)), lambda: now_us,
                            batch_max=100, on_batch=lambda r, s, t: seen.append((r, s, t)))  # noqa: B023  # one pass
        assert worker.run_once() == 100 * 3
        assert [(r, s) for r, s, _ in seen] == [(300, 20)]
        shap = env.client.get("/reports/attribution", params={"minutes": 180, "top": 3, "horizon": 30}).json()
        assert [r["method"] for r in shap] == ["shap"] * 3
        stored = env.warehouse.query("SELECT features, contributions FROM surge.attributions FINAL "
                                     "WHERE horizon_min = 30")
        totals: dict[str, list[float]] = {}
        for r in stored:
            for name, c in zip(r["features"], r["contributions"], strict=True):
                totals.setdefault(name, []).append(abs(c))
        # Mean |SHAP| over every explained row (0 where the feature was not in a row's top 5).
        ranked = sorted(totals, key=lambda n: (-sum(totals[n]) / len(stored), n))[:3]
        assert [r["name"] for r in shap] == ranked
        assert shap[0]["signals"] == len(totals[ranked[0]])
        assert shap[0]["mean_abs_contribution"] == pytest.approx(sum(totals[ranked[0]]) / len(stored))
        explained = preds[-1].prediction_id  # the newest: inside the cap
        detail = env.client.get(f"/predictions/{explained}").json()
        assert [s["horizon_min"] for s in detail["shap"]] == [5, 10, 30]
        assert len(detail["shap"][2]["top_features"]) == TOP_K
        assert env.client.get(f"/predictions/{preds[0].prediction_id}").json()["shap"] == []  # over the cap
        proxy = env.client.get("/reports/attribution", params={"method": "proxy"}).json()
        assert proxy == []  # no LONG/SHORT signals stored: the proxy has nothing to rank
        # A signal made from an explained prediction is served with its SHAP top features at its horizon; one
        # whose prediction was not explained keeps the proxy it was published with.
        explained_sig, plain_sig = signal(1), signal(2)
        for sig, pred in ((explained_sig, preds[-1]), (plain_sig, preds[0])):
            sig.data_window_id, sig.model_version, sig.horizon_min = pred.data_window_id, pred.model_version, 30
        env.write([explained_sig, plain_sig])
        shap_30 = next(s for s in detail["shap"] if s["horizon_min"] == 30)["top_features"]
        got = env.client.get(f"/signals/{explained_sig.signal_id}").json()
        assert got["attribution"] == "shap" and got["signal"]["top_features"] == shap_30
        kept = env.client.get(f"/signals/{plain_sig.signal_id}").json()
        assert kept["attribution"] == "proxy" and [f["name"] for f in kept["signal"]["top_features"]] == ["ofi_1s"]
