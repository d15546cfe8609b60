"""Walk-forward evaluation (``surge evaluate --walk-forward``) and the drift test that says when to retrain.

Folds step through time (a month or a week each). Fold k tests on [t_k, t_k + step) with a model trained by the
pipeline's own ``train_horizon`` (purged k-fold CV with embargo inside the training span, the configured
calibration) on every bar before t_k whose label resolves at least the embargo (``embargo_frac`` of the data's
span, about 22 hours on three months) before t_k (purge: no training label reaches into the test window;
embargo: serially correlated features cannot either). The training window is
expanding (``window_days=0``) or rolling. Every fold reports ECE, Brier (and its skill against the training base
rate and against the fold's own rate), ROC-AUC and PR-AUC.

Drift: the population stability index (PSI, 10 quantile bins of the reference) and the two-sample
Kolmogorov-Smirnov statistic of every model input and of the raw model score, test window against the last
``reference_days`` of the fold's training data. A retrain is due when the score's PSI or the PSI of an input that
carries at least 5 % of the model's gain exceeds ``PSI_RETRAIN`` (0.25, the usual "major shift" line), or when a
fold's ECE exceeds ``ece_limit``. Drift needs no labels, so it also runs on the newest, not yet labelled, bars.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import ks_2samp

from services.training.dataset import DataError, Labelled, LabelSpec, check_frame, feature_columns, label_frame
from services.training.metrics import probability_metrics
from services.training.train import TrainConfig, train_horizon

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DAY_MS = 86_400_000
STEPS = {"month": None, "week": 7 * DAY_MS}
PSI_RETRAIN = 0.25
PSI_WATCH = 0.10
PSI_BINS = 10
IMPORTANT_GAIN = 0.05


def psi(reference: FloatArray, current: FloatArray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference`` over the reference's quantile bins
    (NaNs dropped; empty bins floored at 1e-4)."""
    ref = reference[np.isfinite(reference)]
    cur = current[np.isfinite(current)]
    if len(ref) < bins or len(cur) < bins:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    r = np.maximum(r, 1e-4)
    c = np.maximum(c, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def ks(reference: FloatArray, current: FloatArray) -> float:
    ref = reference[np.isfinite(reference)]
    cur = current[np.isfinite(current)]
    if not len(ref) or not len(cur):
        return float("nan")
    return float(ks_2samp(ref, cur).statistic)


def fold_starts(ts: IntArray, step: str, min_train_days: float) -> list[int]:
    """Start times (ms) of the test windows: month or week boundaries after ``min_train_days`` of data."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {tuple(STEPS)}")
    first, last = int(ts.min()), int(ts.max())
    begin = first + int(min_train_days * DAY_MS)
    if step == "month":
        months = pd.date_range(pd.Timestamp(begin, unit="ms", tz="UTC").ceil("D"),
                               pd.Timestamp(last, unit="ms", tz="UTC"), freq="MS")
        return [int(m.value // 1_000_000) for m in months]
    week = STEPS["week"]
    assert week is not None
    day0 = (begin + DAY_MS - 1) // DAY_MS * DAY_MS
    return list(range(day0, last, week))


@dataclass(frozen=True)
class Drift:
    score_psi: float
    score_ks: float
    features: dict[str, dict[str, float]]
    retrain_due: bool
    reasons: list[str]


def drift_test(ref_x: FloatArray, cur_x: FloatArray, ref_score: FloatArray, cur_score: FloatArray,
               names: Sequence[str], importance: FloatArray) -> Drift:
    feats = {n: {"psi": psi(ref_x[:, j], cur_x[:, j]), "ks": ks(ref_x[:, j], cur_x[:, j]),
                 "gain_share": float(importance[j])} for j, n in enumerate(names)}
    score_psi = psi(ref_score, cur_score)
    reasons: list[str] = []
    if score_psi > PSI_RETRAIN:
        reasons.append(f"score PSI {score_psi:.3f} > {PSI_RETRAIN}")
    for n, f in feats.items():
        if f["gain_share"] >= IMPORTANT_GAIN and f["psi"] > PSI_RETRAIN:
            reasons.append(f"{n} PSI {f['psi']:.3f} > {PSI_RETRAIN} (gain share {f['gain_share']:.2f})")
    return Drift(score_psi, ks(ref_score, cur_score), feats, bool(reasons), reasons)


def walk_forward(frame: pd.DataFrame, cfg: TrainConfig, *, horizon: int = 30, step: str = "month",
                 min_train_days: float = 28.0, window_days: float = 0.0, reference_days: float = 14.0,
                 ece_limit: float = 0.02, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The report: one entry per fold (window, sizes, metrics, drift, verdict) and a summary."""
    check_frame(frame)
    lab: Labelled = label_frame(frame, LabelSpec.minute_bars((horizon,), cfg.theta_up, cfg.theta_dn))
    names = feature_columns(lab.frame, cfg.features or None)
    x = lab.frame[names].to_numpy(dtype=np.float64).astype(np.float32).astype(np.float64)
    keep = [j for j in range(len(names)) if not np.isnan(x[:, j]).all()]
    names = [names[j] for j in keep]
    x = x[:, keep]
    ts = lab.ts
    y = lab.y[horizon]
    valid = np.isfinite(y)
    embargo_ms = round(cfg.embargo_frac * (int(ts.max()) - int(ts.min())))
    starts = fold_starts(ts, step, min_train_days)
    if not starts:
        raise DataError(f"not enough data for a {step} walk-forward after {min_train_days} training days")
    one = _one_horizon(cfg, horizon)
    folds: list[dict[str, Any]] = []
    for k, t0 in enumerate(starts):
        t1 = starts[k + 1] if k + 1 < len(starts) else int(ts.max()) + 1
        lo = t0 - int(window_days * DAY_MS) if window_days > 0 else int(ts.min())
        train = np.flatnonzero(valid & (ts >= lo) & (lab.end_ts[horizon] < t0 - embargo_ms)).astype(np.int64)
        test_all = np.flatnonzero((ts >= t0) & (ts < t1)).astype(np.int64)
        test = test_all[valid[test_all]]
        if len(train) < 4 * cfg.min_child_samples or not len(test_all):
            continue
        res = train_horizon(lab, horizon, train, x, names, one, lambda: None)
        booster = res.boosters[one.objective]
        cal = res.calibrations[one.objective]
        gain = booster.feature_importance(importance_type="gain")
        importance = gain / max(float(gain.sum()), 1e-12)
        ref = train[ts[train] >= t0 - int(reference_days * DAY_MS)]
        raw_test = np.asarray(booster.predict(x[test_all]), dtype=np.float64)
        drift = drift_test(x[ref], x[test_all], np.asarray(booster.predict(x[ref]), dtype=np.float64), raw_test,
                           names, importance)
        entry: dict[str, Any] = {
            "fold": k, "train_from_utc": _utc(int(ts[train].min())), "train_to_utc": _utc(int(ts[train].max())),
            "test_from_utc": _utc(t0), "test_to_utc": _utc(int(ts[test_all].max())), "n_train": len(train),
            "train_base_rate": res.base_rate, "purge_embargo_ms": embargo_ms,
            "drift": {"score_psi": drift.score_psi, "score_ks": drift.score_ks, "features": drift.features},
        }
        reasons = list(drift.reasons)
        if len(test):  # a window without a single UP still has n, base rate, ECE and Brier (AUC is undefined)
            p = cal.apply(np.asarray(booster.predict(x[test]), dtype=np.float64))
            m = probability_metrics(p, y[test], base_rate_forecast=res.base_rate)
            entry["metrics"] = {key: m[key] for key in ("n", "base_rate", "mean_p", "ece", "brier", "brier_skill",
                                                        "brier_skill_period", "roc_auc", "pr_auc")}
            if m["ece"] > ece_limit:
                reasons.append(f"ECE {100 * m['ece']:.2f} pp > {100 * ece_limit:.2f} pp")
        entry["retrain_due"] = bool(reasons)
        entry["reasons"] = reasons
        folds.append(entry)
        mm = entry.get("metrics", {})
        log(f"fold {k} test {entry['test_from_utc']}..{entry['test_to_utc']}: n={mm.get('n', 0)} "
            f"ECE {100 * mm.get('ece', float('nan')):.2f} pp AUC {mm.get('roc_auc', float('nan')):.3f} "
            f"score PSI {drift.score_psi:.3f} -> {'RETRAIN' if reasons else 'ok'}")
    scored = [f["metrics"] for f in folds if "metrics" in f]
    summary = {
        "folds": len(folds),
        "mean_ece": _nanmean([m["ece"] for m in scored]),
        "mean_roc_auc": _nanmean([m["roc_auc"] for m in scored]),
        "mean_brier_skill_period": _nanmean([m["brier_skill_period"] for m in scored]),
        "retrain_due_now": bool(folds and folds[-1]["retrain_due"]),
    }
    return {"horizon": horizon, "step": step, "window_days": window_days, "reference_days": reference_days,
            "psi_retrain": PSI_RETRAIN, "ece_limit": ece_limit, "features": names, "folds": folds,
            "summary": summary}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _one_horizon(cfg: TrainConfig, horizon: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, horizons=(horizon,))


def _utc(ms: int) -> str:
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M"))


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Walk-forward evaluation: {report['step']}ly refits, horizon {report['horizon']} min", "",
             "| fold | train | test | n | base rate | mean p | ECE | Brier | skill (train rate) | skill (period rate) "
             "| ROC-AUC | PR-AUC | score PSI | retrain due |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in report["folds"]:
        m = f.get("metrics", {})

        def g(key: str, fmt: str = ".4f", m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)

        ece_txt = "n/a" if "ece" not in m else f"{100 * m['ece']:.2f} pp"
        lines.append(f"| {f['fold']} | {f['train_from_utc']} .. {f['train_to_utc']} | {f['test_from_utc']} .. "
                     f"{f['test_to_utc']} | {m.get('n', 0)} | {g('base_rate')} | {g('mean_p')} | {ece_txt} | "
                     f"{g('brier', '.5f')} | {g('brier_skill')} | {g('brier_skill_period')} | {g('roc_auc', '.3f')} | "
                     f"{g('pr_auc', '.3f')} | {f['drift']['score_psi']:.3f} | "
                     f"{'**yes**: ' + '; '.join(f['reasons']) if f['retrain_due'] else 'no'} |")
    s = report["summary"]
    lines += ["", f"Mean ECE {100 * s['mean_ece']:.2f} pp, mean ROC-AUC {s['mean_roc_auc']:.3f}, mean Brier skill "
              f"against each period's own rate {s['mean_brier_skill_period']:.4f}. Retrain due now: "
              f"**{'yes' if s['retrain_due_now'] else 'no'}** (score or important-feature PSI > "
              f"{report['psi_retrain']}, or ECE > {100 * report['ece_limit']:.1f} pp)."]
    return "\n".join(lines) + "\n"
