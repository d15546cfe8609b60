"""Realized performance from the ``performance_metrics`` rollup (per minute of barrier exit, fed by outcomes)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from services.gateway import pagination
from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS
from services.gateway.routers.signals import SymbolQ, norm_symbol

router = APIRouter(tags=["performance"])


class PerformanceRow(BaseModel):
    symbol: str
    tier: str
    horizon_min: int
    outcomes: int
    wins: int
    losses: int
    timeouts: int
    win_rate: float | None
    mean_net_return_bps: float | None
    stdev_net_return_bps: float | None
    sharpe_per_trade: float | None
    total_net_return_bps: float
    mean_estimated_cost_bps: float | None
    mean_realized_cost_bps: float | None
    mean_time_to_barrier_s: float | None


class PerformanceResponse(BaseModel):
    since: int | None
    until: int | None
    rows: list[PerformanceRow]


GroupQ = Annotated[Literal["symbol", "tier", "horizon", "symbol_tier", "all"],
                   Query(description="group by symbol, tier, horizon, symbol_tier or all (symbol, tier, horizon)")]
_GROUPS = {"symbol": ("symbol",), "tier": ("tier",), "horizon": ("horizon_min",),
           "symbol_tier": ("symbol", "tier"), "all": ("symbol", "tier", "horizon_min")}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


@router.get("/stats/performance", response_model=PerformanceResponse, responses=WAREHOUSE_ERRORS)
@router.get("/performance", response_model=PerformanceResponse, responses=WAREHOUSE_ERRORS, include_in_schema=False)
def performance(
    warehouse: WarehouseDep,
    symbol: SymbolQ = None,
    since: pagination.SinceQ = None,
    until: pagination.UntilQ = None,
    group: GroupQ = "all",
) -> PerformanceResponse:
    """Win rate, mean / stdev of the net return, per-trade Sharpe and costs, from the per-minute rollup
    (``since``/``until`` in epoch µs on the exit minute)."""
    keys = _GROUPS[group]
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if norm_symbol(symbol):
        clauses.append("symbol = {symbol:String}")
        params["symbol"] = norm_symbol(symbol)
    if since is not None:
        clauses.append("ts >= toDateTime(intDiv({since:Int64}, 1000000))")
        params["since"] = since
    if until is not None:
        clauses.append("ts < toDateTime(intDiv({until:Int64}, 1000000))")
        params["until"] = until
    cols = ", ".join(keys)
    rows = warehouse.query(
        f"SELECT {cols}, sum(outcomes) AS n, sum(wins) AS w, sum(losses) AS l, sum(timeouts) AS t, "
        "sum(net_return_bps) AS r, sum(net_return_sq) AS r2, sum(estimated_cost_bps) AS ec, "
        "sum(realized_cost_bps) AS rc, sum(time_to_barrier_s) AS tb "
        f"FROM {warehouse.database}.performance_metrics{pagination.where(clauses)} GROUP BY {cols} ORDER BY {cols}",
        params)
    out = []
    for r in rows:
        n = int(r["n"])
        mean = _ratio(float(r["r"]), n)
        var = (float(r["r2"]) / n - mean * mean) if n and mean is not None else None
        sd = math.sqrt(max(var, 0.0)) if var is not None else None
        out.append(PerformanceRow(
            symbol=r.get("symbol", "*"), tier=r.get("tier", "*"), horizon_min=int(r.get("horizon_min", 0)),
            outcomes=n, wins=int(r["w"]), losses=int(r["l"]), timeouts=int(r["t"]), win_rate=_ratio(int(r["w"]), n),
            mean_net_return_bps=mean, stdev_net_return_bps=sd,
            sharpe_per_trade=(mean / sd if mean is not None and sd else None), total_net_return_bps=float(r["r"]),
            mean_estimated_cost_bps=_ratio(float(r["ec"]), n), mean_realized_cost_bps=_ratio(float(r["rc"]), n),
            mean_time_to_barrier_s=_ratio(float(r["tb"]), n)))
    return PerformanceResponse(since=since, until=until, rows=out)
