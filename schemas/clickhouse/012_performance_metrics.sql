-- Realized performance per minute of barrier exit, filled from outcomes by 020_performance_metrics_mv.sql
-- (SummingMergeTree: sum the columns when reading; ratios are computed from the sums). Kept without TTL.
CREATE TABLE IF NOT EXISTS {db}.performance_metrics
(
    ts DateTime('UTC'),
    venue LowCardinality(String),
    symbol LowCardinality(String),
    decision LowCardinality(String),
    tier LowCardinality(String),
    horizon_min UInt32,
    outcomes UInt64,
    wins UInt64,
    losses UInt64,
    timeouts UInt64,
    net_return_bps Float64 CODEC(ZSTD(6)),
    net_return_sq Float64 CODEC(ZSTD(6)),
    estimated_cost_bps Float64 CODEC(ZSTD(6)),
    realized_cost_bps Float64 CODEC(ZSTD(6)),
    time_to_barrier_s Float64 CODEC(ZSTD(6))
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue, decision, tier, horizon_min)
