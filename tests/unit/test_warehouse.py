"""Warehouse client on a real chdb folder, and RemoteWarehouse against the real service in a subprocess.

The service's token and allow-list are tested in test_warehouse_security.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.storage.warehouse import (
    ClickHouseWarehouse,
    RemoteWarehouse,
    Warehouse,
    WarehouseError,
    apply_ddl,
    ddl_statements,
    open_warehouse,
)
from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.unit

TOKEN = "unit-test-token-0123456789abcdef"

# Every schemas/clickhouse file in name order (later files migrate tables of older installs); the first five
# create the tables.
DDL_FILES = sorted(f.name for f in (REPO_ROOT / "schemas" / "clickhouse").glob("*.sql"))
assert DDL_FILES[:5] == ["001_signals.sql", "002_outcomes.sql", "003_dead_letters.sql", "004_model_versions.sql",
                         "005_audit_logs.sql"]
TABLES = sorted(["audit_logs", "dead_letters", "model_versions", "outcomes", "signals", "trades", "book_tops",
                 "features", "predictions", "performance_metrics", "ab_tests", "trades_1s", "trades_1m", "signals_1m",
                 "trades_1s_mv", "trades_1m_mv", "signals_1m_mv", "performance_metrics_mv"])
OUTCOME_COLUMNS = ["outcome_id", "signal_id", "venue", "symbol", "decision", "tier", "horizon_min", "label",
                   "entry_price", "exit_price", "realized_return_bps", "net_return_bps", "max_favourable_bps",
                   "max_adverse_bps", "entry_us", "exit_us", "stored_us"]
DLQ_COLUMNS = ["dlq_id", "stage", "source_topic", "source_partition", "source_offset", "error_type", "reason",
               "payload_b64", "failed_us", "stored_us"]


def dlq_row(dlq_id: str, stored_us: int, reason: str = "bad") -> list[Any]:
    return [dlq_id, "decision", "predictions.v1", 0, 7, "decode_error", reason, "AAEC", 1_000, stored_us]


def exercise(wh: Warehouse) -> None:
    """The same contract for every Warehouse implementation (the warehouse service allows all of it)."""
    assert apply_ddl(wh, "surge") == DDL_FILES
    assert apply_ddl(wh, "surge") == DDL_FILES  # idempotent

    # The same id inserted three times in separate inserts collapses to one row (the newest) under FINAL.
    wh.insert("dead_letters", [dlq_row("t:0:7", 10, "first")], DLQ_COLUMNS)
    wh.insert("dead_letters", [dlq_row("t:0:7", 30, "third")], DLQ_COLUMNS)
    wh.insert("surge.dead_letters", [dlq_row("t:0:7", 20, "second"), dlq_row("t:0:8", 20)], DLQ_COLUMNS)
    wh.insert("dead_letters", [], DLQ_COLUMNS)  # nothing to do, no error
    rows = wh.query("SELECT dlq_id, reason, stored_us, source_partition FROM surge.dead_letters FINAL ORDER BY dlq_id")
    assert rows == [
        {"dlq_id": "t:0:7", "reason": "third", "stored_us": 30, "source_partition": 0},
        {"dlq_id": "t:0:8", "reason": "bad", "stored_us": 20, "source_partition": 0},
    ]
    assert wh.query("SELECT count() AS n FROM surge.dead_letters FINAL") == [{"n": 2}]

    # Parameters bind server-side; arrays and floats come back as JSON-friendly values.
    got = wh.query(
        "SELECT {s:String} AS s, {n:Int64} AS n, [{s:String}] AS arr, 0.25 AS f, "
        "quantilesExactInclusive(0.5)(x) AS q FROM (SELECT arrayJoin([0, 1, 2, 3, 4]) AS x)",
        {"s": "x'y", "n": -3},
    )
    assert got == [{"s": "x'y", "n": -3, "arr": ["x'y"], "f": 0.25, "q": [2.0]}]
    wh.insert("outcomes", [("o1", "s1", "binance", "BTCUSDT", "LONG", "TIER_A", 5, "WIN", 1, 2.5, *[0.0] * 4,
                            1, 2, 3)], OUTCOME_COLUMNS)  # tuples and ints-as-floats are fine
    assert wh.query("SELECT entry_price, exit_price FROM surge.outcomes FINAL") == [
        {"entry_price": 1.0, "exit_price": 2.5}]

    with pytest.raises(WarehouseError, match=r"(?i)syntax"):
        wh.query("SELEC 1")
    with pytest.raises(WarehouseError):
        wh.command("CREATE TABLE surge.signals (x Int8) ENGINE = Memory")  # exists
    with pytest.raises(WarehouseError):
        wh.insert("no_such_table", [[1]], ["x"])
    with pytest.raises(ValueError, match="identifier"):
        wh.insert("signals; DROP TABLE x", [[1]], ["x"])


@pytest.fixture
def chdb_warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    try:
        yield wh
    finally:
        wh.close()  # chdb allows one folder per process: release it for the next test


def test_chdb_warehouse_contract(chdb_warehouse: Warehouse) -> None:
    assert isinstance(chdb_warehouse, ClickHouseWarehouse)
    assert isinstance(chdb_warehouse, Warehouse)
    exercise(chdb_warehouse)

    # Direct clients (chdb, a real server) run anything: only the warehouse service has an allow-list.
    wh = chdb_warehouse
    tables = wh.query("SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name", {"db": "surge"})
    created = {m.group(1) for _, sql in ddl_statements("surge")
               for m in re.finditer(r"(?:TABLE|VIEW) IF NOT EXISTS surge\.(\w+)", sql)}
    assert set(TABLES) <= created  # other files may add tables of their own
    assert [t["name"] for t in tables] == sorted(created)
    wh.command("CREATE TABLE IF NOT EXISTS surge.scratch (k String, v Float64) ENGINE = MergeTree ORDER BY k")
    wh.insert("scratch", [("a", 1), ("b", 2.5)], ["k", "v"])
    assert wh.query("SELECT k, v FROM surge.scratch ORDER BY k") == [{"k": "a", "v": 1.0}, {"k": "b", "v": 2.5}]
    assert wh.query("SELECT count() AS n FROM numbers(5)") == [{"n": 5}]
    wh.command("DROP TABLE surge.scratch")


def test_ddl_statements_substitute_the_database() -> None:
    statements = ddl_statements("analytics")
    assert [name for name, _ in statements] == DDL_FILES
    for _, sql in statements:
        assert "{db}" not in sql
        assert ("TABLE IF NOT EXISTS analytics." in sql or "ALTER TABLE analytics." in sql
                or "MATERIALIZED VIEW IF NOT EXISTS analytics." in sql)
        assert "{ttl_days_" not in sql
    with pytest.raises(ValueError):
        ddl_statements("surge; DROP DATABASE x")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("chdb://relative/path", ValueError),
        ("mysql://host/db", ValueError),
        ("http://127.0.0.1:9/", WarehouseError),  # nothing listens on the discard port
    ],
)
def test_open_warehouse_rejects_bad_urls(url: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        open_warehouse(url, "surge")


def test_open_warehouse_picks_the_remote_client_without_connecting() -> None:
    wh = open_warehouse("surge+http://127.0.0.1:9", "surge", token=TOKEN)
    try:
        assert isinstance(wh, RemoteWarehouse)
        assert wh.base_url == "http://127.0.0.1:9"
        assert wh.health() is False
        assert isinstance(wh, RemoteWarehouse) and wh._http.headers["authorization"] == f"Bearer {TOKEN}"
        with pytest.raises(WarehouseError, match="unreachable"):
            wh.query("SELECT 1")
    finally:
        wh.close()


@pytest.fixture
def warehouse_service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    yield from start_service(tmp_path)


def start_service(root: Path, token: str = TOKEN,
                  extra_env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The real warehouse service in a subprocess, on a free port, with ``token``; stopped afterwards."""
    port = free_port()
    folder = root / "served"
    log = (root / "server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.warehouse.server", "--path", str(folder), "--port", str(port),
         "--database", "surge"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**env, "SURGE_WAREHOUSE_TOKEN": token, **(extra_env or {})},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"warehouse service did not start: {(root / 'server.log').read_text()}")
            time.sleep(0.1)
        yield proc, port, folder
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def test_remote_warehouse_against_the_real_service(
    warehouse_service: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, folder = warehouse_service
    health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    wh = open_warehouse(f"surge+http://127.0.0.1:{port}", "surge", token=TOKEN)
    try:
        assert isinstance(wh, RemoteWarehouse)
        assert wh.health() is True
        exercise(wh)  # the service already applied the DDL at start; applying again is harmless
        wh.insert("dead_letters", [dlq_row("t:0:9", 40)], DLQ_COLUMNS)
    finally:
        wh.close()

    # Malformed requests are refused with a reason, not a crash.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = httpx.post(f"http://127.0.0.1:{port}/insert", json={"table": "dead_letters", "column_names": ["dlq_id"],
                                                             "rows": [["a", "b"]]}, headers=auth, timeout=5)
    assert bad.status_code == 422 and "one value per column" in bad.json()["error"]
    assert httpx.post(f"http://127.0.0.1:{port}/query", content=b"{", headers=auth, timeout=5).status_code == 422
    assert httpx.post(f"http://127.0.0.1:{port}/query", json={"sql": 1}, headers=auth, timeout=5).status_code == 422

    # SIGTERM: the service closes chdb cleanly, so the folder can be opened by the next owner with the data intact.
    proc.terminate()
    assert proc.wait(20) == 0
    local = open_warehouse(f"chdb://{folder}", "surge")
    try:
        rows = local.query("SELECT dlq_id FROM surge.dead_letters FINAL ORDER BY dlq_id")
        assert [r["dlq_id"] for r in rows] == ["t:0:7", "t:0:8", "t:0:9"]
    finally:
        local.close()


def test_the_service_creates_its_tables_with_the_ttl_settings(tmp_path: Path) -> None:
    """SURGE_TTL_DAYS_TICKS=3 reaches the tables the service creates (it owns the folder, so it creates them)."""
    for _, _, folder in start_service(tmp_path, extra_env={"SURGE_TTL_DAYS_TICKS": "3"}):
        served = folder
    wh = open_warehouse(f"chdb://{served}", "surge")
    try:
        ddl = wh.query("SELECT create_table_query AS q FROM system.tables WHERE database = 'surge' "
                       "AND name = 'trades'")[0]["q"]
    finally:
        wh.close()
    assert "toIntervalDay(3)" in ddl or "INTERVAL 3 DAY" in ddl, ddl
