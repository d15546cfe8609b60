"""Numbered DDL files upgrade a warehouse created by an older release, idempotently."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.sink.core import OUTCOME_COLUMNS
from streams.storage.warehouse import apply_ddl, open_warehouse

pytestmark = pytest.mark.unit

OLD_OUTCOMES = """CREATE TABLE surge.outcomes (outcome_id String, signal_id String, venue LowCardinality(String),
symbol LowCardinality(String), decision LowCardinality(String), tier LowCardinality(String), horizon_min UInt32,
label LowCardinality(String), entry_price Float64, exit_price Float64, realized_return_bps Float64,
net_return_bps Float64, max_favourable_bps Float64, max_adverse_bps Float64, entry_us Int64, exit_us Int64,
stored_us Int64) ENGINE = ReplacingMergeTree(stored_us) ORDER BY (symbol, outcome_id)"""


def test_an_outcomes_table_of_the_previous_release_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    try:
        wh.command("CREATE DATABASE surge")
        wh.command(OLD_OUTCOMES)
        wh.command("INSERT INTO surge.outcomes (outcome_id, signal_id, stored_us) VALUES ('o1', 's1', 1)")
        for _ in range(2):  # every process applies the DDL at start: twice must be a no-op
            apply_ddl(wh, "surge")
        columns = [r["name"] for r in wh.query(
            "SELECT name FROM system.columns WHERE database = 'surge' AND table = 'outcomes' ORDER BY position")]
        assert tuple(columns) == OUTCOME_COLUMNS
        assert wh.query("SELECT outcome_id, risk_state, realized_cost_bps FROM surge.outcomes") == [
            {"outcome_id": "o1", "risk_state": "", "realized_cost_bps": 0.0}]
    finally:
        wh.close()
