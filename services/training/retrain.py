"""Closed loop (``surge retrain``): realized outcomes -> retrain -> gate -> register -> canary, every step audited.

1. Check the infer stage's canary share (``SURGE_CANARY_SHARE``) is within ``CANARY_SHARE_RANGE`` (5-10 %): the
   retrained model goes live on that share of symbols, and the infer stage withdraws it by itself (audited
   ``rollback_canary``) when its invalid-output rate or its gap to the active model passes the thresholds
   (``streams/infer/canary.py``).
2. Read the realized labels: the outcomes stage's rows in the ``outcomes`` table (``FINAL``) of LONG signals whose
   barriers are the model's (``upper_barrier_bps`` / ``lower_barrier_bps`` = theta_up / theta_dn). A WIN
   (``HIT_TARGET``) is UP; a LOSS or a TIMEOUT is not-up, as in the training labels.
3. Retrain with the pipeline (``train.train_on``) on the kline files: the features come from the features stage's
   batch driver, the labels from the triple barrier on the bars, except that a bar at which a live signal was
   entered takes its realized label (the bar whose close is the latest before the entry). How many labels were
   realized, matched and changed is in the card (``training.realized_outcomes``).
4. Gate: every horizon's calibration ECE (evaluation period when given, else out-of-fold) must be at most
   ``max_ece`` and its Brier skill positive; a failed gate is audited (``retrain_rejected``) and nothing deploys.
5. Register (audited ``register``) and deploy as canary (audited ``deploy_canary``).

Every step writes an ``audit_logs`` row (actions ``retrain_start``, ``retrain_trained``, ``retrain_rejected``,
``retrain_done``) beside the registry's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.training.dataset import FrameFn
from services.training.train import Steps, TrainConfig, klines_set, train_on
from streams.runtime.clock import Clock
from streams.storage.registry import ModelRegistry
from streams.storage.warehouse import Warehouse

CANARY_SHARE_RANGE = (0.05, 0.10)
ACTOR = "retrain"
MINUTE_US = 60_000_000


class RetrainError(RuntimeError):
    """A retrain that must not go ahead (canary share out of range, no realized labels, ...)."""


@dataclass(frozen=True)
class RetrainResult:
    model_version: str
    deployed: bool
    reason: str
    realized: dict[str, int]
    card: dict[str, Any]


class Auditor:
    """Rows in ``audit_logs`` through the registry's own writer, so the retrain's steps and the registry's
    actions share one strictly increasing sequence of times."""

    def __init__(self, registry: ModelRegistry, actor: str = ACTOR) -> None:
        self.registry = registry
        self.actor = actor

    def __call__(self, action: str, version: str, reason: str, previous: str = "") -> None:
        self.registry.audit(action, self.actor, version, previous, reason)


def realized_outcomes(warehouse: Warehouse, cfg: TrainConfig, since_us: int = 0) -> pd.DataFrame:
    """LONG outcomes at the model's barriers: symbol, horizon_min, bar ts (ms) the label belongs to, y (0/1)."""
    rows = warehouse.query(
        "SELECT symbol, horizon_min, label, entry_us, upper_barrier_bps, lower_barrier_bps "
        f"FROM {warehouse.database}.outcomes FINAL WHERE decision = 'LONG' AND entry_us >= {int(since_us)}")
    frame = pd.DataFrame(rows, columns=["symbol", "horizon_min", "label", "entry_us", "upper_barrier_bps",
                                        "lower_barrier_bps"])
    if frame.empty:
        return pd.DataFrame({"symbol": [], "horizon_min": [], "ts": [], "y": []})
    ours = (np.isclose(frame["upper_barrier_bps"].astype(float), cfg.theta_up * 1e4)
            & np.isclose(frame["lower_barrier_bps"].astype(float), cfg.theta_dn * 1e4)
            & frame["horizon_min"].astype(int).isin(cfg.horizons)
            & frame["label"].isin(["HIT_TARGET", "HIT_STOP", "TIMEOUT"]))
    frame = frame[ours]
    entry = frame["entry_us"].astype(np.int64).to_numpy()
    return pd.DataFrame({
        "symbol": frame["symbol"].astype(str).to_numpy(),
        "horizon_min": frame["horizon_min"].astype(int).to_numpy(),
        # entry inside minute m: the latest closed bar is m - 1, whose close is the training label's entry
        "ts": (entry // MINUTE_US - 1) * 60_000,
        "y": (frame["label"] == "HIT_TARGET").astype(float).to_numpy(),
    })


def retrain(warehouse: Warehouse, clock: Clock, data: Sequence[Path], out_dir: Path, cfg: TrainConfig, *,
            canary_share: float, eval_data: Sequence[Path] = (), since_us: int = 0, min_outcomes: int = 1,
            max_ece: float = 0.05, frame_fn: FrameFn | None = None, command: str = "surge retrain",
            actor: str = ACTOR, log: Callable[[str], None] = lambda _m: None) -> RetrainResult:
    registry = ModelRegistry(warehouse, clock)
    audit = Auditor(registry, actor)
    lo, hi = CANARY_SHARE_RANGE
    if not lo <= canary_share <= hi:
        audit("retrain_rejected", "", f"canary share {canary_share:.0%} outside {lo:.0%}-{hi:.0%}")
        raise RetrainError(f"SURGE_CANARY_SHARE={canary_share} must be within {lo}-{hi} for a retrain canary")
    active = registry.active()
    audit("retrain_start", "", f"data {[p.name for p in data]}, outcomes since {since_us}; active "
          f"{active.model_version if active else 'none'}")
    outcomes = realized_outcomes(warehouse, cfg, since_us)
    if len(outcomes) < min_outcomes:
        audit("retrain_rejected", "", f"{len(outcomes)} realized labels < {min_outcomes}")
        raise RetrainError(f"only {len(outcomes)} realized LONG outcomes at the model's barriers (need "
                           f"{min_outcomes})")
    steps = Steps(quiet=True)
    ds = klines_set(data, cfg, eval_data=eval_data, frame_fn=frame_fn, command=command, steps=steps)
    lab = ds.lab
    key = pd.MultiIndex.from_arrays([lab.frame["symbol"].astype(str), lab.ts])
    matched = changed = 0
    for h in cfg.horizons:
        mine = outcomes[outcomes["horizon_min"] == h]
        pos = key.get_indexer(pd.MultiIndex.from_arrays([mine["symbol"], mine["ts"]]))
        hit = pos >= 0
        rows = pos[hit]
        realized_y = mine["y"].to_numpy()[hit]
        known = np.isfinite(lab.y[h][rows])  # a bar without a complete label keeps none
        changed += int(np.sum(known & (lab.y[h][rows] != realized_y)))
        matched += int(known.sum())
        lab.y[h][rows[known]] = realized_y[known]
    realized = {"read": len(outcomes), "matched": matched, "changed_vs_bars": changed,
                "unmatched": len(outcomes) - matched}
    log(f"realized labels: {realized}")
    ds = replace(ds, provenance={**ds.provenance, "realized_outcomes": {**realized, "since_us": since_us}})
    card = train_on(ds, out_dir, cfg, steps)
    version = str(card["model_version"])
    audit("retrain_trained", version, f"artifact {out_dir}; realized labels {realized}")
    metrics = card["metrics"]["eval"] or card["metrics"]["oof"]
    failed = [f"h={h}: ECE {100 * m['ece']:.2f} pp > {100 * max_ece:.2f} pp" for h, m in metrics.items()
              if m["ece"] > max_ece]
    failed += [f"h={h}: Brier skill {m['brier_skill']:.4f} <= 0" for h, m in metrics.items()
               if not m["brier_skill"] > 0]
    if failed:
        reason = "; ".join(failed)
        audit("retrain_rejected", version, reason)
        return RetrainResult(version, False, reason, realized, card)
    registry.register(out_dir, actor)
    if active is not None and active.model_version == version:
        reason = "the retrained model is the active one (same artifact): nothing to canary"
        audit("retrain_done", version, reason)
        return RetrainResult(version, False, reason, realized, card)
    reason = (f"retrained on {realized['matched']} realized labels; canary on {canary_share:.0%} of symbols, "
              "auto-rollback by the infer stage's canary rules")
    registry.deploy(version, actor, canary=True, reason=reason)
    audit("retrain_done", version, reason)
    return RetrainResult(version, True, reason, realized, card)
