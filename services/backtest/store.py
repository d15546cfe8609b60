"""Backtest runs in ClickHouse ``backtest_runs`` (schemas/clickhouse/007_backtest_runs.sql), through the warehouse
client: ``save_run`` after a run, ``list_runs`` / ``get_run`` for the gateway."""

from __future__ import annotations

from typing import Any

import orjson

from streams.runtime.settings import Settings
from streams.storage.warehouse import Warehouse, apply_ddl_from, open_warehouse_from

TABLE = "backtest_runs"
SUMMARY_COLUMNS = (
    "run_id", "created_us", "kind", "mode", "model_version", "feature_version", "cost_model_version", "symbols",
    "latency", "seed", "data_from_us", "data_to_us", "trades", "total_return", "annualized_return", "sharpe",
    "sortino", "max_drawdown", "win_rate", "profit_factor", "fill_rate", "avg_slippage_bps", "fees", "net_pnl",
)
COLUMNS = (*SUMMARY_COLUMNS, "metrics", "config")


def row_of(report: dict[str, Any], created_us: int) -> list[Any]:
    met, info, cfg = report["metrics"], report["info"], report["config"]
    return [
        report["run_id"], created_us, report["kind"], cfg["mode"], str(info.get("model_version", "")),
        str(info.get("feature_version", "")), str(info.get("cost_model_version", "")), list(report["symbols"]),
        cfg["latency"], int(cfg["seed"]), int(report["data_from_us"]), int(report["data_to_us"]), int(met["trades"]),
        float(met["total_return"]), met["annualized_return"], met["sharpe"], met["sortino"],
        float(met["max_drawdown"]), met["win_rate"], met["profit_factor"], met["fill_rate"], met["avg_slippage_bps"],
        float(met["fees"]), float(met["net_pnl"]),
        orjson.dumps(met).decode(), orjson.dumps({"config": cfg, "settings": report.get("settings", {}),
                                                  "info": info}).decode(),
    ]


def save_run(warehouse: Warehouse, report: dict[str, Any], created_us: int) -> None:
    warehouse.insert(TABLE, [row_of(report, created_us)], list(COLUMNS))


def list_runs(warehouse: Warehouse, limit: int = 100) -> list[dict[str, Any]]:
    db = warehouse.database
    return warehouse.query(
        f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM {db}.{TABLE} FINAL ORDER BY created_us DESC LIMIT {{limit:UInt32}}",
        {"limit": limit})


def get_run(warehouse: Warehouse, run_id: str) -> dict[str, Any] | None:
    db = warehouse.database
    rows = warehouse.query(f"SELECT {', '.join(COLUMNS)} FROM {db}.{TABLE} FINAL WHERE run_id = {{run_id:String}} "
                           "LIMIT 1", {"run_id": run_id})
    if not rows:
        return None
    row = dict(rows[0])
    row["metrics"] = orjson.loads(row["metrics"])
    row["config"] = orjson.loads(row["config"])
    return row


def store_report(settings: Settings, report: dict[str, Any], created_us: int) -> str:
    """Apply the schema and save the run in ``backtest_runs``; returns the table's qualified name. Raises the
    warehouse's error when it is down (the caller decides whether the files alone are enough)."""
    wh = open_warehouse_from(settings)
    try:
        apply_ddl_from(wh, settings)
        save_run(wh, report, created_us)
    finally:
        wh.close()
    return f"{settings.clickhouse_database}.backtest_runs"
