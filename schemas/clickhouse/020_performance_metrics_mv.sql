-- Feeds performance_metrics from every insert into outcomes.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.performance_metrics_mv TO {db}.performance_metrics AS
SELECT
    toStartOfMinute(fromUnixTimestamp64Micro(exit_us)) AS ts,
    venue,
    symbol,
    decision,
    tier,
    horizon_min,
    toUInt64(count()) AS outcomes,
    toUInt64(countIf(label = 'HIT_TARGET')) AS wins,
    toUInt64(countIf(label = 'HIT_STOP')) AS losses,
    toUInt64(countIf(label = 'TIMEOUT')) AS timeouts,
    sum(outcomes.net_return_bps) AS net_return_bps,
    sum(outcomes.net_return_bps * outcomes.net_return_bps) AS net_return_sq,
    sum(outcomes.estimated_cost_bps) AS estimated_cost_bps,
    sum(outcomes.realized_cost_bps) AS realized_cost_bps,
    sum(time_to_barrier_us / 1e6) AS time_to_barrier_s
FROM {db}.outcomes
GROUP BY ts, venue, symbol, decision, tier, horizon_min
