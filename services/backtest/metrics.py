"""Performance metrics of a backtest: returns, risk-adjusted ratios, drawdown, trade statistics, breakdowns.

* Returns are of the marked-to-market equity (cash + open positions at the last price). Sharpe and Sortino use
  daily returns (hourly when the run is shorter than 7 days), annualised with sqrt(365) (sqrt(365 x 24)),
  risk-free rate 0; Sortino's denominator is the root mean square of the negative returns.
* A win is a trade with net PnL (after fees and slippage) > 0. Profit factor = gross wins / |gross losses|.
* Fill rate = filled / wanted quantity over every entry order, unfilled ones included.
* Slippage (bps, positive = worse): entry against the signal's price (the mid at decision), exit against the
  price the exit was meant at (stop, target, or the touch at a timeout).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

DAY_US = 86_400_000_000
CALIBRATION_BINS = 10


def _f(x: float) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    return float(x) if math.isfinite(x) else None


def drawdown(equity: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    if equity.size == 0:
        return equity
    peak = np.maximum.accumulate(equity)
    return np.asarray(1.0 - equity / peak, dtype=np.float64)


def period_returns(equity: pd.DataFrame, capital: float) -> tuple[pd.Series, float]:
    """Returns per day (or hour for short runs) and the annualisation factor."""
    if equity.empty:
        return pd.Series(dtype=float), 1.0
    t = pd.to_datetime(equity["t_us"].to_numpy(), unit="us", utc=True)
    s = pd.Series(equity["equity"].to_numpy(), index=t)
    days = (equity["t_us"].iloc[-1] - equity["t_us"].iloc[0]) / DAY_US
    rule, factor = ("1D", 365.0) if days >= 7 else ("1h", 365.0 * 24.0)
    last = s.resample(rule).last().ffill()
    prev = last.shift(1)
    prev.iloc[0] = capital
    return (last / prev - 1.0).dropna(), factor


def compute(trades: pd.DataFrame, equity: pd.DataFrame, capital: float, info: dict[str, Any]) -> dict[str, Any]:
    eq = equity["equity"].to_numpy(dtype=np.float64) if not equity.empty else np.asarray([capital])
    final = float(eq[-1])
    total = final / capital - 1.0
    span_us = int(equity["t_us"].iloc[-1] - equity["t_us"].iloc[0]) if len(equity) > 1 else 0
    days = span_us / DAY_US
    annual = (1.0 + total) ** (365.0 / days) - 1.0 if days > 0 and total > -1 else math.nan
    rets, factor = period_returns(equity, capital)
    r = rets.to_numpy(dtype=np.float64)
    sd = float(r.std(ddof=1)) if r.size > 1 else math.nan
    sharpe = float(r.mean()) / sd * math.sqrt(factor) if r.size > 1 and sd > 0 else math.nan
    downside = np.minimum(r, 0.0)
    dsd = float(np.sqrt(np.mean(downside ** 2))) if r.size else math.nan
    sortino = float(r.mean()) / dsd * math.sqrt(factor) if r.size > 1 and dsd > 0 else math.nan
    dd = drawdown(eq)
    n = len(trades)
    net = trades["net_pnl"].to_numpy(dtype=np.float64) if n else np.zeros(0)
    wins, losses = net[net > 0], net[net <= 0]
    wanted = float(info.get("wanted_qty", 0.0))
    slip = (np.concatenate([trades["entry_slippage_bps"].to_numpy(), trades["exit_slippage_bps"].to_numpy()])
            if n else np.zeros(0))
    lat = trades["latency_ms"].to_numpy(dtype=np.float64) if n else np.zeros(0)
    out: dict[str, Any] = {
        "capital": capital,
        "final_equity": final,
        "total_return": total,
        "annualized_return": _f(annual),
        "days": days,
        "sharpe": _f(sharpe),
        "sortino": _f(sortino),
        "max_drawdown": float(dd.max()) if dd.size else 0.0,
        "trades": n,
        "signals": int(info.get("actionable_signals", n)),
        "win_rate": _f(len(wins) / n) if n else None,
        "avg_win": _f(float(wins.mean())) if wins.size else None,
        "avg_loss": _f(float(losses.mean())) if losses.size else None,
        "avg_net_bps": _f(float(trades["net_bps"].mean())) if n else None,
        "profit_factor": _f(float(wins.sum() / -losses.sum())) if losses.size and losses.sum() < 0 else None,
        "net_pnl": float(net.sum()),
        "gross_pnl": float(trades["gross_pnl"].sum()) if n else 0.0,
        "fees": float(trades["fees"].sum()) if n else 0.0,
        "fill_rate": _f(float(info.get("filled_qty", 0.0)) / wanted) if wanted > 0 else None,
        "unfilled_orders": int(info.get("unfilled_orders", 0)),
        "avg_slippage_bps": _f(float(slip.mean())) if slip.size else None,
        "avg_hold_s": _f(float(trades["hold_s"].mean())) if n else None,
        "latency_ms": {"mean": _f(float(lat.mean())) if lat.size else None,
                       "p50": _f(float(np.quantile(lat, 0.5))) if lat.size else None,
                       "p99": _f(float(np.quantile(lat, 0.99))) if lat.size else None},
        "exit_reasons": {str(k): int(v) for k, v in trades["exit_reason"].value_counts().items()} if n else {},
        "by_hour": by_group(trades, "hour"),
        "by_regime": by_group(trades, "regime"),
        "by_horizon": by_group(trades, "horizon_min"),
        "calibration": calibration(trades),
    }
    return out


def by_group(trades: pd.DataFrame, key: str) -> list[dict[str, Any]]:
    if trades.empty:
        return []
    frame = trades.copy()
    if key == "hour":
        frame["hour"] = pd.to_datetime(frame["entry_us"], unit="us", utc=True).dt.hour
    rows = []
    for k, g in frame.groupby(key, sort=True):
        net = g["net_pnl"].to_numpy(dtype=np.float64)
        rows.append({key: k if not isinstance(k, np.integer) else int(k), "trades": len(g),
                     "net_pnl": float(net.sum()), "win_rate": float((net > 0).mean()),
                     "avg_net_bps": float(g["net_bps"].mean())})
    return rows


def calibration(trades: pd.DataFrame) -> list[dict[str, Any]]:
    """Signals' p_up against the realized outcome (the target reached first), in equal-count bins."""
    if trades.empty:
        return []
    p = trades["p_up"].to_numpy(dtype=np.float64)
    hit = trades["target_hit"].to_numpy(dtype=bool)
    long = (trades["decision"] == "LONG").to_numpy()
    up = np.where(long, hit, ~hit & (trades["exit_reason"] == "stop").to_numpy())  # a SHORT's stop is "up first"
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, min(CALIBRATION_BINS, len(order))):
        if chunk.size:
            out.append({"p_mean": float(p[chunk].mean()), "realized": float(up[chunk].mean()), "n": int(chunk.size)})
    return out
