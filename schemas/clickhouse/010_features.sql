-- Feature vectors of features.v1, names and values side by side (values NULL where the stage emitted NaN).
-- One row per vector_id after FINAL; rows stored more than SURGE_TTL_DAYS_FEATURES ago are dropped.
CREATE TABLE IF NOT EXISTS {db}.features
(
    vector_id String CODEC(ZSTD(6)),
    venue LowCardinality(String),
    symbol LowCardinality(String),
    feature_version LowCardinality(String),
    names Array(LowCardinality(String)),
    values Array(Nullable(Float64)) CODEC(ZSTD(6)),
    regime LowCardinality(String),
    mid_price Float64 CODEC(ZSTD(6)),
    data_window_id String CODEC(ZSTD(6)),
    quality_flags Array(LowCardinality(String)),
    exchange_us Int64 CODEC(Delta, ZSTD(6)),
    features_us Int64 CODEC(Delta, ZSTD(6)),
    stored_us Int64 CODEC(Delta, ZSTD(6)),
    ts DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(exchange_us)
)
ENGINE = ReplacingMergeTree(stored_us)
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue, vector_id)
TTL toDate(fromUnixTimestamp64Micro(stored_us)) + INTERVAL {ttl_days_features} DAY
