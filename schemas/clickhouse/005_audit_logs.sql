-- Append-only audit trail of registry actions (deploy, rollback, automatic canary rollback).
CREATE TABLE IF NOT EXISTS {db}.audit_logs
(
    audit_id String,
    action LowCardinality(String),
    actor String,
    model_version String,
    previous_version String,
    reason String,
    at_us Int64
)
ENGINE = MergeTree
ORDER BY (at_us, audit_id)
