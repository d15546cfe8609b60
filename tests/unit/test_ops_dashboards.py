"""Grafana dashboards: generated JSON is current, every PromQL expression parses (promtool, as recording rules)
and reads only exported metrics, every ClickHouse panel's SQL runs on the real schema (chdb), and the
provisioning points at the datasource uids the panels use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.storage.warehouse import Warehouse, apply_ddl, open_warehouse
from tests.unit.ops_support import (
    DEPLOY,
    PENDING_METRICS,
    PROMETHEUS_BUILTINS,
    REPO_ROOT,
    exported_metrics,
    promql_metric_names,
    run_promtool,
)

pytestmark = pytest.mark.unit
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra should list pyyaml)")

GRAFANA = DEPLOY / "grafana"
BOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
REQUIRED = {"surge-pipeline", "surge-data-quality", "surge-model-quality", "surge-costs", "surge-signals-pnl"}
# Grafana's own PromQL variables, replaced with literals promtool accepts.
PROM_MACROS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
# The ClickHouse plugin's macros, as the plugin expands them (a fixed hour of 2026-01-01).
FROM_S, TO_S = 1767225600, 1767229200


def expand_sql(sql: str) -> str:
    sql = re.sub(r"\$__timeFilter\(([^()]*(?:\([^()]*\))?[^()]*)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({FROM_S}) AND {m.group(1)} <= toDateTime({TO_S})", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({FROM_S})").replace("$__toTime", f"toDateTime({TO_S})")
    sql = sql.replace("$__interval_s", "60")
    assert "$" not in sql, f"unexpanded macro in {sql}"
    return sql


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in BOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            yield path.stem, panel


def prom_exprs() -> list[tuple[str, str]]:
    return [(f"{board}: {p['title']}", t["expr"]) for board, p in panels()
            if p["datasource"]["uid"] == "prometheus" for t in p["targets"]]


def ch_queries() -> list[tuple[str, str]]:
    return [(f"{board}: {p['title']}", t["rawSql"]) for board, p in panels()
            if p["datasource"]["uid"] == "clickhouse" for t in p["targets"]]


def test_the_dashboards_are_the_generated_ones() -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"], capture_output=True,
                            text=True, check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout


def test_every_required_dashboard_exists_with_unique_panel_ids() -> None:
    assert {p.stem for p in BOARDS} >= REQUIRED
    for path in BOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and all(p["targets"] for p in board["panels"])


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    """promtool has no stand-alone query parser offline: each expression becomes a recording rule."""
    exprs = prom_exprs()
    assert exprs
    rules = []
    for i, (_, expr) in enumerate(exprs):
        text = expr
        for macro, value in PROM_MACROS.items():
            text = text.replace(macro, value)
        rules.append({"record": f"dashboard_expr_{i}", "expr": text})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promql_reads_only_exported_or_recorded_metrics() -> None:
    rules_doc = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    recorded = {r["record"] for g in rules_doc["groups"] for r in g["rules"] if "record" in r}
    known = exported_metrics() | PROMETHEUS_BUILTINS | PENDING_METRICS
    for where, expr in prom_exprs():
        recording_rules = set(re.findall(r"surge:[a-z0-9_:]+", expr))
        assert recording_rules <= recorded, f"{where}: unknown recording rule {recording_rules - recorded}"
        unknown = promql_metric_names(expr) - known
        assert not unknown, f"{where}: not exported: {sorted(unknown)}"


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = open_warehouse(f"chdb://{tmp_path / 'ch'}", "surge")
    try:
        apply_ddl(wh, "surge")
        yield wh
    finally:
        wh.close()  # chdb allows one folder per process


def test_every_clickhouse_panel_runs_on_the_real_schema(warehouse: Warehouse) -> None:
    queries = ch_queries()
    assert len(queries) >= 10
    failures = []
    for where, sql in queries:
        try:
            warehouse.query(expand_sql(sql))
        except Exception as exc:  # collect every broken panel, not just the first
            failures.append(f"{where}: {exc}")
    assert not failures, "\n".join(failures)


def test_provisioning_names_the_uids_the_panels_use() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "surge.yml").read_text())
    uids = {d["uid"] for d in sources["datasources"]}
    used = {p["datasource"]["uid"] for _, p in panels()}
    assert used <= uids
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "surge.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/surge"
