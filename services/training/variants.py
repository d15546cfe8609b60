"""Every model variant tried for the held-out report, on one horizon, through the pipeline's own pieces.

The grid (issue 12): class weights (balanced on uniqueness vs uniqueness only), monotone constraints on the
volatility features (or the configured ``monotone_increasing``), the L2 leaf penalty, focal loss vs log
loss, four calibration maps (isotonic, Platt, beta, temperature) fitted on three windows (every out-of-fold
score; the out-of-fold scores of the last ``calibration_recent_days`` (15 when unset) only; a booster fitted
before that recent window and calibrated on it, out of sample), and, when other symbols' bars are given,
pooling them into training. Each variant is scored on the evaluation rows exactly as it would be served
(``Calibration.apply`` on the booster's scores); the card lists all of them, the losers included.

Selection caveat: choosing the shipped variant by these numbers uses the evaluation month, so the winner's
evaluation numbers are optimistic; the walk-forward evaluation (``surge evaluate --walk-forward``) is the
unbiased check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from services.training import export
from services.training.cv import purged_kfold
from services.training.metrics import probability_metrics

if TYPE_CHECKING:
    from services.training.dataset import Labelled
    from services.training.train import TrainConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

VOLATILITY_FEATURES = ("parkinson_5m", "parkinson_1h", "rv_1h")
L2_SWEEP = (10.0, 100.0, 270.0, 1000.0)  # L2 leaf regularisation, on weights of mean 1
WINDOWS = ("all OOF", "recent OOF", "recent hold-out")
HEADLINE = ("n", "base_rate", "mean_p", "brier", "brier_skill", "brier_skill_period", "ece", "ece_quantile",
            "roc_auc", "pr_auc", "log_loss")


def _folds(start: IntArray, end: IntArray, cfg: TrainConfig) -> list[tuple[IntArray, IntArray]]:
    span = int(start.max() - start.min()) if len(start) else 0
    return list(purged_kfold(start, end, n_splits=cfg.folds, embargo=round(cfg.embargo_frac * span)))


def run_variants(lab: Labelled, h: int, train_rows: IntArray, eval_rows: IntArray, x: FloatArray,
                 names: list[str], cfg: TrainConfig, *, pool: tuple[FloatArray, FloatArray, FloatArray] | None = None,
                 log: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Evaluation metrics of every variant on horizon ``h``; ``pool`` = (x, y, weights) of other symbols' bars
    that may join training (never evaluated on)."""
    from services.training.train import fit_booster, recent_mask, sample_weights

    y = lab.y[h][train_rows]
    y_ev = lab.y[h][eval_rows]
    start = lab.ts[train_rows] // lab.bar_ms
    end = lab.end_ts[h][train_rows] // lab.bar_ms
    ts = lab.ts[train_rows]
    recent = recent_mask(ts, cfg.calibration_recent_days or 15.0)
    xs, x_ev = x[train_rows], x[eval_rows]
    mono = cfg.monotone_increasing or tuple(n for n in VOLATILITY_FEATURES if n in names)
    out: list[dict[str, Any]] = []
    grid: list[tuple[str, TrainConfig, str, bool]] = [
        ("balanced weights", replace(cfg, class_weight="balanced", monotone_increasing=()), "logloss", False),
        ("balanced weights + monotone vol", replace(cfg, class_weight="balanced", monotone_increasing=mono),
         "logloss", False),
        ("uniqueness weights", replace(cfg, class_weight="none", monotone_increasing=()), "logloss", False),
        ("uniqueness weights + monotone vol", replace(cfg, class_weight="none", monotone_increasing=mono),
         "logloss", False),
        ("uniqueness weights + monotone vol, focal", replace(cfg, class_weight="none", monotone_increasing=mono),
         "focal", False),
        ("balanced weights + monotone vol, focal", replace(cfg, class_weight="balanced", monotone_increasing=mono),
         "focal", False),
    ]
    for l2 in L2_SWEEP:
        if l2 != cfg.lambda_l2:
            grid.append((f"uniqueness weights + monotone vol, lambda_l2 {l2:g}",
                         replace(cfg, class_weight="none", monotone_increasing=mono, lambda_l2=l2), "logloss", False))
    if pool is not None:
        grid.append(("uniqueness weights + monotone vol, pooled symbols",
                     replace(cfg, class_weight="none", monotone_increasing=mono), "logloss", True))
    for label, vcfg, objective, pooled in grid:
        w = sample_weights(lab, h, train_rows, vcfg)

        def fit(rows: IntArray, vcfg: TrainConfig = vcfg, w: FloatArray = w, objective: str = objective,
                pooled: bool = pooled) -> Any:
            xx, yy, ww = xs[rows], y[rows], w[rows]
            if pooled and pool is not None:
                xx = np.vstack([xx, pool[0]])
                yy = np.concatenate([yy, pool[1]])
                ww = np.concatenate([ww, pool[2]])
            return fit_booster(xx, yy, ww, names, vcfg, objective)  # type: ignore[arg-type]

        oof = np.full(len(train_rows), np.nan)
        for tr, te in _folds(start, end, vcfg):
            oof[te] = fit(tr).predict(xs[te])
        final = fit(np.arange(len(train_rows)))
        raw_ev = np.asarray(final.predict(x_ev), dtype=np.float64)
        scored = np.isfinite(oof)
        early = np.flatnonzero(lab.end_ts[h][train_rows] < ts[recent].min()) if recent.any() else np.array([], int)
        holdout: tuple[FloatArray, FloatArray] | None = None
        if len(early) > 2 * vcfg.min_child_samples and recent.sum() > 100:
            pre = fit(early.astype(np.int64))
            holdout = (np.asarray(pre.predict(xs[recent]), dtype=np.float64),
                       np.asarray(pre.predict(x_ev), dtype=np.float64))
        for window in WINDOWS:
            for method in export.CALIBRATIONS:
                if window == "all OOF":
                    cal = export.fit_calibration(h, oof[scored], y[scored], method)
                    p = cal.apply(raw_ev)
                elif window == "recent OOF":
                    m = scored & recent
                    cal = export.fit_calibration(h, oof[m], y[m], method)
                    p = cal.apply(raw_ev)
                elif holdout is not None:
                    cal = export.fit_calibration(h, holdout[0], y[recent], method)
                    p = cal.apply(holdout[1])
                else:
                    continue
                metrics = probability_metrics(p, y_ev, base_rate_forecast=float(y.mean()))
                row = {"variant": label, "objective": objective, "class_weight": vcfg.class_weight,
                       "monotone_increasing": list(vcfg.monotone_increasing), "pooled": pooled,
                       "lambda_l2": vcfg.lambda_l2,
                       "calibration": method, "calibration_window": window,
                       **{k: metrics[k] for k in HEADLINE}}
                out.append(row)
                log(f"variant {label} | {method} on {window}: ECE {100 * row['ece']:.2f} pp, "
                    f"AUC {row['roc_auc']:.3f}, skill vs period rate {row['brier_skill_period']:.4f}")
    return out
