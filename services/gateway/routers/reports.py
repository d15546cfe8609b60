"""Backtest reports: the runs ``surge backtest`` stored in ClickHouse ``backtest_runs``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel

from services.backtest.store import get_run, list_runs
from services.gateway.deps import WarehouseDep
from services.gateway.errors import WAREHOUSE_ERRORS

router = APIRouter(prefix="/reports", tags=["reports"])


class BacktestRunOut(BaseModel):
    run_id: str
    created_us: int
    kind: str
    mode: str
    model_version: str
    feature_version: str
    cost_model_version: str
    symbols: list[str]
    latency: str
    seed: int
    data_from_us: int
    data_to_us: int
    trades: int
    total_return: float
    annualized_return: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    win_rate: float | None
    profit_factor: float | None
    fill_rate: float | None
    avg_slippage_bps: float | None
    fees: float
    net_pnl: float


class BacktestReportOut(BacktestRunOut):
    metrics: dict[str, Any]
    config: dict[str, Any]


@router.get("/backtest", response_model=list[BacktestRunOut], responses=WAREHOUSE_ERRORS)
def backtest_runs(warehouse: WarehouseDep,
                  limit: Annotated[int, Query(ge=1, le=1_000)] = 100) -> list[BacktestRunOut]:
    """Stored backtest runs, newest first (summary metrics)."""
    return [BacktestRunOut.model_validate(r) for r in list_runs(warehouse, limit)]


@router.get("/backtest/{run_id}", response_model=BacktestReportOut,
            responses={**WAREHOUSE_ERRORS, 404: {"description": "no such run"}})
def backtest_run(warehouse: WarehouseDep,
                 run_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
                 ) -> BacktestReportOut:
    """One run: every metric (by hour, by regime, calibration, ...) and its configuration."""
    row = get_run(warehouse, run_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no backtest run {run_id}")
    return BacktestReportOut.model_validate(row)
