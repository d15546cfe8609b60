-- Top of book per tick batch (ticks.v1): the batch's last bookTicker, else the best levels of its last book
-- snapshot. One row per batch_id; rows stored more than SURGE_TTL_DAYS_TICKS ago are dropped.
CREATE TABLE IF NOT EXISTS {db}.book_tops
(
    venue LowCardinality(String),
    symbol LowCardinality(String),
    batch_id String CODEC(ZSTD(6)),
    source LowCardinality(String),
    update_id Int64 CODEC(Delta, ZSTD(6)),
    bid_price Float64 CODEC(ZSTD(6)),
    bid_qty Float64 CODEC(ZSTD(6)),
    ask_price Float64 CODEC(ZSTD(6)),
    ask_qty Float64 CODEC(ZSTD(6)),
    quality_flags Array(LowCardinality(String)),
    exchange_us Int64 CODEC(Delta, ZSTD(6)),
    ingest_us Int64 CODEC(Delta, ZSTD(6)),
    stored_us Int64 CODEC(Delta, ZSTD(6)),
    ts DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(exchange_us),
    mid_price Float64 MATERIALIZED (bid_price + ask_price) / 2,
    spread_bps Float64 MATERIALIZED if(bid_price + ask_price > 0, (ask_price - bid_price) / ((bid_price + ask_price) / 2) * 10000, 0)
)
ENGINE = ReplacingMergeTree(stored_us)
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue, batch_id)
TTL toDate(fromUnixTimestamp64Micro(stored_us)) + INTERVAL {ttl_days_ticks} DAY
