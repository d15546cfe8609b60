-- Every trade on ticks.v1 (one row per exchange trade id), for tick-level reports and the 1 s / 1 m rollups.
-- ReplacingMergeTree on (symbol, ts, venue, trade_id): a redelivered batch collapses under FINAL. ts is the
-- exchange time. The TTL counts from when a row was stored (stored_us), so a replay of an old capture is kept
-- for SURGE_TTL_DAYS_TICKS like live data; rollup bars (ts = bar time) expire by their own time.
CREATE TABLE IF NOT EXISTS {db}.trades
(
    venue LowCardinality(String),
    symbol LowCardinality(String),
    trade_id Int64 CODEC(Delta, ZSTD(6)),
    price Float64 CODEC(ZSTD(6)),
    qty Float64 CODEC(ZSTD(6)),
    buyer_is_maker UInt8,
    batch_id String CODEC(ZSTD(6)),
    exchange_us Int64 CODEC(Delta, ZSTD(6)),
    ingest_us Int64 CODEC(Delta, ZSTD(6)),
    stored_us Int64 CODEC(Delta, ZSTD(6)),
    ts DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(exchange_us)
)
ENGINE = ReplacingMergeTree(stored_us)
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue, trade_id)
TTL toDate(fromUnixTimestamp64Micro(stored_us)) + INTERVAL {ttl_days_ticks} DAY
