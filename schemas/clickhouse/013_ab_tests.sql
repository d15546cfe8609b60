-- A/B tests between two model versions (A = control). The newest row per test_id (by updated_us) is its state.
CREATE TABLE IF NOT EXISTS {db}.ab_tests
(
    test_id String,
    name String,
    model_a LowCardinality(String),
    model_b LowCardinality(String),
    traffic_b Float64,
    symbols Array(LowCardinality(String)),
    status LowCardinality(String),
    started_us Int64,
    ended_us Int64,
    created_by String,
    result String,
    updated_us Int64
)
ENGINE = ReplacingMergeTree(updated_us)
ORDER BY test_id
