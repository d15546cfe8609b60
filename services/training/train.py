"""The training pipeline, one for every dataset: labelled bars -> purged k-fold LightGBM (focal loss beside plain
log loss) -> isotonic calibration on out-of-fold scores -> one ONNX graph in the layout the infer stage serves
-> parity check -> model card (JSON, markdown, PNG). ``train_on`` runs it on a ``TrainingSet``; the datasets are

* ``klines_set`` (``surge train``, ``train``): 1-minute bars -> features (the features stage's batch driver) ->
  triple-barrier labels, with a held-out evaluation period;
* ``services.training.default_model.simulator_set``: the built-in simulator through the ingest and features
  cores, one-second bars, the shipped default model.

Protocol, fixed before looking at any evaluation data (nothing below is tuned on the evaluation period):

* Samples: every bar with a complete label. Features are computed over training and evaluation files in one
  causal pass (an evaluation bar sees the history a live model would have); a training sample is purged when
  its label span reaches the first evaluation bar.
* Cross-validation: ``purged_kfold`` on label spans in bars, embargo ``embargo_frac`` of the training span.
* Weights: AFML average uniqueness of the label span (overlapping labels share information), then the classes
  balanced on those weights (``balanced_weights(y, base=uniqueness)``).
* Calibration: isotonic on the out-of-fold raw scores. The out-of-fold metrics in the card are cross-fitted
  (each fold calibrated on the other folds only); the shipped table is fitted on all of them.
* ONNX: thresholds rounded down to float32 (``export.round_thresholds``) so the graph takes the same branches
  as LightGBM on float32 inputs; training inputs are float32-rounded too. Parity is measured.
* Evaluation metrics are computed on what the infer stage would serve: the ONNX graph plus the calibration
  table, loaded with ``streams.infer.model.load_model``; every calibrated number in the card comes from
  ``streams.infer.model.Calibration.apply``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from services.training import export
from services.training.card import card_markdown, plot_reliability
from services.training.cv import purged_kfold
from services.training.dataset import (
    DataError,
    FrameFn,
    Labelled,
    LabelSpec,
    check_frame,
    feature_columns,
    kline_time_range,
    klines_frame,
    label_frame,
    sha256_of,
)
from services.training.focal import as_binary_booster, focal_objective
from services.training.labels import balanced_weights
from services.training.metrics import probability_metrics
from streams.infer.model import MODEL_FORMAT, Calibration, load_model

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ObjectiveName = Literal["focal", "logloss"]
CalibrationName = Literal["isotonic", "platt", "beta", "temperature"]
OBJECTIVES: tuple[ObjectiveName, ...] = ("focal", "logloss")


# The shipped klines model's recipe (its card says why): `surge retrain` and walk-forward jobs train with it.
KLINES_RECIPE: Final[dict[str, Any]] = {
    "objective": "logloss", "class_weight": "none", "monotone_increasing": ("parkinson_5m", "parkinson_1h", "rv_1h"),
    "calibration": "temperature", "calibration_recent_days": 15.0, "lambda_l2": 270.0}


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train_on`` does with a dataset. ``theta_up`` / ``theta_dn`` are the barriers of the kline
    dataset (``klines_set``); the simulator's dataset derives its own from the decision stage's cost model."""

    horizons: tuple[int, ...] = (5, 10, 30)
    theta_up: float = 0.006
    theta_dn: float = 0.004
    gamma: float = 1.5
    objective: ObjectiveName = "focal"  # shipped; the other is trained and reported beside it
    folds: int = 5
    embargo_frac: float = 0.01
    class_weight: Literal["balanced", "none"] = "balanced"
    uniqueness: bool = True
    num_boost_round: int = 300
    learning_rate: float = 0.03
    num_leaves: int = 15
    min_child_samples: int = 500
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 10.0
    seed: int = 7
    threads: int = 1  # OpenMP threads spin-wait: on a shared box more threads can be 20x slower, and 1 is bit-exact
    max_parity_diff: float = 1e-4
    features: tuple[str, ...] = field(default_factory=tuple)  # empty: every numeric non-bar column
    # Features the forecast may only rise with (LightGBM monotone constraints), e.g. volatility: a fixed-width
    # barrier is reached more often the more the price moves, and the constraint keeps that true below the
    # lowest volatility seen in training.
    monotone_increasing: tuple[str, ...] = field(default_factory=tuple)
    calibration: CalibrationName = "isotonic"
    # > 0: the shipped calibration is fitted on the out-of-fold scores of the last this many days of training
    # only (recent window: the regime the model goes live in), not on every out-of-fold score.
    calibration_recent_days: float = 0.0

    def __post_init__(self) -> None:
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive minutes, got {self.horizons}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}")
        if self.gamma < 0:
            raise ValueError("gamma must be >= 0")
        if self.calibration not in export.CALIBRATIONS:
            raise ValueError(f"calibration must be one of {export.CALIBRATIONS}")
        if self.calibration_recent_days < 0:
            raise ValueError("calibration_recent_days must be >= 0")


def lgb_params(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1 if cfg.bagging_fraction < 1 else 0,
        "lambda_l2": cfg.lambda_l2,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": cfg.threads,
        "seed": cfg.seed,
        "verbose": -1,
    }


def fit_booster(x: FloatArray, y: FloatArray, w: FloatArray, names: Sequence[str], cfg: TrainConfig,
                objective: ObjectiveName) -> lgb.Booster:
    """A booster whose ``predict`` is P(up): focal boosters are rewritten as plain binary ones."""
    params = lgb_params(cfg)
    if cfg.monotone_increasing:
        params["monotone_constraints"] = [1 if n in cfg.monotone_increasing else 0 for n in names]
        params["monotone_constraints_method"] = "advanced"
    if objective == "logloss":
        data = lgb.Dataset(x, label=y, weight=w, feature_name=list(names), free_raw_data=True)
        return lgb.train({**params, "objective": "binary"}, data, num_boost_round=cfg.num_boost_round)
    rate = float(np.clip(np.average(y, weights=w), 1e-6, 1 - 1e-6))
    init = math.log(rate / (1 - rate))  # start from the (weighted) base rate, as LightGBM's binary does
    data = lgb.Dataset(x, label=y, weight=w, init_score=np.full(len(y), init), feature_name=list(names),
                       free_raw_data=True)
    booster = lgb.train({**params, "objective": focal_objective(cfg.gamma)}, data,
                        num_boost_round=cfg.num_boost_round)
    return as_binary_booster(booster, init)


def sample_weights(lab: Labelled, h: int, rows: IntArray, cfg: TrainConfig) -> FloatArray:
    base = lab.uniqueness[h][rows] if cfg.uniqueness else np.ones(len(rows))
    if cfg.class_weight == "none":
        return np.asarray(base / max(base.mean(), 1e-12), dtype=np.float64)
    w = balanced_weights(lab.y[h][rows].astype(np.int64), base=base)
    return np.asarray(w / max(w.mean(), 1e-12), dtype=np.float64)


class Steps:
    """A rich progress bar on stderr (or nothing, for tests); ``listener`` also hears every step as
    (done, total, description) and every log line as (-1, -1, line): a job worker's progress reports."""

    def __init__(self, quiet: bool, listener: Callable[[int, int, str], None] | None = None) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), disable=quiet, transient=False)
        self.console = Console(stderr=True, quiet=quiet)
        self.listener = listener
        self._done, self._total, self._description = 0, 0, ""

    def log(self, msg: str) -> None:
        self.console.print(msg)
        if self.listener is not None:
            self.listener(-1, -1, msg)

    def begin(self, total: int, description: str) -> TaskID:
        self._done, self._total, self._description = 0, total, description
        self._tell()
        return self.progress.add_task(description, total=total)

    def describe(self, task: TaskID, description: str) -> None:
        self._description = description
        self.progress.update(task, description=description)
        self._tell()

    def advance(self, task: TaskID) -> None:
        self._done += 1
        self.progress.advance(task)
        self._tell()

    def _tell(self) -> None:
        if self.listener is not None:
            self.listener(self._done, self._total, self._description)


@dataclass
class HorizonResult:
    boosters: dict[str, lgb.Booster]
    calibrations: dict[str, Calibration]
    oof_raw: dict[str, FloatArray]
    oof_metrics: dict[str, dict[str, Any]]
    n_train: int
    base_rate: float
    folds_used: int


def cross_fitted(oof: FloatArray, y: FloatArray, folds: list[tuple[IntArray, IntArray]], h: int,
                 method: str = "isotonic") -> FloatArray:
    """Each test fold calibrated by ``method`` fitted on the other folds' out-of-fold scores only."""
    out = np.full(len(y), np.nan)
    for _, test_idx in folds:
        other = np.ones(len(y), dtype=bool)
        other[test_idx] = False
        out[test_idx] = export.fit_calibration(h, oof[other], y[other], method).apply(oof[test_idx])
    return out


def recent_mask(ts: IntArray, days: float) -> npt.NDArray[np.bool_]:
    """Rows within the last ``days`` of ``ts`` (ms); every row when days is 0."""
    if days <= 0 or not len(ts):
        return np.ones(len(ts), dtype=bool)
    return np.asarray(ts >= int(ts.max()) - int(days * 86_400_000), dtype=np.bool_)


def train_horizon(lab: Labelled, h: int, rows: IntArray, x: FloatArray, names: Sequence[str], cfg: TrainConfig,
                  advance: Callable[[], None]) -> HorizonResult:
    y = lab.y[h][rows]
    w = sample_weights(lab, h, rows, cfg)
    start = lab.ts[rows] // lab.bar_ms
    end = lab.end_ts[h][rows] // lab.bar_ms
    span = int(start.max() - start.min()) if len(start) else 0
    folds = list(purged_kfold(start, end, n_splits=cfg.folds, embargo=round(cfg.embargo_frac * span)))
    folds = [(tr, te) for tr, te in folds if len(tr) >= 2 * cfg.min_child_samples and 0 < y[tr].mean() < 1]
    if len(folds) < 2:
        raise DataError(f"horizon {h}: too few samples or positives for {cfg.folds} purged folds")
    xs = x[rows]
    boosters: dict[str, lgb.Booster] = {}
    calibrations: dict[str, Calibration] = {}
    oof_raw: dict[str, FloatArray] = {}
    oof_metrics: dict[str, dict[str, Any]] = {}
    scored = np.zeros(len(rows), dtype=bool)
    for _, te in folds:
        scored[te] = True
    base_rate = float(y.mean())
    for obj in OBJECTIVES:
        oof = np.full(len(rows), np.nan)
        for tr, te in folds:
            oof[te] = fit_booster(xs[tr], y[tr], w[tr], names, cfg, obj).predict(xs[te])
            advance()
        cal = cross_fitted(oof[scored], y[scored], [(tr, _reindex(te, scored)) for tr, te in folds], h,
                           cfg.calibration)
        oof_metrics[obj] = probability_metrics(cal, y[scored], base_rate_forecast=base_rate, raw=oof[scored])
        oof_raw[obj] = oof
        recent = scored & recent_mask(lab.ts[rows], cfg.calibration_recent_days)
        calibrations[obj] = export.fit_calibration(h, oof[recent], y[recent], cfg.calibration)
        boosters[obj] = export.round_thresholds(fit_booster(xs, y, w, names, cfg, obj))
        advance()
    return HorizonResult(boosters, calibrations, oof_raw, oof_metrics, len(rows), base_rate, len(folds))


def _reindex(idx: IntArray, mask: npt.NDArray[np.bool_]) -> IntArray:
    """Positions of ``idx`` (all inside ``mask``) within the masked array."""
    pos = np.cumsum(mask) - 1
    return np.asarray(pos[idx], dtype=np.int64)


def file_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path), "file": path.name, "bytes": path.stat().st_size,
                            "sha256": sha256_of(path)}
    try:
        first, last, rows = kline_time_range(path)
        info.update(first_open_ms=first, last_open_ms=last, rows=rows,
                    first_open_utc=_utc(first), last_open_utc=_utc(last))
    except (DataError, ValueError, OSError):
        pass
    return info


def _utc(ms: int) -> str:
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"))


def split_rows(lab: Labelled, eval_range: tuple[int, int] | None, train_ranges: list[tuple[int, int]],
               h: int) -> tuple[IntArray, IntArray]:
    """(train rows, evaluation rows) for horizon h; train labels must resolve before the evaluation starts."""
    ts = lab.ts
    valid = lab.valid(h)
    in_train = np.zeros(len(ts), dtype=bool)
    for lo, hi in train_ranges:
        in_train |= (ts >= lo) & (ts <= hi)
    train = in_train & valid
    evaluation = np.zeros(len(ts), dtype=bool)
    if eval_range is not None:
        lo, hi = eval_range
        evaluation = (ts >= lo) & (ts <= hi) & valid
        train &= ~evaluation & (lab.end_ts[h] < lo)  # purge: no training label may look into the evaluation
    return np.flatnonzero(train).astype(np.int64), np.flatnonzero(evaluation).astype(np.int64)


@dataclass(frozen=True)
class TrainingSet:
    """What ``train_on`` needs of a dataset: labelled bars and the rows to fit and evaluate on, with what the card
    says about where they come from and what their labels mean."""

    lab: Labelled
    feature_version: str
    rows: dict[int, tuple[IntArray, IntArray]]  # horizon -> (training rows, evaluation rows) of lab.frame
    labels: dict[str, Any]  # what a label is (the card's "labels")
    serve_labels: bool  # model.json states the labels: every prediction carries their barriers to the decision stage
    version_prefix: str  # model_version = "<prefix>-lgbm-<digest of the served spec>"
    source: str
    command: str
    intended_use: str
    limitations: Callable[[dict[str, Any]], list[str]]  # the dataset's caveats, given the card's "training"
    train_files: list[dict[str, Any]] = field(default_factory=list)
    eval_files: list[dict[str, Any]] = field(default_factory=list)
    eval_window: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # more of the card's "training", dataset-specific


def klines_set(data: Sequence[Path], cfg: TrainConfig, *, eval_data: Sequence[Path] = (),
               frame_fn: FrameFn | None = None, command: str = "", steps: Steps | None = None) -> TrainingSet:
    """Kline files through the features stage's batch driver; ``eval_data`` is the held-out evaluation period."""
    data = [Path(p) for p in data]
    eval_data = [Path(p) for p in eval_data]
    if set(data) & set(eval_data):
        raise DataError("a file cannot be both training and evaluation data")
    train_info = [file_info(p) for p in data]
    eval_info = [file_info(p) for p in eval_data]
    (steps or Steps(quiet=True)).log(
        f"computing features of {len(data) + len(eval_data)} file(s) with the features batch driver")
    frame = (frame_fn or klines_frame)(sorted(set(data) | set(eval_data), key=str))
    feature_version = check_frame(frame)
    lab = label_frame(frame, LabelSpec.minute_bars(cfg.horizons, cfg.theta_up, cfg.theta_dn))
    eval_range = _span(eval_info) if eval_data else None
    train_ranges = _ranges(train_info, lab)
    ts = lab.ts
    symbols = sorted({str(v) for v in lab.frame["symbol"]})
    return TrainingSet(
        lab=lab,
        feature_version=feature_version,
        rows={h: split_rows(lab, eval_range, train_ranges, h) for h in cfg.horizons},
        labels={"kind": "triple_barrier_1m_bars", "theta_up": cfg.theta_up, "theta_dn": cfg.theta_dn,
                "entry": "close of the bar", "both_in_one_bar": "DOWN", "timeout": "not up"},
        serve_labels=True,
        version_prefix="klines",
        source="streams.features.batch.compute_klines_frame (the features stage's batch driver)",
        command=command,
        intended_use=f"research and paper trading of {', '.join(symbols)} 1-minute triple-barrier probabilities; "
                     "not cleared for trading real money (see limitations)",
        limitations=lambda training: kline_limitations(cfg, training),
        train_files=train_info,
        eval_files=eval_info,
        eval_window=_window(ts[(ts >= eval_range[0]) & (ts <= eval_range[1])]) if eval_range else {},
    )


def train(
    data: Sequence[Path],
    out_dir: Path,
    cfg: TrainConfig,
    *,
    eval_data: Sequence[Path] = (),
    frame_fn: FrameFn | None = None,
    quiet: bool = False,
    command: str = "",
    variants_horizon: int | None = None,
    pool_data: Sequence[Path] = (),
    listener: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """``surge train``: the pipeline on kline files; writes the artifact folder and returns the card. With
    ``variants_horizon`` every variant of ``services.training.variants`` is also evaluated on that horizon and
    reported in the card; ``pool_data`` (other symbols' kline files) joins only the pooled variant. ``listener``
    hears the progress (``Steps``)."""
    steps = Steps(quiet, listener)
    ds = klines_set(data, cfg, eval_data=eval_data, frame_fn=frame_fn, command=command, steps=steps)
    pool: PoolSet | None = None
    if pool_data and variants_horizon is not None:
        pool = pool_set(pool_data, cfg, variants_horizon, ds.eval_window, frame_fn)
    return train_on(ds, out_dir, cfg, steps, variants_horizon=variants_horizon, pool=pool)


PoolSet = tuple[Labelled, list[dict[str, Any]]]


def pool_set(paths: Sequence[Path], cfg: TrainConfig, h: int, eval_window: dict[str, Any],
             frame_fn: FrameFn | None) -> PoolSet:
    """Other symbols' bars for the pooled variant: labelled like the training set; bars whose label reaches the
    evaluation period's start or later are dropped (no later market state may inform the evaluation)."""
    infos = [file_info(Path(p)) for p in paths]
    frame = (frame_fn or klines_frame)([Path(p) for p in paths])
    check_frame(frame)
    lab = label_frame(frame, LabelSpec.minute_bars((h,), cfg.theta_up, cfg.theta_dn))
    return lab, infos


def train_on(ds: TrainingSet, out_dir: Path, cfg: TrainConfig, steps: Steps | None = None, *,
             variants_horizon: int | None = None, pool: PoolSet | None = None) -> dict[str, Any]:
    """Train, export, check parity and write the artifact folder; returns the card."""
    steps = steps or Steps(quiet=True)
    lab = ds.lab
    frame = lab.frame
    if set(lab.horizons) != set(cfg.horizons) or set(ds.rows) != set(cfg.horizons):
        raise DataError(f"dataset labels horizons {lab.horizons}, the config trains {cfg.horizons}")
    feature_version = ds.feature_version
    names = feature_columns(frame, cfg.features or None)
    if not names:
        raise DataError("no feature columns in the frame")
    x_full = frame[names].to_numpy(dtype=np.float64)
    # The model must see what ONNX sees: float32 inputs.
    x = x_full.astype(np.float32).astype(np.float64)
    all_nan = [n for j, n in enumerate(names) if np.isnan(x[:, j]).all()]
    if all_nan:
        keep = [j for j, n in enumerate(names) if n not in all_nan]
        names = [names[j] for j in keep]
        x = x[:, keep]
        steps.log(f"dropped {len(all_nan)} feature(s) that are NaN on every bar: {', '.join(all_nan)}")

    rows_of = ds.rows
    total = sum(len(OBJECTIVES) * (cfg.folds + 1) for _ in cfg.horizons)
    results: dict[int, HorizonResult] = {}
    with steps.progress:
        task = steps.begin(total, "purged CV + final fits")
        for h in cfg.horizons:
            steps.describe(task, f"h={h} min: purged CV + final fits")
            results[h] = train_horizon(lab, h, rows_of[h][0], x, names, cfg, lambda: steps.advance(task))
        steps.progress.update(task, completed=total)

    shipped = [results[h].boosters[cfg.objective] for h in cfg.horizons]
    proto = export.to_onnx(shipped, len(names))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_bytes = proto.SerializeToString()
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    # The same boosters as gzipped LightGBM text (mtime 0: reproducible bytes): the infer stage's SHAP worker
    # runs pred_contrib on them (streams/infer/shap.py).
    booster_files = {str(h): f"booster_{h}.txt.gz" for h in cfg.horizons}
    for h, booster in zip(cfg.horizons, shipped, strict=True):
        (out_dir / booster_files[str(h)]).write_bytes(gzip.compress(booster.model_to_string().encode(), 9, mtime=0))

    train_rows_any = np.unique(np.concatenate([rows_of[h][0] for h in cfg.horizons]))
    importance = np.zeros(len(names))
    for h in cfg.horizons:
        gain = results[h].boosters[cfg.objective].feature_importance(importance_type="gain")
        importance += gain / max(float(gain.sum()), 1e-12) / len(cfg.horizons)
    xt = x[train_rows_any]
    mean = np.nan_to_num(np.nanmean(xt, axis=0)) if len(xt) else np.zeros(len(names))
    std = np.nan_to_num(np.nanstd(xt, axis=0), nan=1.0) if len(xt) else np.ones(len(names))
    calibration = {str(h): export.calibration_json(results[h].calibrations[cfg.objective]) for h in cfg.horizons}
    # The version names everything that changes a served number: graph, input contract, calibration, labels.
    served_spec = {"onnx_sha256": onnx_sha, "feature_version": feature_version, "features": list(names),
                   "horizons": list(cfg.horizons), "calibration": calibration, "labels": ds.labels}
    digest = hashlib.sha256(json.dumps(served_spec, sort_keys=True).encode()).hexdigest()
    model_version = f"{ds.version_prefix}-lgbm-{digest[:10]}"
    ts = lab.ts
    training: dict[str, Any] = {
        "command": ds.command,
        "source": ds.source,
        "train_files": ds.train_files,
        "eval_files": ds.eval_files,
        "train_window": _window(ts[train_rows_any]) if len(train_rows_any) else {},
        "eval_window": ds.eval_window,
        "samples": {str(h): {"train": len(rows_of[h][0]), "eval": len(rows_of[h][1]),
                             "folds_used": results[h].folds_used} for h in cfg.horizons},
        "symbols": sorted({str(v) for v in frame["symbol"]}),
        "feature_version": feature_version,
        "features_dropped_all_nan": all_nan,
        "lightgbm": {**{k: v for k, v in lgb_params(cfg).items() if k != "num_threads"},
                     "num_boost_round": cfg.num_boost_round, "version": lgb.__version__},
        **ds.provenance,
    }
    meta: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "model_version": model_version,
        "feature_version": feature_version,
        "features": list(names),
        "horizons_min": list(cfg.horizons),
        "onnx": {"file": "model.onnx", "input": export.INPUT_NAME, "output": export.OUTPUT_NAME,
                 "sha256": onnx_sha,
                 "layout": "p_up_raw[N, H]: uncalibrated P(upper barrier first), columns in horizons_min order"},
        **({"labels": ds.labels} if ds.serve_labels else {}),
        "calibration": calibration,
        "attribution": {
            "method": "(x - mean) / std * normalised gain importance averaged over horizons",
            "mean": [float(v) for v in mean],
            "std": [float(v) if v > 0 else 1.0 for v in std],
            "importance": [float(v) for v in importance],
            "shap": {"method": "TreeSHAP (LightGBM pred_contrib) on each horizon's booster, raw-score units",
                     "boosters": booster_files},
        },
        "training": training,
    }
    (out_dir / "model.json").write_text(json.dumps(strict_json(meta), indent=1, allow_nan=False) + "\n",
                                        encoding="utf-8")

    # Parity and evaluation on exactly what the infer stage loads.
    served = load_model(out_dir, intra_op_threads=cfg.threads)
    probe_rows = np.unique(np.concatenate([train_rows_any, *(rows_of[h][1] for h in cfg.horizons)]))
    parity = export.parity(served, shipped, x[probe_rows], cfg.seed)
    steps.log(f"ONNX parity: max |onnx - native| = {parity['max_abs_diff_raw']:.3g} raw, "
              f"{parity['max_abs_diff_calibrated']:.3g} calibrated over {parity['rows']} rows x "
              f"{len(cfg.horizons)} horizons")
    if parity["max_abs_diff_raw"] > cfg.max_parity_diff:
        raise RuntimeError(f"ONNX export differs from LightGBM by {parity['max_abs_diff_raw']} > "
                           f"{cfg.max_parity_diff}")

    oof_metrics = {str(h): results[h].oof_metrics[cfg.objective] for h in cfg.horizons}
    eval_metrics: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    for j, h in enumerate(cfg.horizons):
        res = results[h]
        comparison[str(h)] = {obj: {"oof": _headline(res.oof_metrics[obj])} for obj in OBJECTIVES}
        ev = rows_of[h][1]
        if not len(ev):
            continue
        y_ev = lab.y[h][ev]
        pred = served.predict(x[ev])
        spans = (ts[ev] // lab.bar_ms, lab.end_ts[h][ev] // lab.bar_ms, lab.symbol_codes[ev])
        eval_metrics[str(h)] = probability_metrics(pred.p_up[:, j], y_ev, base_rate_forecast=res.base_rate,
                                                   raw=pred.raw[:, j], spans=spans)
        for obj in OBJECTIVES:
            raw = np.asarray(res.boosters[obj].predict(x[ev]), dtype=np.float64)
            m = probability_metrics(res.calibrations[obj].apply(raw), y_ev, base_rate_forecast=res.base_rate,
                                    raw=raw)
            comparison[str(h)][obj]["eval"] = _headline(m)

    variants: list[dict[str, Any]] = []
    pool_files: list[dict[str, Any]] = []
    if variants_horizon is not None:
        from services.training.variants import run_variants

        h = variants_horizon
        if h not in cfg.horizons:
            raise DataError(f"variants horizon {h} is not one of the trained horizons {cfg.horizons}")
        pool_xyw = None
        if pool is not None:
            plab, pool_files = pool
            first_eval = int(ds.eval_window.get("first_bar_ms", np.iinfo(np.int64).max))
            pool_keep = np.isfinite(plab.y[h]) & (plab.end_ts[h] < first_eval)
            px = plab.frame[names].to_numpy(dtype=np.float64).astype(np.float32).astype(np.float64)[pool_keep]
            pool_xyw = (px, plab.y[h][pool_keep], plab.uniqueness[h][pool_keep])
            pool_files = [{**f, "pooled_bars": int(pool_keep.sum())} for f in pool_files]
        variants = run_variants(lab, h, rows_of[h][0], rows_of[h][1], x, list(names), cfg, pool=pool_xyw,
                                log=steps.log)
        shipped_window = "recent OOF" if cfg.calibration_recent_days > 0 else "all OOF"
        for v in variants:
            v["shipped_config"] = (v["objective"] == cfg.objective and v["class_weight"] == cfg.class_weight
                                   and tuple(v["monotone_increasing"]) == tuple(cfg.monotone_increasing)
                                   and not v["pooled"] and v["calibration"] == cfg.calibration
                                   and v["lambda_l2"] == cfg.lambda_l2
                                   and v["calibration_window"] == shipped_window)

    size = sum((out_dir / f).stat().st_size for f in ("model.onnx", "model.json"))
    importance_sorted = sorted(zip(names, (float(v) for v in importance), strict=True), key=lambda kv: -kv[1])
    card: dict[str, Any] = {
        "model_version": model_version,
        "feature_version": feature_version,
        "horizons_min": list(cfg.horizons),
        "objective": cfg.objective,
        "intended_use": ds.intended_use,
        "labels": ds.labels,
        "config": {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                   "features_used": list(names), "features_dropped_all_nan": all_nan},
        "metrics": {"eval": eval_metrics, "oof": oof_metrics},
        "objective_comparison": comparison,
        "onnx_parity": parity,
        "feature_importance": importance_sorted,
        "training": training,
        "artifact_bytes": size,
        "environment": {"python": platform.python_version(), "lightgbm": lgb.__version__,
                        "numpy": np.__version__, "platform": platform.platform()},
        "reliability_png": "reliability.png",
        "limitations": [*ds.limitations(training), *metric_limitations(eval_metrics)],
    }
    if variants_horizon is not None:
        card["variants"] = {"horizon": variants_horizon, "recent_days": cfg.calibration_recent_days or 15.0,
                            "pool_files": pool_files, "rows": variants}
    (out_dir / "card.json").write_text(json.dumps(strict_json(card), indent=1, allow_nan=False) + "\n",
                                       encoding="utf-8")
    (out_dir / "card.md").write_text(card_markdown(card), encoding="utf-8")
    plot_reliability(card, out_dir / "reliability.png")
    steps.log(f"wrote {out_dir} ({model_version}, {size} bytes)")
    return card


def strict_json(o: Any) -> Any:
    """NaN/inf become null: card.json must be strict JSON for every reader (orjson in the registry, browsers)."""
    if isinstance(o, dict):
        return {str(k): strict_json(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [strict_json(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


HEADLINE = ("n", "base_rate", "brier", "brier_base_rate", "brier_skill", "ece", "ece_quantile", "log_loss",
            "roc_auc", "pr_auc")


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in HEADLINE}


def _window(ts: IntArray) -> dict[str, Any]:
    if not len(ts):
        return {}
    return {"first_bar_ms": int(ts.min()), "last_bar_ms": int(ts.max()), "first_bar_utc": _utc(int(ts.min())),
            "last_bar_utc": _utc(int(ts.max())), "bars": len(np.unique(ts))}


def _span(infos: list[dict[str, Any]]) -> tuple[int, int]:
    if not all("first_open_ms" in i for i in infos):
        raise DataError("evaluation files must be Binance kline files (their time range decides the split)")
    return min(int(i["first_open_ms"]) for i in infos), max(int(i["last_open_ms"]) for i in infos)


def _ranges(infos: list[dict[str, Any]], lab: Labelled) -> list[tuple[int, int]]:
    """Time ranges of the training files; without readable kline times, every bar of the frame."""
    if infos and all("first_open_ms" in i for i in infos):
        return [(int(i["first_open_ms"]), int(i["last_open_ms"])) for i in infos]
    ts = lab.ts
    return [(int(ts.min()), int(ts.max()))]


def streaming_note(training: dict[str, Any]) -> str:
    """Whether the live features stage emits vectors this model accepts (same feature_version) or not."""
    from streams.features.definitions import FEATURE_VERSION

    version = training["feature_version"]
    if version != FEATURE_VERSION:
        return (f"Features from 1-minute klines (feature_version {version}); the streaming features stage emits "
                f"{FEATURE_VERSION}, so the infer stage would refuse its vectors rather than score them.")
    dropped = training.get("features_dropped_all_nan") or []
    return (f"Same feature_version as the streaming features stage ({version}), so the infer stage can serve it; "
            f"klines cannot provide {len(dropped)} feature(s) (e.g. order book), which were NaN in training and "
            "are not model inputs. That live values match the kline computation feature by feature was not "
            "checked by this training run.")


def kline_limitations(cfg: TrainConfig, training: dict[str, Any]) -> list[str]:
    """Plain statements a reviewer of a kline model needs."""
    return [
        f"Trained on {', '.join(training['symbols'])} only; other symbols are out of distribution.",
        streaming_note(training),
        f"Labels: upper barrier +{cfg.theta_up:.2%} vs lower -{cfg.theta_dn:.2%} from the bar close; a bar "
        "touching both counts as DOWN and a timeout as not-up, so P(up) is small by construction.",
        "P(up) here is P(+up barrier before -down barrier or timeout), NOT P(up) vs P(down). model.json states "
        "the labels, so every prediction carries the barriers and timeout_counts_as_not_up: the decision stage "
        "(cost-v2) prices only LONGs from it, charging a timeout as a full loss, and never reads a small p_up as "
        "a SHORT.",
        "One evaluation month; calibration can drift with the volatility regime. Monitor ECE live and retrain.",
        "Hyper-parameters are the command line's. When they were chosen among the variants this card lists "
        "(\"Every variant tried\"), that choice used the evaluation period, whose numbers are then optimistic for "
        "the shipped row; the walk-forward evaluation is the check.",
        "With rare positives an ECE in percentage points is small by construction; compare the mean forecast "
        "with the base rate (calibration in the large) and the quantile ECE as well.",
    ]


def metric_limitations(eval_metrics: dict[str, Any]) -> list[str]:
    """Statements derived from the held-out numbers."""
    out: list[str] = []
    for h, m in eval_metrics.items():
        if m["base_rate"] > 0 and not 0.67 <= m["mean_p"] / m["base_rate"] <= 1.5:
            out.append(f"h={h}: mean forecast {m['mean_p']:.4f} vs observed rate {m['base_rate']:.4f} on the "
                       f"evaluation month (ratio {m['mean_p'] / m['base_rate']:.2f}): calibration in the large "
                       "did not transfer; the regime changed.")
        if m["brier_skill"] <= 0:
            out.append(f"h={h}: Brier is NOT better than the base-rate forecast on the evaluation month "
                       f"(skill {m['brier_skill']:.4f}).")
        if m["ece"] > 0.05:
            out.append(f"h={h}: ECE {m['ece']:.3f} exceeds the 5 pp reference target.")
    return out
