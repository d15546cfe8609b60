-- Signals per minute of decision, filled by 019_signals_1m_mv.sql (SummingMergeTree: sum when reading).
-- TTL: SURGE_TTL_DAYS_ROLLUP_1M.
CREATE TABLE IF NOT EXISTS {db}.signals_1m
(
    ts DateTime('UTC'),
    venue LowCardinality(String),
    symbol LowCardinality(String),
    decision LowCardinality(String),
    tier LowCardinality(String),
    regime LowCardinality(String),
    signals UInt64,
    p_up_sum Float64,
    net_utility_bps_sum Float64,
    latency_ms_sum Float64,
    latency_ms_max SimpleAggregateFunction(max, Float64)
)
ENGINE = SummingMergeTree
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue, decision, tier, regime)
TTL toDate(ts) + INTERVAL {ttl_days_rollup_1m} DAY
