-- SHAP attribution of predictions (streams/infer/shap.py), written by the infer stage off its hot path: one row
-- per (prediction, horizon) with the top features by |SHAP| (raw-score units: contributions + base_value =
-- raw_score, the booster's log-odds). One row per (prediction_id, horizon_min) after FINAL.
CREATE TABLE IF NOT EXISTS {db}.attributions
(
    prediction_id String CODEC(ZSTD(6)),
    data_window_id String CODEC(ZSTD(6)),
    venue LowCardinality(String),
    symbol LowCardinality(String),
    model_version LowCardinality(String),
    horizon_min UInt32,
    features Array(LowCardinality(String)),
    feature_values Array(Float64) CODEC(ZSTD(6)),
    contributions Array(Float64) CODEC(ZSTD(6)),
    base_value Float64,
    raw_score Float64,
    exchange_us Int64 CODEC(Delta, ZSTD(6)),
    computed_us Int64 CODEC(Delta, ZSTD(6)),
    ts DateTime64(6, 'UTC') MATERIALIZED fromUnixTimestamp64Micro(exchange_us)
)
ENGINE = ReplacingMergeTree(computed_us)
PARTITION BY toDate(ts)
ORDER BY (symbol, ts, prediction_id, horizon_min)
TTL toDate(fromUnixTimestamp64Micro(computed_us)) + INTERVAL {ttl_days_predictions} DAY
