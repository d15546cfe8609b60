-- Backtest runs (services/backtest): one row per run; the newest row per run_id (by created_us) wins.
CREATE TABLE IF NOT EXISTS {db}.backtest_runs
(
    run_id String,
    created_us Int64,
    kind LowCardinality(String),
    mode LowCardinality(String),
    model_version LowCardinality(String),
    feature_version LowCardinality(String),
    cost_model_version LowCardinality(String),
    symbols Array(LowCardinality(String)),
    latency LowCardinality(String),
    seed UInt64,
    data_from_us Int64,
    data_to_us Int64,
    trades UInt32,
    total_return Float64,
    annualized_return Nullable(Float64),
    sharpe Nullable(Float64),
    sortino Nullable(Float64),
    max_drawdown Float64,
    win_rate Nullable(Float64),
    profit_factor Nullable(Float64),
    fill_rate Nullable(Float64),
    avg_slippage_bps Nullable(Float64),
    fees Float64,
    net_pnl Float64,
    metrics String CODEC(ZSTD(6)),
    config String CODEC(ZSTD(6))
)
ENGINE = ReplacingMergeTree(created_us)
ORDER BY run_id
