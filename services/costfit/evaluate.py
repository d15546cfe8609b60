"""Realized cost MAPE on held-out samples: the fitted model's estimate at entry vs the book walks actually seen.

For every held-out sample (the entry) with a sample of the same symbol ``horizon`` minutes later (the exit):

* realized execution cost of a LONG of notional V: ``buy_V(entry) + sell_V(exit)``, each side's VWAP distance
  from its own mid (so it holds both half spreads and both walks); a SHORT: ``sell_V(entry) + buy_V(exit)``;
* estimates, execution part only (fee, funding and opportunity are not in the walk):
  - ``table``: ``CostModel.estimate`` with the fitted tables at p50, no book: spread at entry + slippage +
    impact (the path the decision stage has while predictions carry no book levels);
  - ``book``: the live book at entry walked both ways (``buy_V + sell_V`` at entry; what ``estimate(book=)``
    charges at p50);
  - ``cost-v2``: the previous hand-set table, spread + ``SLIPPAGE_BPS[regime]`` (worst for unknown);
* ``total`` adds the venue's round-trip taker fee to both sides of the comparison.

MAPE = mean |estimate - realized| / realized (realized > 0 always: the spread is at least a tick);
WAPE = sum |error| / sum realized, robust to the many near-zero BTC round trips; coverage = share of realized
execution costs at or below the table's estimate at a quantile (p95, p97.5), per round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from schemas import signal_pb2
from streams.decision.cost import SLIPPAGE_BPS, CostModel, CostTables

EXIT_TOLERANCE_US = 1_000_000


def pair_exits(samples: pd.DataFrame, horizon_min: float, universe: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each sample joined with the first sample of its session and symbol at least ``horizon_min`` later (within
    1 s) from ``universe`` (default: ``samples``); exit columns get the ``x_`` prefix. Samples without an exit
    are dropped."""
    universe = samples if universe is None else universe
    wait = round(horizon_min * 60e6)
    left = samples.assign(exit_at=samples["local_us"] + wait).sort_values("exit_at", kind="stable")
    walk_cols = [c for c in universe.columns if c.startswith(("buy_", "sell_"))]
    right = universe[["session", "symbol", "local_us", "mid", "spread_bps", *walk_cols]]
    right = right.rename(columns={c: f"x_{c}" for c in ["local_us", "mid", "spread_bps", *walk_cols]})
    right = right.sort_values("x_local_us", kind="stable")
    merged = pd.merge_asof(left, right, left_on="exit_at", right_on="x_local_us", by=["session", "symbol"],
                           direction="forward", tolerance=EXIT_TOLERANCE_US)
    return merged.dropna(subset=["x_local_us"]).reset_index(drop=True)


def _metrics(estimate: np.ndarray, realized: np.ndarray) -> dict[str, float]:
    error = estimate - realized
    ape = np.abs(error) / realized
    return {"n": len(realized), "mape_pct": round(float(ape.mean() * 100), 3),
            "median_ape_pct": round(float(np.median(ape) * 100), 3),
            "wape_pct": round(float(np.abs(error).sum() / realized.sum() * 100), 3),
            "bias_bps": round(float(error.mean()), 5), "mean_realized_bps": round(float(realized.mean()), 5),
            "mean_estimate_bps": round(float(estimate.mean()), 5)}


def realized_mape(holdout: pd.DataFrame, tables: CostTables, *, horizon_min: float,
                  notionals: Sequence[float], universe: pd.DataFrame | None = None) -> dict[str, Any]:
    """{venue: {notional: {estimator: {exec: metrics, total: metrics}}, coverage: ...}} on ``holdout``."""
    model = CostModel(tables=tables)
    pairs = pair_exits(holdout, horizon_min, universe)
    out: dict[str, Any] = {"horizon_min": horizon_min, "pairs": len(pairs), "venues": {}}
    for venue, part in pairs.groupby("venue", sort=True):
        per_venue: dict[str, Any] = {"sessions": sorted(part["session"].unique().tolist()), "notionals": {}}
        fee = 2.0 * model.fees[str(venue)].taker_bps
        for v in notionals:
            n = int(v)
            ok = part.dropna(subset=[f"buy_{n}", f"sell_{n}", f"x_buy_{n}", f"x_sell_{n}"])
            if ok.empty:
                continue
            table = np.array([_exec(model.estimate(str(venue), sym, reg, spread, horizon_min,
                                                   side=signal_pb2.LONG, notional_usd=v))
                              for sym, reg, spread in zip(ok["symbol"], ok["regime"], ok["spread_bps"],
                                                          strict=True)])
            stressed = {q: np.array([_exec(model.estimate(str(venue), sym, reg, spread, horizon_min,
                                                          quantile=q, notional_usd=v))
                                     for sym, reg, spread in zip(ok["symbol"], ok["regime"], ok["spread_bps"],
                                                                 strict=True)])
                        for q in ("p95", "p97.5")}
            book = (ok[f"buy_{n}"] + ok[f"sell_{n}"]).to_numpy()
            legacy = (ok["spread_bps"] + ok["regime"].map(lambda r: SLIPPAGE_BPS.get(r, max(SLIPPAGE_BPS.values())))
                      ).to_numpy()
            long_real = (ok[f"buy_{n}"] + ok[f"x_sell_{n}"]).to_numpy()
            short_real = (ok[f"sell_{n}"] + ok[f"x_buy_{n}"]).to_numpy()
            realized = np.concatenate([long_real, short_real])
            result: dict[str, Any] = {}
            for name, est in (("table", table), ("book", book), ("cost-v2", legacy)):
                both = np.concatenate([est, est])
                result[name] = {"exec": _metrics(both, realized), "total": _metrics(both + fee, realized + fee)}
            result["coverage"] = {q: round(float((realized <= np.concatenate([e, e]) + 1e-12).mean()), 4)
                                  for q, e in stressed.items()}
            sessions = np.concatenate([ok["session"].to_numpy(), ok["session"].to_numpy()])
            both = np.concatenate([table, table])
            result["table_by_session"] = {
                str(name): {"exec": _metrics(both[sessions == name], realized[sessions == name]),
                            "total": _metrics(both[sessions == name] + fee, realized[sessions == name] + fee)}
                for name in sorted(set(sessions.tolist()))}
            result["round_trip_fee_bps"] = fee
            per_venue["notionals"][str(n)] = result
        out["venues"][str(venue)] = per_venue
    return out


def _exec(estimate: Any) -> float:
    return float(estimate.spread_bps + estimate.slippage_bps + estimate.impact_bps)
