-- Model outputs of predictions.v1: one element per horizon in the parallel arrays (horizons, p_up, ci_low,
-- ci_high). One row per prediction_id after FINAL; rows stored more than SURGE_TTL_DAYS_PREDICTIONS ago are dropped.
CREATE TABLE IF NOT EXISTS {db}.predictions
(
    prediction_id String CODEC(ZSTD(6)),
    venue LowCardinality(String),
    symbol LowCardinality(String),
    model_version LowCardinality(String),
    feature_version LowCardinality(String),
    horizons Array(UInt32),
    p_up Array(Float64) CODEC(ZSTD(6)),
    ci_low Array(Float64) CODEC(ZSTD(6)),
    ci_high Array(Float64) CODEC(ZSTD(6)),
    regime LowCardinality(String),
    mid_price Float64 CODEC(ZSTD(6)),
    spread_bps Float64 CODEC(ZSTD(6)),
    top_features String CODEC(ZSTD(6)),
    data_window_id String CODEC(ZSTD(6)),
    canary UInt8,
    quality_flags Array(LowCardinality(String)),
    exchange_us Int64 CODEC(Delta, ZSTD(6)),
    infer_us Int64 CODEC(Delta, ZSTD(6)),
    stored_us Int64 CODEC(Delta, ZSTD(6)),
    ts DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(exchange_us),
    latency_ms Float64 MATERIALIZED (infer_us - exchange_us) / 1000.0
)
ENGINE = ReplacingMergeTree(stored_us)
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, venue, prediction_id)
TTL toDate(fromUnixTimestamp64Micro(stored_us)) + INTERVAL {ttl_days_predictions} DAY
