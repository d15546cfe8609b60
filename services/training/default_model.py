"""Build the shipped default model, reproducibly, from the built-in market simulator.

    python -m services.training.default_model --out streams/infer/artifacts/default

Pipeline: ``MarketSimulator`` (one per symbol, seed + index) -> ingest core (``streams.ingest.core``: books,
20 ms TickBatches) -> features core (``compute_frame``: the exact streaming code the features stage runs) ->
triple-barrier labels -> one LightGBM binary model per horizon -> isotonic calibration fitted on purged
out-of-fold predictions -> one ONNX graph (``p_up_raw`` [N, H]) + ``model.json`` + ``card.json`` + ``card.md``.

Time compression. The simulator's markets move much faster than real ones would in minutes, and simulating
hours per horizon would be slow, so one horizon minute is ``seconds_per_minute`` simulated seconds (default 6:
horizons 5, 10, 30 min are 30, 60, 180 s). Barriers: the decision stage's cost model assumes a half-width B(h)
of 20, 28 and 50 bps for 5, 10, 30 min; under random-walk scaling a horizon compressed by a factor c keeps
its hit probabilities with barriers B(h) / sqrt(c), c = 60 / seconds_per_minute (about 6.3, 8.9, 15.8 bps).

Label of a sample at time t for horizon h: 1 if the mid reaches mid_t * (1 + b) before mid_t * (1 - b) within
(t, t + h]; 0 if the lower barrier comes first; if neither is reached, the sign of mid_{t+h} - mid_t (the
vertical barrier), and the sample is dropped if that is zero or the simulated path ends before t + h.

Samples: the first vector of each exchange-time second per symbol after a 60 s warm-up. Threshold rounding:
LightGBM splits on float64 thresholds but ONNX TreeEnsemble compares float32; each threshold t is replaced by
the largest float32 <= t before export, which leaves every decision on float32 inputs unchanged and makes
the ONNX graph exact up to float32 summation of leaf values (the parity number is in the card).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx
import pandas as pd
from onnx import TensorProto, helper
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from schemas import common_pb2, market_pb2
from streams.features.core import FeatureState, compute_frame
from streams.features.definitions import FEATURE_NAMES, FEATURE_VERSION, FEATURES
from streams.infer.model import MODEL_FORMAT, load_model, physical_cores
from streams.runtime.clock import ManualClock

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

US = 1_000_000
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z: a fixed epoch, so runs are byte-identical
INPUT_NAME = "features"
OUTPUT_NAME = "p_up_raw"
CAL_BINS = 20
ECE_BINS = 10
Z_95 = 1.959963984540054
# Not model inputs on the simulator: time of day (one simulated hour: it only says where in the run a sample is),
# windows >= 15 min (NaN for the first half of every run, so they too encode the position in the run) and the
# derivatives features (the simulator has no mark prices).
SIM_EXCLUDED_FEATURES = frozenset(
    f.name for f in FEATURES
    if f.name in ("tod_sin", "tod_cos") or f.category == "derivatives" or (f.window_s or 0.0) >= 900.0)
MODEL_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in SIM_EXCLUDED_FEATURES)
# The decision stage's triple-barrier half-widths (bps) per real-time horizon (streams/decision/cost.py).
REAL_BARRIER_BPS: dict[int, float] = {5: 20.0, 10: 28.0, 30: 50.0}


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 7
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
    events_per_s: float = 300.0  # per symbol; the simulator's volatility does not depend on the event rate
    duration_s: float = 3600.0  # simulated seconds per symbol
    microbatch_ms: int = 20
    drive_step_ms: int = 10  # how often the simulated ingest loop polls the simulator
    horizons_min: tuple[int, ...] = (5, 10, 30)
    seconds_per_minute: float = 6.0
    warmup_s: float = 60.0
    folds: int = 5
    n_estimators: int = 50
    num_leaves: int = 15
    learning_rate: float = 0.05
    min_child_samples: int = 100
    workers: int = 0  # 0: physical cores
    barrier_bps: dict[int, float] = field(default_factory=dict)  # empty: REAL_BARRIER_BPS / sqrt(compression)

    def horizon_us(self, h: int) -> int:
        return round(h * self.seconds_per_minute * US)

    def sim_barrier_bps(self, h: int) -> float:
        if h in self.barrier_bps:
            return self.barrier_bps[h]
        real = REAL_BARRIER_BPS.get(h, REAL_BARRIER_BPS[5] * math.sqrt(h / 5))
        return real / math.sqrt(60.0 / self.seconds_per_minute)


# --- data: simulator -> ingest core -> features core -----------------------------------------------------------


def simulate_batches(symbol: str, index: int, cfg: TrainConfig) -> Iterator[market_pb2.TickBatch]:
    """TickBatches of one symbol exactly as the ingest stage would build them from the simulator."""
    from streams.ingest import core as ingest
    from streams.ingest.simulator import MarketSimulator

    sim = MarketSimulator([symbol], cfg.events_per_s, cfg.seed + index)
    clock = ManualClock(START_US)
    state = ingest.IngestState(venue=common_pb2.SIMULATOR, microbatch_ms=cfg.microbatch_ms)
    sim.advance(START_US)  # anchors the simulator's grid
    pending = [ingest.apply_snapshot(state, s, snap, clock) for s, snap in sim.snapshots().items()]
    step = cfg.drive_step_ms * 1000
    end = START_US + round(cfg.duration_s * US)
    now = START_US
    while now < end:
        now += step
        clock.set_us(now)
        out = ingest.process([(s, raw, now) for s, raw in sim.advance(now)], state, clock)
        pending.append(out)
        for resync in out.resync_requests:
            pending.append(ingest.apply_snapshot(state, resync, sim.snapshot(resync), clock))
        for o in pending:
            for emit in o.emits:
                assert isinstance(emit.value, market_pb2.TickBatch)
                yield emit.value
        pending = []
    for emit in ingest.flush(state, clock, force=True).emits:
        assert isinstance(emit.value, market_pb2.TickBatch)
        yield emit.value


@dataclass
class SymbolData:
    symbol: str
    path_us: IntArray  # every vector with a mid: exchange time
    path_mid: FloatArray
    sample_us: IntArray  # training samples: one per second after warm-up
    sample_x: FloatArray
    sample_mid: FloatArray
    n_batches: int
    n_vectors: int
    n_rejected: int
    feature_versions: list[str]


def symbol_data(args: tuple[str, int, TrainConfig]) -> SymbolData:
    """Simulate one symbol and tabulate it with the streaming features core, in chunks to bound memory."""
    symbol, index, cfg = args
    state = FeatureState()
    path_us: list[IntArray] = []
    path_mid: list[FloatArray] = []
    samples: list[pd.DataFrame] = []
    chunk: list[market_pb2.TickBatch] = []
    n_batches = n_vectors = 0
    last_sec = -1
    first_us: int | None = None
    versions: set[str] = set()

    def consume(batches: list[market_pb2.TickBatch]) -> None:
        nonlocal n_vectors, last_sec, first_us
        frame = compute_frame(batches, state=state)
        n_vectors += len(frame)
        if frame.empty:
            return
        versions.update(frame["feature_version"].unique())
        ok = frame["mid_price"].notna().to_numpy()
        path_us.append(frame["exchange_us"].to_numpy()[ok])
        path_mid.append(frame["mid_price"].to_numpy()[ok])
        if first_us is None:
            first_us = int(frame["exchange_us"].iloc[0])
        sec = frame["exchange_us"].to_numpy() // US
        first_in_sec = np.r_[sec[0] != last_sec, sec[1:] != sec[:-1]]
        last_sec = int(sec[-1])
        warm = frame["exchange_us"].to_numpy() >= first_us + cfg.warmup_s * US
        samples.append(frame[first_in_sec & warm & ok])

    for tb in simulate_batches(symbol, index, cfg):
        chunk.append(tb)
        n_batches += 1
        if len(chunk) >= 5_000:
            consume(chunk)
            chunk = []
    consume(chunk)
    sample = pd.concat(samples, ignore_index=True)
    return SymbolData(
        symbol=symbol,
        path_us=np.concatenate(path_us),
        path_mid=np.concatenate(path_mid),
        sample_us=sample["exchange_us"].to_numpy(dtype=np.int64),
        sample_x=sample[list(MODEL_FEATURES)].to_numpy(dtype=np.float64),
        sample_mid=sample["mid_price"].to_numpy(dtype=np.float64),
        n_batches=n_batches,
        n_vectors=n_vectors,
        n_rejected=n_batches - n_vectors,
        feature_versions=sorted(versions),
    )


# --- labels ---------------------------------------------------------------------------------------------------


def barrier_labels(
    path_us: IntArray, path_mid: FloatArray, at_us: IntArray, horizon_us: int, barrier: float
) -> FloatArray:
    """1 upper first, 0 lower first, else the vertical barrier's sign; NaN if flat or censored."""
    out = np.full(len(at_us), np.nan)
    start = np.searchsorted(path_us, at_us, side="right")  # first path point strictly after t
    stop = np.searchsorted(path_us, at_us + horizon_us, side="right")  # first point after t + h
    origin = np.searchsorted(path_us, at_us, side="right") - 1  # the point at t
    for k in range(len(at_us)):
        s, e, o = int(start[k]), int(stop[k]), int(origin[k])
        if e >= len(path_us) or o < 0:
            continue  # the path does not reach t + h: unknown, not "no move"
        m0 = path_mid[o]
        seg = path_mid[s:e]
        up = np.flatnonzero(seg >= m0 * (1.0 + barrier))
        dn = np.flatnonzero(seg <= m0 * (1.0 - barrier))
        iu = int(up[0]) if len(up) else len(seg)
        idn = int(dn[0]) if len(dn) else len(seg)
        if iu < idn:
            out[k] = 1.0
        elif idn < iu:
            out[k] = 0.0
        else:
            end_mid = path_mid[e - 1] if e > s else m0
            out[k] = np.nan if end_mid == m0 else float(end_mid > m0)
    return out


# --- training ------------------------------------------------------------------------------------------------


def lgb_params(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "objective": "binary",
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_child_samples": cfg.min_child_samples,
        "feature_fraction": 0.9,
        "bagging_fraction": 1.0,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,  # bit-reproducible trees
        "seed": cfg.seed,
        "verbose": -1,
    }


def fit_booster(x: FloatArray, y: FloatArray, cfg: TrainConfig) -> lgb.Booster:
    data = lgb.Dataset(x, label=y, feature_name=list(MODEL_FEATURES), free_raw_data=True)
    return lgb.train(lgb_params(cfg), data, num_boost_round=cfg.n_estimators)


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


def purged_folds(t_us: IntArray, k: int, purge_us: int) -> list[tuple[IntArray, IntArray]]:
    """Contiguous time blocks; training rows whose label window could overlap the test block are purged."""
    edges = np.quantile(t_us, np.linspace(0.0, 1.0, k + 1))
    folds = []
    for i in range(k):
        lo, hi = edges[i], edges[i + 1]
        test = (t_us >= lo) & ((t_us < hi) if i < k - 1 else (t_us <= hi))
        train = ~test & ((t_us < lo - purge_us) | (t_us > hi + purge_us))
        folds.append((np.flatnonzero(train), np.flatnonzero(test)))
    return folds


def fit_isotonic(raw: FloatArray, y: FloatArray) -> IsotonicRegression:
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(raw, y)
    return iso


def ece(p: FloatArray, y: FloatArray, bins: int = ECE_BINS) -> float:
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(p) * abs(float(p[m].mean()) - float(y[m].mean()))
    return total


def horizon_metrics(p: FloatArray, raw: FloatArray, y: FloatArray, base_rate: FloatArray) -> dict[str, float]:
    eps = 1e-12
    pc = np.clip(p, eps, 1 - eps)
    return {
        "n": len(y),
        "base_rate": float(y.mean()),
        "brier": float(np.mean((p - y) ** 2)),
        "brier_raw": float(np.mean((raw - y) ** 2)),
        "brier_base_rate": float(np.mean((base_rate - y) ** 2)),
        "brier_skill": float(1.0 - np.mean((p - y) ** 2) / np.mean((base_rate - y) ** 2)),
        "ece": float(ece(p, y)),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "auc": float(roc_auc_score(y, p)) if 0 < y.mean() < 1 else float("nan"),
    }


# --- ONNX -----------------------------------------------------------------------------------------------------


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
        producer_name="surge.services.training.default_model",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- orchestration --------------------------------------------------------------------------------------------


def build(cfg: TrainConfig, out_dir: Path, log: Any = print) -> dict[str, Any]:
    workers = cfg.workers or physical_cores()
    log(f"simulating {len(cfg.symbols)} symbols x {cfg.duration_s:.0f} s with {workers} worker(s)")
    jobs = [(s, i, cfg) for i, s in enumerate(cfg.symbols)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            data = list(pool.map(symbol_data, jobs))
    else:
        data = [symbol_data(j) for j in jobs]
    versions = {v for d in data for v in d.feature_versions}
    if versions != {FEATURE_VERSION}:
        raise RuntimeError(f"feature versions {versions} differ from the code's {FEATURE_VERSION}")

    horizons = cfg.horizons_min
    xs, ys, ts, syms = [], [], [], []
    for d in data:
        labels = np.column_stack([
            barrier_labels(d.path_us, d.path_mid, d.sample_us, cfg.horizon_us(h), cfg.sim_barrier_bps(h) * 1e-4)
            for h in horizons
        ])
        xs.append(d.sample_x)
        ys.append(labels)
        ts.append(d.sample_us)
        syms += [d.symbol] * len(d.sample_us)
        log(f"{d.symbol}: {d.n_batches} batches, {len(d.sample_us)} samples")
    x = np.vstack(xs)
    y_all = np.vstack(ys)
    t_all = np.concatenate(ts)
    # The model sees what ONNX sees: float32 inputs.
    x32 = x.astype(np.float32).astype(np.float64)

    boosters: list[lgb.Booster] = []
    calibrations: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    importance = np.zeros(len(MODEL_FEATURES))
    for j, h in enumerate(horizons):
        keep = ~np.isnan(y_all[:, j])
        xh, yh, th = x32[keep], y_all[keep, j], t_all[keep]
        folds = [(tr, te) for tr, te in purged_folds(th, cfg.folds, cfg.horizon_us(h))
                 if len(tr) >= 2 * cfg.min_child_samples and len(te)]  # short runs: skip starved folds
        if len(folds) < 2:
            raise RuntimeError(f"horizon {h}: too little data for {cfg.folds} purged folds; simulate longer")
        oof = np.full(len(yh), np.nan)
        for train_idx, test_idx in folds:
            oof[test_idx] = fit_booster(xh[train_idx], yh[train_idx], cfg).predict(xh[test_idx])
        # Cross-fitted calibration for honest metrics: each fold is calibrated on the other folds' OOF scores.
        cal_oof = np.full(len(yh), np.nan)
        base = np.full(len(yh), np.nan)
        scored = ~np.isnan(oof)
        for train_idx, test_idx in folds:
            other = scored.copy()
            other[test_idx] = False
            cal_oof[test_idx] = fit_isotonic(oof[other], yh[other]).predict(oof[test_idx])
            base[test_idx] = yh[train_idx].mean()
        metrics[str(h)] = horizon_metrics(cal_oof[scored], oof[scored], yh[scored], base[scored])
        oof, y_oof = oof[scored], yh[scored]
        iso = fit_isotonic(oof, y_oof)
        counts, edges = np.histogram(oof, bins=CAL_BINS, range=(0.0, 1.0))
        calibrations[str(h)] = {
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
            "bin_edges": [float(v) for v in edges],
            "bin_counts": [int(c) for c in counts],
            "z": Z_95,
            "n_oof": len(y_oof),
        }
        booster = round_thresholds(fit_booster(xh, yh, cfg))
        boosters.append(booster)
        gain = booster.feature_importance(importance_type="gain")
        importance += gain / max(gain.sum(), 1e-12) / len(horizons)
        log(f"h={h}: n={len(yh)} base={yh.mean():.3f} brier={metrics[str(h)]['brier']:.4f} "
            f"vs {metrics[str(h)]['brier_base_rate']:.4f} ece={metrics[str(h)]['ece']:.4f} "
            f"auc={metrics[str(h)]['auc']:.3f}")

    proto = to_onnx(boosters, len(MODEL_FEATURES))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_bytes = proto.SerializeToString()
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    model_version = f"sim-lgbm-{onnx_sha[:10]}"

    mean = np.nanmean(x32, axis=0)
    std = np.nanstd(x32, axis=0)
    training = {
        "source": "streams.ingest.simulator.MarketSimulator -> streams.ingest.core -> streams.features.core",
        "command": "python -m services.training.default_model --out streams/infer/artifacts/default",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "simulator_seeds": {s: cfg.seed + i for i, s in enumerate(cfg.symbols)},
        "time_mapping": {
            "seconds_per_horizon_minute": cfg.seconds_per_minute,
            "horizon_sim_seconds": {str(h): cfg.horizon_us(h) / US for h in horizons},
            "barrier_bps": {str(h): cfg.sim_barrier_bps(h) for h in horizons},
            "real_barrier_bps": {str(h): REAL_BARRIER_BPS.get(h) for h in horizons},
        },
        "label": "1: mid hits +b before -b within the horizon; 0: -b first; neither: sign at the horizon "
                 "(dropped if flat or censored)",
        "samples": {
            "batches": sum(d.n_batches for d in data),
            "vectors": sum(d.n_vectors for d in data),
            "rejected_batches": sum(d.n_rejected for d in data),
            "rows": len(x),
            "per_symbol": {d.symbol: len(d.sample_us) for d in data},
            "labelled_per_horizon": {str(h): int((~np.isnan(y_all[:, j])).sum()) for j, h in enumerate(horizons)},
        },
        "lightgbm": {**lgb_params(cfg), "num_boost_round": cfg.n_estimators, "version": lgb.__version__},
        "validation": f"{cfg.folds}-fold contiguous time blocks, purged by the horizon; calibration cross-fitted",
        "metrics": metrics,
    }
    meta: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "model_version": model_version,
        "feature_version": FEATURE_VERSION,
        "features": list(MODEL_FEATURES),
        "horizons_min": list(horizons),
        "onnx": {"file": "model.onnx", "input": INPUT_NAME, "output": OUTPUT_NAME, "sha256": onnx_sha,
                 "layout": "p_up_raw[N, H]: uncalibrated P(upper barrier first), columns in horizons_min order"},
        "calibration": calibrations,
        "attribution": {
            "method": "(x - mean) / std * normalised gain importance averaged over horizons",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "importance": [float(v) for v in importance],
        },
        "training": training,
    }
    (out_dir / "model.json").write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n", encoding="utf-8")

    # Parity: the exported graph against the native (threshold-rounded) boosters, NaNs included.
    loaded = load_model(out_dir, intra_op_threads=1)
    probe = x32.copy()
    rng = np.random.default_rng(cfg.seed)
    probe[rng.random(probe.shape) < 0.05] = np.nan
    onnx_raw = loaded.predict_raw(probe.astype(np.float32))
    native = np.column_stack([b.predict(probe) for b in boosters])
    parity = float(np.max(np.abs(onnx_raw - native)))
    log(f"ONNX parity: max |onnx - native| = {parity:.3g} over {probe.shape[0]} rows x {len(horizons)} horizons")
    if parity > 1e-4:
        raise RuntimeError(f"ONNX export differs from LightGBM by {parity}")

    size = sum((out_dir / f).stat().st_size for f in ("model.onnx", "model.json"))
    card = {
        "model_version": model_version,
        "feature_version": FEATURE_VERSION,
        "horizons_min": list(horizons),
        "intended_use": "default model of the surge pipeline on simulated markets; retrain on venue data "
                        "before trusting it with real money",
        "training": training,
        "onnx_parity_max_abs_diff": parity,
        "onnx_parity_rows": int(probe.shape[0]),
        "artifact_bytes": size,
        "top_importance": sorted(zip(MODEL_FEATURES, (float(v) for v in importance), strict=True),
                                 key=lambda kv: -kv[1])[:8],
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (out_dir / "card.md").write_text(card_markdown(card), encoding="utf-8")
    log(f"wrote {out_dir} ({model_version}, {size} bytes)")
    return card


def card_markdown(card: dict[str, Any]) -> str:
    tr = card["training"]
    tm = tr["time_mapping"]
    lines = [
        f"# Model card: {card['model_version']}",
        "",
        f"* Feature version: `{card['feature_version']}`; horizons (min): {card['horizons_min']}",
        f"* Intended use: {card['intended_use']}.",
        f"* Data: {tr['source']}; simulator seeds {tr['simulator_seeds']}, "
        f"{tr['config']['duration_s']:.0f} simulated s per symbol at {tr['config']['events_per_s']:.0f} events/s.",
        f"* Samples: {tr['samples']['rows']} rows (first vector per second after warm-up) from "
        f"{tr['samples']['batches']} TickBatches; labelled per horizon {tr['samples']['labelled_per_horizon']}.",
        f"* Time compression: 1 horizon minute = {tm['seconds_per_horizon_minute']} simulated s; "
        f"barriers (bps) {tm['barrier_bps']} = real {tm['real_barrier_bps']} / sqrt(compression).",
        f"* Label: {tr['label']}.",
        f"* Model: one LightGBM per horizon ({tr['lightgbm']['num_boost_round']} trees, "
        f"{tr['lightgbm']['num_leaves']} leaves), isotonic calibration on out-of-fold scores.",
        f"* Validation: {tr['validation']}.",
        f"* ONNX parity: max |onnx - native| = {card['onnx_parity_max_abs_diff']:.3g} "
        f"over {card['onnx_parity_rows']} rows (5% of inputs set to NaN); artifact {card['artifact_bytes']} bytes.",
        "",
        "| horizon (min) | n | base rate | Brier | Brier (base rate) | skill | ECE | AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h, m in tr["metrics"].items():
        lines.append(f"| {h} | {m['n']} | {m['base_rate']:.3f} | {m['brier']:.4f} | {m['brier_base_rate']:.4f} | "
                     f"{m['brier_skill']:.3f} | {m['ece']:.4f} | {m['auc']:.3f} |")
    lines += ["", "Top features by gain: " + ", ".join(f"{n} ({v:.2f})" for n, v in card["top_importance"]), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("streams/infer/artifacts/default"))
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--duration-s", type=float, default=TrainConfig.duration_s)
    parser.add_argument("--events-per-s", type=float, default=TrainConfig.events_per_s)
    parser.add_argument("--symbols", default=",".join(TrainConfig.symbols))
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        seed=args.seed,
        duration_s=args.duration_s,
        events_per_s=args.events_per_s,
        symbols=tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
        workers=args.workers,
    )
    build(cfg, args.out, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
