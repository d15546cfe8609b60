-- Feeds signals_1m from every insert into signals.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signals_1m_mv TO {db}.signals_1m AS
SELECT
    toStartOfMinute(fromUnixTimestamp64Micro(decision_us)) AS ts,
    venue,
    symbol,
    decision,
    tier,
    regime,
    toUInt64(count()) AS signals,
    sum(p_up) AS p_up_sum,
    sum(net_utility_bps) AS net_utility_bps_sum,
    sum((decision_us - exchange_us) / 1000.0) AS latency_ms_sum,
    max((decision_us - exchange_us) / 1000.0) AS latency_ms_max
FROM {db}.signals
GROUP BY ts, venue, symbol, decision, tier, regime
