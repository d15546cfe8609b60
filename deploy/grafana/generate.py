"""Generate the provisioned Grafana dashboards (deploy/grafana/dashboards/*.json) from one table of panels.

    python deploy/grafana/generate.py          # rewrite the JSON
    python deploy/grafana/generate.py --check  # exit 1 if the JSON is stale (tests/unit/test_ops_dashboards.py)

Prometheus panels read the stages' /metrics (datasource uid ``prometheus``); ClickHouse panels read the
warehouse tables of schemas/clickhouse/ through the grafana-clickhouse-datasource plugin (uid ``clickhouse``)
with its macros ``$__timeFilter(col)``, ``$__fromTime``, ``$__toTime`` and ``$__interval_s``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...] = ()  # (PromQL, legend)
    sql: str = ""                             # ClickHouse SQL (one query)
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=("surge",))


def q(expr: str, legend: str = "") -> tuple[str, str]:
    return expr, legend


def quantiles(metric: str, by: str = "stage") -> tuple[tuple[str, str], ...]:
    return tuple(q(f"histogram_quantile({p}, sum by (le, {by}) (rate({metric}_bucket[$__rate_interval])))",
                   f"p{int(p * 100)} {{{{{by}}}}}") for p in (0.5, 0.95, 0.99))


SIGNAL_TIME = "fromUnixTimestamp64Micro(exchange_us)"
OUTCOME_TIME = "fromUnixTimestamp64Micro(exit_us)"
# Resolved LONG/SHORT outcomes with the signal's p_up; y_up is 1 when the price rose from entry to exit.
RESOLVED = (
    "SELECT s.p_up AS p, toFloat64(o.exit_price > o.entry_price) AS y, o.horizon_min AS horizon_min, "
    "fromUnixTimestamp64Micro(o.exit_us) AS t "
    "FROM surge.outcomes AS o FINAL INNER JOIN surge.signals AS s FINAL ON s.signal_id = o.signal_id "
    "WHERE o.label IN ('WIN', 'LOSS', 'TIMEOUT') AND $__timeFilter(fromUnixTimestamp64Micro(o.exit_us))"
)

DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard("surge-pipeline", "surge / pipeline overview", (
        Panel("Records in per stage", (q("sum by (stage) (rate(surge_events_in_total[$__rate_interval]))",
                                         "{{stage}}"),), unit="ops"),
        Panel("Records out per topic", (q("sum by (stage, topic) (rate(surge_events_out_total[$__rate_interval]))",
                                          "{{stage}} -> {{topic}}"),), unit="ops"),
        Panel("Exchange -> output acknowledged, quantiles", quantiles("surge_e2e_latency_seconds"), unit="s",
              description="Decision's p99 is the exchange->signal SLO (800 ms)."),
        Panel("Event-time lag per stage", (q("max by (stage) (surge_event_time_lag_seconds)", "{{stage}}"),),
              unit="s", description="Consumer lag in event time (Tansu's end offsets are wrong)."),
        Panel("Batch size p50 / p99", (
            q("histogram_quantile(0.5, sum by (le, stage) (rate(surge_batch_size_bucket[$__rate_interval])))",
              "p50 {{stage}}"),
            q("histogram_quantile(0.99, sum by (le, stage) (rate(surge_batch_size_bucket[$__rate_interval])))",
              "p99 {{stage}}"))),
        Panel("process() time p99", (q("histogram_quantile(0.99, sum by (le, stage) "
                                       "(rate(surge_processing_seconds_bucket[$__rate_interval])))", "{{stage}}"),),
              unit="s"),
        Panel("Replicas up", (q('sum by (stage) (up{job="surge-stages"})', "{{stage}}"),), kind="stat"),
        Panel("Rebalances, commit failures, backpressure", (
            q("sum by (stage) (increase(surge_consumer_rebalances_total[$__range]))", "rebalances {{stage}}"),
            q("sum by (stage) (increase(surge_commit_failures_total[$__range]))", "commit failures {{stage}}"),
            q("max by (stage) (surge_backpressure_active)", "backpressure {{stage}}"))),
        Panel("Features tiers dropped (backpressure)", (
            q("max by (stage) (surge_features_tiers_dropped)", "dropped"),
            q("max by (stage) (surge_features_symbols_tiers_dropped)", "symbols"),
            q("max by (stage) (surge_features_lag_seconds)", "lag s"))),
        Panel("Signals stored per minute (ClickHouse)", sql=(
            f"SELECT toStartOfInterval({SIGNAL_TIME}, INTERVAL $__interval_s second) AS time, count() AS signals "
            f"FROM surge.signals FINAL WHERE $__timeFilter({SIGNAL_TIME}) GROUP BY time ORDER BY time")),
        Panel("Stored exchange->signal latency p50 / p99 (ClickHouse)", unit="ms", sql=(
            f"SELECT toStartOfInterval({SIGNAL_TIME}, INTERVAL $__interval_s second) AS time, "
            "quantile(0.5)(latency_ms) AS p50, quantile(0.99)(latency_ms) AS p99 "
            f"FROM surge.signals FINAL WHERE $__timeFilter({SIGNAL_TIME}) GROUP BY time ORDER BY time")),
    )),
    Dashboard("surge-data-quality", "surge / data quality", (
        Panel("Sequence-gap ratio per symbol (SLO 0.2 %)", (q("surge:ingest_sequence_gap_ratio:5m", "{{symbol}}"),),
              unit="percentunit"),
        Panel("Trade-id loss ratio per symbol (SLO 1 %)", (q("surge:ingest_message_loss_ratio:5m", "{{symbol}}"),),
              unit="percentunit"),
        Panel("Exchange lag at ingest (SLO 2 s)", (
            q('max(surge_event_time_lag_seconds{stage="ingest"})', "ingest"),
            q("max(surge_decision_exchange_lag_seconds)", "decision"),
            q("max(surge_decision_paused)", "actionable paused")), unit="s"),
        Panel("Clock drift per symbol", (q("surge_ingest_clock_drift_seconds", "{{symbol}}"),), unit="s"),
        Panel("Books in sync / quarantined", (
            q("sum(surge_ingest_book_synced)", "synced"), q("max(surge_ingest_quarantined_symbols)", "quarantined")),
              kind="stat"),
        Panel("Duplicates, resyncs, backfills per second", (
            q("sum(rate(surge_ingest_duplicates_total[$__rate_interval]))", "duplicates"),
            q("sum by (reason) (rate(surge_ingest_resyncs_total[$__rate_interval]))", "resync {{reason}}"),
            q("sum(rate(surge_ingest_trades_backfilled_total[$__rate_interval]))", "backfilled"),
            q("sum(rate(surge_ingest_book_ticker_divergence_total[$__rate_interval]))", "ticker divergence")),
              unit="ops"),
        Panel("WebSocket connections", (
            q("sum(surge_ingest_ws_connections)", "open"),
            q("sum(increase(surge_ingest_ws_disconnects_total[$__range]))", "disconnects"),
            q("sum(increase(surge_ingest_overloads_total[$__range]))", "frames dropped (overload)"))),
        Panel("Dead letters per stage and error type", (
            q("sum by (stage, error_type) (rate(surge_dlq_total[$__rate_interval]))", "{{stage}} {{error_type}}"),),
              unit="ops"),
        Panel("Dead letters stored (ClickHouse)", kind="table", width=24, sql=(
            "SELECT stage, error_type, source_topic, count() AS records, "
            "max(fromUnixTimestamp64Micro(failed_us)) AS last_seen, any(reason) AS example_reason "
            "FROM surge.dead_letters FINAL WHERE $__timeFilter(fromUnixTimestamp64Micro(failed_us)) "
            "GROUP BY stage, error_type, source_topic ORDER BY records DESC LIMIT 50")),
        Panel("Signals carrying quality flags (ClickHouse)", kind="table", sql=(
            "SELECT arrayJoin(quality_flags) AS flag, count() AS signals FROM surge.signals FINAL "
            f"WHERE $__timeFilter({SIGNAL_TIME}) GROUP BY flag ORDER BY signals DESC")),
    )),
    Dashboard("surge-model-quality", "surge / model quality", (
        Panel("Live quality over the outcomes window: ECE and its drift, pp", (
            q('max(surge_live_quality{metric="ece_pp"})', "ECE pp"),
            q('max(surge_live_quality{metric="ece_drift_pp"})', "drift vs held-out pp")),
              description="Alert SurgeCalibrationDrift at 5 pp of drift."),
        Panel("Live quality: Brier, PR-AUC, hit@10, false-positive rate", (
            q('max(surge_live_quality{metric="brier"})', "Brier"),
            q('max(surge_live_quality{metric="pr_auc"})', "PR-AUC"),
            q('max(surge_live_quality{metric="hit_at_k"})', "hit@10"),
            q('max(surge_live_quality{metric="false_positive_rate"})', "false positives"))),
        Panel("Live quality history per model (ClickHouse live_quality)", sql=(
            "SELECT fromUnixTimestamp64Micro(at_us) AS time, model_version, ece_pp, brier, pr_auc "
            "FROM surge.live_quality FINAL WHERE $__timeFilter(fromUnixTimestamp64Micro(at_us)) ORDER BY time")),
        Panel("Threshold offsets live quality applies", (
            q("max by (threshold) (surge_decision_threshold_offset)", "{{threshold}}"),)),
        Panel("Live Brier score per horizon (ClickHouse)", sql=(
            "SELECT toStartOfInterval(t, INTERVAL $__interval_s second) AS time, horizon_min, "
            f"avg((p - y) * (p - y)) AS brier FROM ({RESOLVED}) GROUP BY time, horizon_min ORDER BY time"),
              description="Resolved signals: p_up of the signal against whether the price rose by the exit."),
        Panel("Live ECE per horizon, 10 bins (ClickHouse)", kind="table", sql=(
            "SELECT horizon_min, sum(abs(mp - my) * n) / sum(n) AS ece, sum(n) AS outcomes FROM ("
            "SELECT horizon_min, least(toUInt8(floor(p * 10)), 9) AS bin, avg(p) AS mp, avg(y) AS my, count() AS n "
            f"FROM ({RESOLVED}) GROUP BY horizon_min, bin) GROUP BY horizon_min ORDER BY horizon_min"),
              description="Recomputed from every resolved outcome in the range (the stage's window is 500)."),
        Panel("Live ROC AUC per horizon (ClickHouse)", kind="table", sql=(
            "SELECT horizon_min, arrayAUC(groupArray(p), groupArray(y)) AS roc_auc, count() AS outcomes "
            f"FROM ({RESOLVED}) GROUP BY horizon_min ORDER BY horizon_min"),
              description="PR-AUC over the stage's window is in the live-quality panels."),
        Panel("Registry: calibration ECE of each version (ClickHouse)", kind="table", sql=(
            "SELECT model_version, feature_version, calibration_ece, is_active, is_canary, "
            "fromUnixTimestamp64Micro(deployed_at_us) AS deployed_at, deployed_by "
            "FROM surge.model_versions FINAL ORDER BY deployed_at_us DESC LIMIT 20")),
        Panel("Predictions per second by version and role", (
            q("sum by (model_version, role) (rate(surge_infer_predictions_total[$__rate_interval]))",
              "{{model_version}} {{role}}"),), unit="ops"),
        Panel("Invalid model outputs per second", (
            q("sum by (model_version, role) (rate(surge_infer_invalid_outputs_total[$__rate_interval]))",
              "{{model_version}} {{role}}"),), unit="ops"),
        Panel("Model call time quantiles", quantiles("surge_infer_model_seconds", "role"), unit="s"),
        Panel("Canary guard", (
            q("max by (model_version) (surge_infer_canary_drift)", "drift {{model_version}}"),
            q("max by (model_version) (surge_infer_canary_invalid_rate)", "invalid {{model_version}}"),
            q("sum by (model_version) (increase(surge_infer_canary_rollbacks_total[$__range]))",
              "rollbacks {{model_version}}"))),
        Panel("Versions served and reloads", (
            q("sum by (model_version, role) (surge_infer_model_serving)", "{{model_version}} {{role}}"),
            q("sum by (result) (increase(surge_infer_model_reloads_total[$__range]))", "reload {{result}}"))),
    )),
    Dashboard("surge-costs", "surge / costs", (
        Panel("Cost model MAPE over the outcomes window, % (SLO 15 %)", (
            q('max(surge_live_quality{metric="cost_mape_pct"})', "MAPE %"),),
              description="Alert SurgeCostModelMapeHigh at 15 %."),
        Panel("Realized utility over the outcomes window, bps", (
            q('max(surge_live_quality{metric="avg_utility_bps"})', "avg utility bps"),)),
        Panel("Estimated vs realized cost per symbol, bps (ClickHouse)", kind="table", width=24, sql=(
            "SELECT symbol, count() AS outcomes, avg(estimated_cost_bps) AS estimated_bps, "
            "avg(realized_cost_bps) AS realized_bps, "
            "avgIf(abs(realized_cost_bps - estimated_cost_bps) / abs(realized_cost_bps), realized_cost_bps != 0) "
            "AS mape FROM surge.outcomes FINAL "
            f"WHERE label != '' AND $__timeFilter({OUTCOME_TIME}) GROUP BY symbol ORDER BY outcomes DESC"),
              description="MAPE SLO 15 %, over every resolved outcome in the range."),
        Panel("Cost MAPE over time (ClickHouse)", unit="percentunit", sql=(
            f"SELECT toStartOfInterval({OUTCOME_TIME}, INTERVAL $__interval_s second) AS time, "
            "avgIf(abs(realized_cost_bps - estimated_cost_bps) / abs(realized_cost_bps), realized_cost_bps != 0) "
            f"AS mape FROM surge.outcomes FINAL WHERE $__timeFilter({OUTCOME_TIME}) GROUP BY time ORDER BY time")),
        Panel("Estimated cost of published signals by tier, bps (ClickHouse)", sql=(
            f"SELECT toStartOfInterval({SIGNAL_TIME}, INTERVAL $__interval_s second) AS time, tier, "
            "avg(estimated_cost_bps) AS cost_bps FROM surge.signals FINAL "
            f"WHERE $__timeFilter({SIGNAL_TIME}) AND decision IN ('LONG', 'SHORT') "
            "GROUP BY time, tier ORDER BY time")),
        Panel("Expected return vs cost vs net utility, bps (ClickHouse)", sql=(
            f"SELECT toStartOfInterval({SIGNAL_TIME}, INTERVAL $__interval_s second) AS time, "
            "avg(expected_return_bps) AS expected, avg(estimated_cost_bps) AS cost, avg(net_utility_bps) AS net "
            f"FROM surge.signals FINAL WHERE $__timeFilter({SIGNAL_TIME}) GROUP BY time ORDER BY time")),
    )),
    Dashboard("surge-signals-pnl", "surge / signals and paper PnL", (
        Panel("Signals published per second", (
            q('sum(rate(surge_events_out_total{stage="decision",topic="signals.v1"}[$__rate_interval]))',
              "signals"),), unit="ops"),
        Panel("Risk state (0 NORMAL .. 3 SHUTDOWN)", (
            q("max(surge_risk_level)", "outcomes"), q("max(surge_decision_risk_level)", "decision obeys")),
              kind="stat"),
        Panel("Paper equity and drawdown", (
            q("max(surge_outcomes_paper_equity)", "equity"), q("max(surge_outcomes_paper_drawdown)", "drawdown"))),
        Panel("Paper PnL per symbol, bps", (q("sum by (symbol) (surge_outcomes_pnl_bps)", "{{symbol}}"),)),
        Panel("Open positions and losing streak", (
            q("max(surge_outcomes_open_positions)", "open"),
            q("max(surge_outcomes_consecutive_losses)", "consecutive losses")), kind="stat"),
        Panel("Outcomes by kind", (q("sum by (kind) (increase(surge_outcomes_events_total[$__range]))", "{{kind}}"),),
              kind="stat"),
        Panel("Decision rules that changed signals", (
            q("sum by (rule) (rate(surge_decision_rule_changes_total[$__rate_interval]))", "{{rule}}"),), unit="ops"),
        Panel("Signals by decision and tier (ClickHouse)", sql=(
            f"SELECT toStartOfInterval({SIGNAL_TIME}, INTERVAL $__interval_s second) AS time, "
            "concat(decision, ' ', tier) AS series, count() AS signals FROM surge.signals FINAL "
            f"WHERE $__timeFilter({SIGNAL_TIME}) GROUP BY time, series ORDER BY time")),
        Panel("Cumulative net paper return, bps (ClickHouse)", sql=(
            "SELECT time, sum(net) OVER (ORDER BY time) AS cumulative_net_bps FROM ("
            f"SELECT toStartOfInterval({OUTCOME_TIME}, INTERVAL $__interval_s second) AS time, "
            "sum(net_return_bps) AS net FROM surge.outcomes FINAL "
            f"WHERE $__timeFilter({OUTCOME_TIME}) GROUP BY time) ORDER BY time")),
        Panel("Hit rate by tier and horizon (ClickHouse)", kind="table", sql=(
            "SELECT tier, horizon_min, count() AS outcomes, countIf(label = 'WIN') / count() AS win_rate, "
            "avg(net_return_bps) AS avg_net_bps, avg(max_adverse_bps) AS avg_mae_bps "
            f"FROM surge.outcomes FINAL WHERE $__timeFilter({OUTCOME_TIME}) "
            "GROUP BY tier, horizon_min ORDER BY tier, horizon_min")),
        Panel("Latest signals (ClickHouse)", kind="table", width=24, sql=(
            f"SELECT {SIGNAL_TIME} AS time, venue, symbol, decision, tier, horizon_min, p_up, net_utility_bps, "
            f"latency_ms, model_version FROM surge.signals FINAL WHERE $__timeFilter({SIGNAL_TIME}) "
            "ORDER BY exchange_us DESC LIMIT 100")),
    )),
)


def panel_json(panel: Panel, index: int, y: int, x: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": index + 1, "title": panel.title, "type": panel.kind,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.description:
        out["description"] = panel.description
    if panel.sql:
        out["datasource"] = CH
        fmt = 1 if panel.kind == "table" else 0
        out["targets"] = [{"refId": "A", "datasource": CH, "editorType": "sql", "queryType": "sql",
                           "format": fmt, "rawSql": panel.sql}]
    else:
        out["datasource"] = PROM
        out["targets"] = [{"refId": chr(ord("A") + i), "datasource": PROM, "expr": expr, "legendFormat": legend}
                          for i, (expr, legend) in enumerate(panel.exprs)]
    return out


def dashboard_json(board: Dashboard) -> dict[str, Any]:
    panels, x, y = [], 0, 0
    for i, panel in enumerate(board.panels):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(panel_json(panel, i, y, x))
        x += panel.width
    return {
        "uid": board.uid, "title": board.title, "tags": list(board.tags), "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "timezone": "utc",
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels,
    }


def rendered() -> dict[Path, str]:
    return {OUT / f"{board.uid}.json": json.dumps(dashboard_json(board), indent=2) + "\n" for board in DASHBOARDS}


def main(argv: list[str]) -> int:
    files = rendered()
    if "--check" in argv:
        stale = [str(p) for p, text in files.items() if not p.exists() or p.read_text() != text]
        if stale:
            print("stale dashboards (run python deploy/grafana/generate.py):", *stale)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
