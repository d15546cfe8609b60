-- Outcomes of the outcomes stage carry the barrier timing, estimated vs realized cost and the paper book; a
-- table created before these columns existed gets them here (a no-op on a fresh install).
ALTER TABLE {db}.outcomes
    ADD COLUMN IF NOT EXISTS time_to_barrier_us Int64 AFTER exit_us,
    ADD COLUMN IF NOT EXISTS estimated_cost_bps Float64 AFTER time_to_barrier_us,
    ADD COLUMN IF NOT EXISTS realized_cost_bps Float64 AFTER estimated_cost_bps,
    ADD COLUMN IF NOT EXISTS upper_barrier_bps Float64 AFTER realized_cost_bps,
    ADD COLUMN IF NOT EXISTS lower_barrier_bps Float64 AFTER upper_barrier_bps,
    ADD COLUMN IF NOT EXISTS paper_equity Float64 AFTER lower_barrier_bps,
    ADD COLUMN IF NOT EXISTS risk_state LowCardinality(String) AFTER paper_equity
