"""``surge cost fit`` on real Binance captures (../shared): the shipped tables' held-out MAPE, recomputed on one
real session, and the fit command end to end on a small real segment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.costfit import FitConfig
from services.costfit.evaluate import realized_mape
from services.costfit.fit import split_holdout
from services.costfit.sample import discover_sessions, sample_session
from streams.decision.cost import COST_V3, CostTables, packaged_tables

pytestmark = pytest.mark.unit

USDM_JULY = ("btcusdt_20240718.gz", "btcusdt_20240719.gz")   # held-out day 2024-07-19
SPOT_AUGUST = ("btcusdt_20240808.gz", "btcusdt_20240809.gz")  # held-out day 2024-08-09


def capture(shared: Path, venue: str, names: tuple[str, ...]) -> list[Path]:
    return [shared / "ws_messages" / "hftbacktest" / venue / n for n in names]


def test_shipped_tables_reproduce_their_held_out_mape_on_a_real_session(shared_data: Path) -> None:
    """Replays the USD-M BTCUSDT 2024-07-18/19 capture with the shipped artifact's own fit settings, takes the
    held-out day's samples, and recomputes the realized cost MAPE of the shipped tables: it must be the number
    the artifact reports for that session, and within the goal (10 %) on the total round-trip cost."""
    tables = packaged_tables()
    fit = tables.doc["fit"]
    cfg = FitConfig(notional_usd=fit["notional_usd"], notionals=tuple(fit["notionals"]),
                    sample_every_ms=fit["sample_every_ms"], holdout_days=tuple(fit["holdout_days"]),
                    mape_horizon_min=fit["mape_horizon_min"], mape_notionals=(fit["notional_usd"],))
    sessions, _ = discover_sessions(capture(shared_data, "usdm", USDM_JULY))
    assert len(sessions) == 1 and sessions[0].venue == "usdm"
    sampled = sample_session(sessions[0], cfg.notionals, cfg.sample_every_ms * 1000)
    _, holdout = split_holdout(sampled.frame, cfg.holdout_days)
    assert len(holdout) > 500
    result = realized_mape(holdout, tables, horizon_min=cfg.mape_horizon_min, notionals=cfg.mape_notionals,
                           universe=sampled.frame)
    n0 = str(int(cfg.notional_usd))
    mine = result["venues"]["usdm"]["notionals"][n0]["table_by_session"][sessions[0].name]
    shipped = tables.doc["diagnostics"]["mape"]["venues"]["usdm"]["notionals"][n0]["table_by_session"]
    assert mine == shipped[sessions[0].name]
    assert mine["total"]["mape_pct"] <= 10.0
    assert mine["exec"]["n"] > 1000


def test_fit_command_on_a_small_real_segment(shared_data: Path, tmp_path: Path) -> None:
    files = capture(shared_data, "spot", SPOT_AUGUST) + capture(shared_data, "usdm", USDM_JULY)
    klines = shared_data / "klines_1m" / "BTCUSDT-1m-2026-05.zip"
    args = ["cost", "fit", "--out", str(tmp_path), "--data", str(klines), "--sample-every-ms", "1000"]
    for f in files:
        args += ["--data", str(f)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "cost_tables.json").read_text())
    tables = CostTables.load(tmp_path / "cost_tables.json")
    assert doc["model"] == COST_V3 and tables.version == doc["version"]
    assert {s["file"] for s in doc["sources"]} == {f.name for f in files} | {klines.name}
    assert all(len(s["sha256"]) == 64 for s in doc["sources"])
    assert doc["diagnostics"]["samples"]["fit"] > 500 and doc["diagnostics"]["samples"]["holdout"] > 500
    assert doc["adv_usd"]["spot:BTCUSDT"]["klines_adv_usd"] > 1e8   # klines ADV kept beside the capture's
    mape = doc["diagnostics"]["mape"]["venues"]
    assert set(mape) == {"spot", "usdm"}
    for venue in mape.values():
        assert venue["notionals"]["10000"]["table"]["total"]["mape_pct"] <= 10.0
    report = (tmp_path / "cost_report.md").read_text()
    assert doc["version"] in report and "Realized cost MAPE" in report
    # the version hashes the fitted content and the fit settings, not the fit time or the sources' paths
    body = {k: doc[k] for k in ("format", "model", "notional_usd", "quantiles", "fit", "tables", "adv_usd")}
    assert doc["version"] == "ct-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
