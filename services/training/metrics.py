"""Evaluation of probability forecasts for the model card: calibration, sharpness, ranking and top-k hits.

Every metric takes calibrated probabilities ``p`` and 0/1 outcomes ``y`` of the same length. ECE is the
headline calibration number (``ece``: 10 equal-width bins); with rare positives most mass sits in the lowest
bin, so an equal-mass (quantile) ECE is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ECE_BINS = 10
TOP_K: tuple[int, ...] = (10, 50, 100, 500)
EPS = 1e-12


def ece(p: FloatArray, y: FloatArray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |mean forecast - observed frequency| over equal-width bins on [0, 1],
    weighted by the bins' shares of the samples."""
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(p) * abs(float(p[m].mean()) - float(y[m].mean()))
    return total


def reliability_bins(p: FloatArray, y: FloatArray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-width bins on [0, 1]: lower/upper edge, count, mean forecast and observed frequency (NaN if empty)."""
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append({
            "lo": b / bins, "hi": (b + 1) / bins, "n": n,
            "mean_p": float(p[m].mean()) if n else float("nan"),
            "freq": float(y[m].mean()) if n else float("nan"),
        })
    return out


def reliability_quantile_bins(p: FloatArray, y: FloatArray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Equal-mass bins of the sorted forecasts (readable when forecasts crowd near 0): lo/hi are the bin's
    smallest and largest forecast."""
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append({"lo": float(p[chunk].min()), "hi": float(p[chunk].max()), "n": len(chunk),
                        "mean_p": float(p[chunk].mean()), "freq": float(y[chunk].mean())})
    return out


def quantile_ece(p: FloatArray, y: FloatArray, bins: int = ECE_BINS) -> float:
    """ECE over equal-mass bins of the sorted forecasts (ties may straddle a bin edge)."""
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) / len(p) * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return total


def top_k_hits(p: FloatArray, y: FloatArray, k: int) -> float:
    """Share of positives among the k highest forecasts (stable order on ties); NaN when k > n."""
    if k > len(p) or k <= 0:
        return float("nan")
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].mean())


def top_k_hits_nonoverlapping(
    p: FloatArray, y: FloatArray, start: IntArray, end: IntArray, group: IntArray, k: int
) -> tuple[float, int]:
    """Hit rate of the k best forecasts taken greedily so no two chosen label spans of a group overlap.

    This is what a trader holding one position per symbol until the barrier resolves would get; adjacent
    bars share most of their label window, so the plain top-k counts one move many times.
    Returns (hit rate, number chosen), the latter < k when the period cannot hold k disjoint spans.
    """
    chosen: list[int] = []
    spans: dict[int, list[tuple[int, int]]] = {}
    for i in np.argsort(-p, kind="stable"):
        g = int(group[i])
        s, e = int(start[i]), int(end[i])
        if any(s <= e0 and e >= s0 for s0, e0 in spans.get(g, [])):
            continue
        spans.setdefault(g, []).append((s, e))
        chosen.append(int(i))
        if len(chosen) == k:
            break
    if not chosen:
        return float("nan"), 0
    return float(y[np.asarray(chosen)].mean()), len(chosen)


def probability_metrics(
    p: FloatArray,
    y: FloatArray,
    *,
    base_rate_forecast: float,
    raw: FloatArray | None = None,
    spans: tuple[IntArray, IntArray, IntArray] | None = None,
    top_k: Sequence[int] = TOP_K,
) -> dict[str, Any]:
    """Everything the card reports for one horizon. ``base_rate_forecast`` is the constant forecast to beat
    (the training base rate: known before the evaluation period, unlike the period's own rate)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    rate = float(y.mean()) if n else float("nan")
    brier = float(np.mean((p - y) ** 2))
    brier_base = float(np.mean((base_rate_forecast - y) ** 2))
    brier_clim = float(np.mean((rate - y) ** 2))
    pc = np.clip(p, EPS, 1 - EPS)
    both = 0 < rate < 1
    out: dict[str, Any] = {
        "n": n,
        "positives": int(y.sum()),
        "base_rate": rate,
        "base_rate_forecast": float(base_rate_forecast),
        "mean_p": float(p.mean()),
        "brier": brier,
        "brier_base_rate": brier_base,
        "brier_skill": float(1.0 - brier / brier_base) if brier_base > 0 else float("nan"),
        "brier_period_climatology": brier_clim,
        # Skill against the period's own rate, known only afterwards: > 0 means the forecast beats hindsight.
        "brier_skill_period": float(1.0 - brier / brier_clim) if brier_clim > 0 else float("nan"),
        "ece": float(ece(p, y)),
        "ece_quantile": quantile_ece(p, y),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "reliability": reliability_bins(p, y),
        "reliability_quantile": reliability_quantile_bins(p, y),
        "hit_at_k": {str(k): top_k_hits(p, y, k) for k in top_k},
    }
    if raw is not None:
        raw = np.asarray(raw, dtype=np.float64)
        out["brier_raw"] = float(np.mean((raw - y) ** 2))
        out["ece_raw"] = float(ece(raw, y))
        out["reliability_raw"] = reliability_bins(raw, y)
    if spans is not None:
        start, end, group = spans
        out["hit_at_k_nonoverlapping"] = {}
        for k in top_k:
            hit, got = top_k_hits_nonoverlapping(p, y, start, end, group, k)
            out["hit_at_k_nonoverlapping"][str(k)] = {"hit_rate": hit, "chosen": got}
    return out
