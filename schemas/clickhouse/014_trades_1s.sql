-- 1s OHLCV bars of trades, filled by 015_trades_1s_mv.sql at insert time (AggregatingMergeTree): read open
-- and close with argMinMerge / argMaxMerge, high/low/volume/trades with max/min/sum, GROUP BY symbol, ts.
-- A trade inserted twice (a redelivery the sink did not catch) counts twice here. TTL: SURGE_TTL_DAYS_ROLLUP_1S.
CREATE TABLE IF NOT EXISTS {db}.trades_1s
(
    ts DateTime('UTC'),
    venue LowCardinality(String),
    symbol LowCardinality(String),
    open AggregateFunction(argMin, Float64, DateTime64(6, 'UTC')),
    high SimpleAggregateFunction(max, Float64),
    low SimpleAggregateFunction(min, Float64),
    close AggregateFunction(argMax, Float64, DateTime64(6, 'UTC')),
    volume SimpleAggregateFunction(sum, Float64),
    notional SimpleAggregateFunction(sum, Float64),
    buy_volume SimpleAggregateFunction(sum, Float64),
    trades SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue)
TTL toDate(ts) + INTERVAL {ttl_days_rollup_1s} DAY
