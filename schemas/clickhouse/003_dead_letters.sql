-- Every dead letter seen on dlq.v1, with the original payload kept (base64) so it can be replayed.
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    dlq_id String,
    stage LowCardinality(String),
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    error_type LowCardinality(String),
    reason String,
    payload_b64 String,
    failed_us Int64,
    stored_us Int64
)
ENGINE = ReplacingMergeTree(stored_us)
ORDER BY (stage, dlq_id)
