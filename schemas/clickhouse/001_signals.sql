-- Signals as emitted on signals.v1. ReplacingMergeTree on signal_id: a redelivered signal collapses to one row
-- (query with FINAL, or rely on background merges); the sink also skips ids it has already written.
CREATE TABLE IF NOT EXISTS {db}.signals
(
    signal_id String,
    venue LowCardinality(String),
    symbol LowCardinality(String),
    decision LowCardinality(String),
    tier LowCardinality(String),
    p_up Float64,
    horizon_min UInt32,
    expected_return_bps Float64,
    estimated_cost_bps Float64,
    net_utility_bps Float64,
    regime LowCardinality(String),
    top_features String,
    model_version LowCardinality(String),
    feature_version LowCardinality(String),
    cost_model_version LowCardinality(String),
    data_window_id String,
    quality_flags Array(LowCardinality(String)),
    price Float64,
    exchange_us Int64,
    ingest_us Int64,
    infer_us Int64,
    decision_us Int64,
    cooldown_until_us Int64,
    stored_us Int64,
    event_time DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(exchange_us),
    latency_ms Float64 MATERIALIZED (decision_us - exchange_us) / 1000.0
)
ENGINE = ReplacingMergeTree(stored_us)
PARTITION BY toYYYYMMDD(fromUnixTimestamp64Micro(exchange_us))
ORDER BY (symbol, signal_id)
