-- Live quality of the signals over the outcomes stage's rolling window (streams/outcomes/quality.py), at most one
-- row per 10 s of event time; metrics that are undefined for the window (no win yet, no cost) are NULL.
CREATE TABLE IF NOT EXISTS {db}.live_quality
(
    at_us Int64,
    model_version LowCardinality(String),
    n UInt32,
    ece_pp Nullable(Float64),
    brier Nullable(Float64),
    pr_auc Nullable(Float64),
    hit_at_k Nullable(Float64),
    avg_utility_bps Nullable(Float64),
    false_positive_rate Nullable(Float64),
    cost_mape_pct Nullable(Float64),
    tau_offset Float64,
    kappa_offset Float64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(fromUnixTimestamp64Micro(at_us))
ORDER BY (model_version, at_us)
