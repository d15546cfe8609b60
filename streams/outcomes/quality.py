"""Live quality of the signals, from their outcomes, and the bounded adaptation that closes the loop.

Pure. Over the last ``window`` resolved signals (one ``Sample`` each: the probability the signal gave its own side,
and whether that side won), ``report`` computes:

* **ECE**: expected calibration error over ``buckets`` equal-width reliability buckets, in percentage points;
* **Brier** score of the side probabilities; **PR-AUC** as average precision (wins are the positives);
* **hit@K**: the win rate of the K signals with the highest probability;
* **average realized utility**: mean net return after realized costs, bps;
* **false-positive rate**: the share of signals whose side lost (stop first, or a timeout below zero);
* **cost MAPE**: mean |estimated - realized| / realized cost, percent.

``adapt`` then moves two offsets the decision stage adds to its thresholds, each within bounds:

* ``tau_offset`` rises by ``tau_step`` (to at most ``tau_max``) while the live ECE exceeds the model's own held-out
  ECE by more than ``ece_drift_pp``, and that model is flagged for recalibration once (the stage audits it); it
  decays by a step once calibration is back within the bound.
* ``kappa_offset`` rises by ``kappa_step`` (to at most ``kappa_max``) while the average realized utility is below
  ``utility_floor_bps`` and decays by a step when it is above.

Nothing adapts before ``min_samples`` outcomes: a handful of outcomes says little about calibration.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    window: int = 500
    min_samples: int = 50
    buckets: int = 10
    top_k: int = 10
    ece_drift_pp: float = 5.0
    tau_step: float = 0.02
    tau_max: float = 0.10
    kappa_step: float = 0.10
    kappa_max: float = 0.50
    utility_floor_bps: float = 0.0
    adapt_every: int = 50    # new outcomes between two adaptation steps, so one bad minute moves a step, not ten


@dataclass(frozen=True, slots=True)
class Sample:
    p_side: float            # the probability the signal gave its own side (p_up for LONG, 1 - p_up for SHORT)
    won: bool                # its target came first
    net_bps: float           # realized return after realized costs
    estimated_cost_bps: float
    realized_cost_bps: float
    model_version: str


@dataclass(frozen=True, slots=True)
class QualityReport:
    n: int
    ece_pp: float
    brier: float
    pr_auc: float
    hit_at_k: float
    avg_utility_bps: float
    false_positive_rate: float
    cost_mape_pct: float
    model_version: str       # the model behind most of the window

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class LiveQuality:
    policy: QualityPolicy = field(default_factory=QualityPolicy)
    samples: deque[Sample] = field(default_factory=deque)
    tau_offset: float = 0.0
    kappa_offset: float = 0.0
    flagged: set[str] = field(default_factory=set)   # model versions flagged for recalibration
    last: QualityReport | None = None
    since_adapt: int = 0

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        self.since_adapt += 1
        while len(self.samples) > self.policy.window:
            self.samples.popleft()


def ece_pp(p: Sequence[float], won: Sequence[bool], buckets: int) -> float:
    totals = [0] * buckets
    p_sums = [0.0] * buckets
    hit_sums = [0.0] * buckets
    for pi, wi in zip(p, won, strict=True):
        b = min(buckets - 1, int(pi * buckets))
        totals[b] += 1
        p_sums[b] += pi
        hit_sums[b] += 1.0 if wi else 0.0
    n = len(p)
    return 100.0 * sum(abs(hit_sums[b] - p_sums[b]) for b in range(buckets) if totals[b]) / n if n else 0.0


def average_precision(p: Sequence[float], won: Sequence[bool]) -> float:
    """Area under the precision-recall curve as average precision; NaN without a single win."""
    positives = sum(won)
    if positives == 0:
        return math.nan
    hits, total = 0, 0.0
    for rank, (_, wi) in enumerate(sorted(zip(p, won, strict=True), key=lambda t: -t[0]), start=1):
        if wi:
            hits += 1
            total += hits / rank
    return total / positives


def report(samples: Sequence[Sample], policy: QualityPolicy) -> QualityReport:
    p = [s.p_side for s in samples]
    won = [s.won for s in samples]
    n = len(samples)
    top = sorted(samples, key=lambda s: -s.p_side)[: policy.top_k]
    costed = [s for s in samples if s.realized_cost_bps > 0]
    versions: dict[str, int] = {}
    for s in samples:
        versions[s.model_version] = versions.get(s.model_version, 0) + 1
    return QualityReport(
        n=n,
        ece_pp=ece_pp(p, won, policy.buckets),
        brier=sum((pi - (1.0 if wi else 0.0)) ** 2 for pi, wi in zip(p, won, strict=True)) / n if n else math.nan,
        pr_auc=average_precision(p, won),
        hit_at_k=sum(s.won for s in top) / len(top) if top else math.nan,
        avg_utility_bps=sum(s.net_bps for s in samples) / n if n else math.nan,
        false_positive_rate=sum(not s.won and s.net_bps < 0 for s in samples) / n if n else math.nan,
        cost_mape_pct=100.0 * sum(abs(s.estimated_cost_bps - s.realized_cost_bps) / s.realized_cost_bps
                                  for s in costed) / len(costed) if costed else math.nan,
        model_version=max(versions, key=lambda v: versions[v]) if versions else "",
    )


def adapt(quality: LiveQuality, held_out_ece_pp: float) -> list[tuple[str, str]]:
    """Recompute the report and move the offsets (module doc); returns (action, reason) events to audit. Steps are
    taken at most once per ``adapt_every`` new outcomes."""
    policy = quality.policy
    rep = report(quality.samples, policy)
    quality.last = rep
    events: list[tuple[str, str]] = []
    if rep.n < policy.min_samples or quality.since_adapt < policy.adapt_every:
        return events
    quality.since_adapt = 0
    drift = rep.ece_pp - (held_out_ece_pp if math.isfinite(held_out_ece_pp) else 0.0)
    if drift > policy.ece_drift_pp:
        raised = min(policy.tau_max, quality.tau_offset + policy.tau_step)
        if raised != quality.tau_offset:
            quality.tau_offset = raised
            events.append(("tau_raised", f"live ECE {rep.ece_pp:.2f} pp is {drift:.2f} pp above the held-out "
                                         f"{held_out_ece_pp:.2f} pp over {rep.n} outcomes: tau +{raised:.2f}"))
        if rep.model_version not in quality.flagged:
            quality.flagged.add(rep.model_version)
            events.append(("recalibrate", f"model {rep.model_version}: live ECE drifted {drift:.2f} pp"))
    elif quality.tau_offset > 0:
        quality.tau_offset = max(0.0, quality.tau_offset - policy.tau_step)
        events.append(("tau_lowered", f"live ECE {rep.ece_pp:.2f} pp back within {policy.ece_drift_pp} pp: "
                                      f"tau +{quality.tau_offset:.2f}"))
    if rep.avg_utility_bps < policy.utility_floor_bps:
        raised = min(policy.kappa_max, quality.kappa_offset + policy.kappa_step)
        if raised != quality.kappa_offset:
            quality.kappa_offset = raised
            events.append(("kappa_raised", f"average realized utility {rep.avg_utility_bps:.2f} bps below "
                                           f"{policy.utility_floor_bps} bps: kappa +{raised:.2f}"))
    elif quality.kappa_offset > 0:
        quality.kappa_offset = max(0.0, round(quality.kappa_offset - policy.kappa_step, 10))
        events.append(("kappa_lowered", f"average realized utility {rep.avg_utility_bps:.2f} bps: "
                                        f"kappa +{quality.kappa_offset:.2f}"))
    return events
