"""Backtest runs in ClickHouse backtest_runs and the gateway's /reports/backtest routes (real chdb; the warehouse
service's allow-list takes the inserts and selects)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.backtest.engine import simulate_bars
from services.backtest.report import build_report, write_outputs
from services.backtest.store import get_run, list_runs, save_run
from services.gateway.app import create_app
from streams.runtime.settings import Settings
from streams.storage.warehouse import apply_ddl, open_warehouse
from tests.unit.test_backtest import MIN, T0, _bars, _prediction, _sim
from tests.unit.test_warehouse import TOKEN, start_service

pytestmark = pytest.mark.unit


def _report(tmp_path: Path) -> dict[str, Any]:
    sim = _sim()
    frame = _bars([(100.0, 100.0, 100.0, 100.0), (100.1, 100.5, 99.9, 100.3), (100.3, 100.7, 100.2, 100.6)])
    result = simulate_bars(sim, frame, {f"TESTUSDT:{T0 + MIN}": _prediction(T0 + MIN, 100.0, 0.9)})
    report = build_report(result)
    paths = write_outputs(result, report, tmp_path / "out")
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and "<script" not in html   # self-contained
    assert paths["trades"].stat().st_size > 0
    return report


def test_run_stored_and_served_by_the_gateway(tmp_path: Path) -> None:
    report = _report(tmp_path)
    folder = tmp_path / "ch"
    wh = open_warehouse(f"chdb://{folder}", "surge")
    try:
        apply_ddl(wh, "surge")
        save_run(wh, report, created_us=1)
        save_run(wh, report, created_us=2)   # the same run again: one row (ReplacingMergeTree on run_id)
        runs = list_runs(wh)
        assert [r["run_id"] for r in runs] == [report["run_id"]]
        row = get_run(wh, report["run_id"])
        assert row is not None and row["trades"] == 1
        assert row["metrics"]["net_pnl"] == pytest.approx(27.4249975)
    finally:
        wh.close()
    with TestClient(create_app(Settings(clickhouse_url=f"chdb://{folder}"))) as client:
        listed = client.get("/reports/backtest")
        assert listed.status_code == 200, listed.text
        assert listed.json()[0]["run_id"] == report["run_id"]
        one = client.get(f"/reports/backtest/{report['run_id']}")
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["metrics"]["trades"] == 1 and body["config"]["config"]["mode"] == "conservative"
        assert client.get("/reports/backtest/nope").status_code == 404
        assert client.get("/reports/backtest/bad;id").status_code == 422


@contextmanager
def _service(tmp_path: Path) -> Iterator[int]:
    gen = start_service(tmp_path)
    _, port, _ = next(gen)
    try:
        yield port
    finally:
        next(gen, None)


def test_through_the_warehouse_service_allow_list(tmp_path: Path) -> None:
    report = _report(tmp_path)
    with _service(tmp_path) as port:
        wh = open_warehouse(f"surge+http://127.0.0.1:{port}", "surge", token=TOKEN)
        try:
            apply_ddl(wh, "surge")
            save_run(wh, report, created_us=5)
            assert [r["run_id"] for r in list_runs(wh)] == [report["run_id"]]
            row = get_run(wh, report["run_id"])
            assert row is not None and row["metrics"]["trades"] == 1
        finally:
            wh.close()
