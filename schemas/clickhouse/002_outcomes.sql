-- Realized outcome of each signal (outcomes.v1). One row per signal_id after FINAL.
CREATE TABLE IF NOT EXISTS {db}.outcomes
(
    outcome_id String,
    signal_id String,
    venue LowCardinality(String),
    symbol LowCardinality(String),
    decision LowCardinality(String),
    tier LowCardinality(String),
    horizon_min UInt32,
    label LowCardinality(String),
    entry_price Float64,
    exit_price Float64,
    realized_return_bps Float64,
    net_return_bps Float64,
    max_favourable_bps Float64,
    max_adverse_bps Float64,
    entry_us Int64,
    exit_us Int64,
    time_to_barrier_us Int64,
    estimated_cost_bps Float64,
    realized_cost_bps Float64,
    upper_barrier_bps Float64,
    lower_barrier_bps Float64,
    paper_equity Float64,
    risk_state LowCardinality(String),
    stored_us Int64
)
ENGINE = ReplacingMergeTree(stored_us)
ORDER BY (symbol, outcome_id)
