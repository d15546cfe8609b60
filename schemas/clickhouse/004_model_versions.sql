-- Model registry. The newest row per model_version (by updated_us) is its current state.
CREATE TABLE IF NOT EXISTS {db}.model_versions
(
    model_version String,
    feature_version String,
    horizons Array(UInt32),
    metrics String,
    config String,
    calibration_ece Float64,
    artifact_path String,
    is_active UInt8,
    is_canary UInt8,
    deployed_at_us Int64,
    deployed_by String,
    rollback_target String,
    updated_us Int64
)
ENGINE = ReplacingMergeTree(updated_us)
ORDER BY model_version
